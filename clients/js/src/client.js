// A V2 (Open Inference Protocol, Triton dialect) REST client over an injectable fetch.
import { ConnectionError, ServerError } from './errors.js';
import { decodeInferResponse, encodeInferRequest } from './wire.js';

function modelPath(model, version) {
  if (typeof model !== 'string' || !model) throw new TypeError('a model name is required');
  const base = `/v2/models/${encodeURIComponent(model)}`;
  return version === undefined || version === null || version === '' ? base : `${base}/versions/${encodeURIComponent(String(version))}`;
}

function defaultBaseUrl() {
  return typeof location !== 'undefined' && location.origin && location.origin !== 'null' ? location.origin : undefined;
}

export class InferenceClient {
  /**
   * @param {{baseUrl?: string, fetch?: typeof fetch, headers?: Record<string,string>, apiKey?: string,
   *          timeoutMs?: number}} [options]
   *   baseUrl defaults to the page's origin in a browser; apiKey is sent as 'Authorization: Bearer <key>'.
   */
  constructor({ baseUrl = defaultBaseUrl(), fetch: fetchImpl = globalThis.fetch, headers = {}, apiKey = undefined,
    timeoutMs = 0 } = {}) {
    if (!baseUrl) throw new TypeError('baseUrl is required outside a browser page (e.g. "http://127.0.0.1:8000")');
    if (typeof fetchImpl !== 'function') throw new TypeError('no fetch implementation available: pass options.fetch');
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    // Called unbound: a browser's window.fetch throws "Illegal invocation" when `this` is not the window.
    this.fetch = (url, init) => fetchImpl(url, init);
    this.headers = apiKey ? { ...headers, Authorization: `Bearer ${apiKey}` } : headers;
    this.timeoutMs = timeoutMs;
  }

  /** Low-level: one HTTP request; returns the Response, throws ConnectionError when there is none. */
  async request(path, { method = 'GET', body = undefined, headers = {}, signal = undefined } = {}) {
    const url = this.baseUrl + path;
    let timeoutSignal = signal;
    if (this.timeoutMs > 0) {
      const t = AbortSignal.timeout(this.timeoutMs);
      timeoutSignal = signal ? AbortSignal.any([signal, t]) : t;
    }
    try {
      return await this.fetch(url, { method, body, headers: { ...this.headers, ...headers }, signal: timeoutSignal });
    } catch (err) {
      throw new ConnectionError(url, err);
    }
  }

  /** Throws ServerError with the server's message unless the response is 2xx (or an allowed status). */
  async check(response, { allow = [] } = {}) {
    if (response.ok || allow.includes(response.status)) return response;
    const text = await response.text().catch(() => '');
    let message = text || response.statusText || 'request failed';
    let body = text;
    try {
      body = JSON.parse(text);
      if (body && typeof body.error === 'string') message = body.error;
    } catch {
      // not JSON: the raw text is the message
    }
    throw new ServerError(response.status, message, { url: response.url, body });
  }

  async getJson(path, options) {
    const response = await this.check(await this.request(path, options));
    return response.json();
  }

  async isOk(path) {
    const response = await this.request(path);
    await response.arrayBuffer().catch(() => undefined);
    return response.ok;
  }

  /** GET /v2/health/live → true when the server answers 200. */
  live() {
    return this.isOk('/v2/health/live');
  }

  /** GET /v2/health/ready → true when the server answers 200. */
  ready() {
    return this.isOk('/v2/health/ready');
  }

  /** GET .../ready → true when the model (version) is ready. */
  modelReady(model, { version } = {}) {
    return this.isOk(`${modelPath(model, version)}/ready`);
  }

  /** GET /v2 → {name, version, extensions}. */
  serverMetadata() {
    return this.getJson('/v2');
  }

  /** GET /v2/models/{m}[/versions/{v}] → {name, versions, platform, inputs, outputs}. */
  modelMetadata(model, { version } = {}) {
    return this.getJson(modelPath(model, version));
  }

  /** GET .../config → Triton ModelConfig as JSON. */
  modelConfig(model, { version } = {}) {
    return this.getJson(`${modelPath(model, version)}/config`);
  }

  /** GET /v2/models[/{m}[/versions/{v}]]/stats. */
  modelStatistics(model = undefined, { version } = {}) {
    return this.getJson(model === undefined ? '/v2/models/stats' : `${modelPath(model, version)}/stats`);
  }

  /** POST /v2/repository/index → [{name, version, state, reason}] (an administration call: may need an admin key). */
  async repositoryIndex({ ready = undefined } = {}) {
    const body = ready === undefined ? '{}' : JSON.stringify({ ready });
    const response = await this.check(
      await this.request('/v2/repository/index', { method: 'POST', body, headers: { 'Content-Type': 'application/json' } }),
    );
    return response.json();
  }

  /** GET .../gates → the per-gate JSON of a recurrent model ({nodes: [...]}). */
  gates(model, { version } = {}) {
    return this.getJson(`${modelPath(model, version)}/gates`);
  }

  /**
   * GET .../model.onnx. With `etag` (a previous answer's) an unchanged model answers
   * {notModified: true, bytes: null, etag}.
   * @returns {Promise<{bytes: Uint8Array|null, etag: string|null, notModified: boolean}>}
   */
  async downloadModel(model, { version = undefined, etag = undefined } = {}) {
    const headers = etag ? { 'If-None-Match': etag } : {};
    const response = await this.check(await this.request(`${modelPath(model, version)}/model.onnx`, { headers }), {
      allow: [304],
    });
    if (response.status === 304) {
      await response.arrayBuffer().catch(() => undefined);
      return { bytes: null, etag: response.headers.get('ETag') ?? etag, notModified: true };
    }
    const bytes = new Uint8Array(await response.arrayBuffer());
    return { bytes, etag: response.headers.get('ETag'), notModified: false };
  }

  /**
   * POST .../infer. Binary tensor extension by default; `binary: false` sends and asks for JSON.
   * @param {string} model
   * @param {Array<{name:string, datatype:string, shape:number[], data:any}>} inputs
   * @param {{version?: string|number, outputs?: Array<string|{name:string, parameters?:object}>, id?: string,
   *          parameters?: object, binary?: boolean, signal?: AbortSignal}} [options]
   */
  async infer(model, inputs, { version = undefined, outputs = undefined, id = undefined, parameters = undefined,
    binary = true, signal = undefined } = {}) {
    const { body, headers } = encodeInferRequest(inputs, { binary, outputs, id, parameters });
    const response = await this.check(
      await this.request(`${modelPath(model, version)}/infer`, { method: 'POST', body, headers, signal }),
    );
    const bytes = new Uint8Array(await response.arrayBuffer());
    return decodeInferResponse(bytes, response.headers.get('Inference-Header-Content-Length'));
  }
}
