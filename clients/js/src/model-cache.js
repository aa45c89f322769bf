// ONNX files fetched from the server, kept by ETag: in memory, and in the Cache API when the
// page has one (so a reload — or going offline — does not download the model again).
import { ConnectionError } from './errors.js';

export class ModelCache {
  /** @param {{cacheName?: string, persistent?: boolean}} [options] */
  constructor({ cacheName = 'modelbridge-models', persistent = typeof caches !== 'undefined' } = {}) {
    this.cacheName = cacheName;
    this.persistent = persistent;
    this.memory = new Map();
  }

  async get(key) {
    if (this.memory.has(key)) return this.memory.get(key);
    if (!this.persistent) return undefined;
    try {
      const cache = await caches.open(this.cacheName);
      const hit = await cache.match(key);
      if (!hit) return undefined;
      const entry = { etag: hit.headers.get('ETag'), bytes: new Uint8Array(await hit.arrayBuffer()) };
      this.memory.set(key, entry);
      return entry;
    } catch {
      return undefined; // Cache API refused (opaque origin, storage disabled): memory only
    }
  }

  async put(key, etag, bytes) {
    this.memory.set(key, { etag, bytes });
    if (!this.persistent) return;
    try {
      const cache = await caches.open(this.cacheName);
      await cache.put(key, new Response(bytes, { headers: { ETag: etag ?? '', 'Content-Type': 'application/octet-stream' } }));
    } catch {
      // best effort: the memory copy is enough for this page
    }
  }
}

/**
 * The model's ONNX bytes, revalidated with If-None-Match against the cached ETag.
 * @returns {Promise<{bytes: Uint8Array, etag: string|null, source: 'network'|'cache'|'offline-cache'}>}
 */
export async function fetchModelBytes(client, cache, model, { version = undefined } = {}) {
  const key = `${client.baseUrl}/v2/models/${encodeURIComponent(model)}${version ? `/versions/${version}` : ''}/model.onnx`;
  const cached = await cache.get(key);
  let answer;
  try {
    answer = await client.downloadModel(model, { version, etag: cached?.etag || undefined });
  } catch (err) {
    if (err instanceof ConnectionError && cached) return { bytes: cached.bytes, etag: cached.etag, source: 'offline-cache' };
    throw err;
  }
  if (answer.notModified && cached) return { bytes: cached.bytes, etag: cached.etag, source: 'cache' };
  if (answer.notModified) {
    // The server says "unchanged" but we hold nothing: ask again without a validator.
    answer = await client.downloadModel(model, { version });
  }
  await cache.put(key, answer.etag, answer.bytes);
  return { bytes: answer.bytes, etag: answer.etag, source: 'network' };
}
