/**
 * The client's error tree:
 *
 *   ModelBridgeError            anything this package throws about a request
 *    ├─ ServerError             the server answered with a non-2xx status (status, server's message, body)
 *    └─ ConnectionError         no answer at all (network failure, abort, timeout)
 *
 * Invalid arguments detected before any request is sent are plain TypeError / RangeError.
 */
export class ModelBridgeError extends Error {
  constructor(message, { status = 0, url = undefined, cause = undefined } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'ModelBridgeError';
    this.status = status;
    this.url = url;
  }
}

export class ServerError extends ModelBridgeError {
  constructor(status, serverMessage, { url = undefined, body = undefined } = {}) {
    super(`${status}: ${serverMessage}`, { status, url });
    this.name = 'ServerError';
    this.serverMessage = serverMessage;
    this.body = body;
  }
}

export class ConnectionError extends ModelBridgeError {
  constructor(url, cause) {
    super(`cannot reach ${url}: ${cause && cause.message ? cause.message : cause}`, { url, cause });
    this.name = 'ConnectionError';
  }
}
