// Runs a server's model in the page (or in Node) with onnxruntime-web, behind the same tensor
// interface as the remote infer: inputs {name, datatype, shape, data} -> result {outputs: [...]}.
import { datatypeInfo, v2FromOrtType } from './datatypes.js';
import { fromStorage, prepareInput } from './tensors.js';
import { makeResult } from './wire.js';
import { ConnectionError } from './errors.js';
import { ModelCache, fetchModelBytes } from './model-cache.js';
import { unsupportedIrVersion, withIrVersion } from './onnx-ir.js';

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

async function webgpuAvailable() {
  try {
    return typeof navigator !== 'undefined' && !!navigator.gpu && !!(await navigator.gpu.requestAdapter());
  } catch {
    return false;
  }
}

function toOrtTensor(ort, tensor) {
  const t = prepareInput(tensor);
  const type = datatypeInfo(t.datatype).ort;
  if (!type) throw new TypeError(`input '${t.name}': ${t.datatype} cannot run in onnxruntime-web`);
  const data = t.datatype === 'BYTES' ? t.storage.map((b) => utf8Decoder.decode(b)) : t.storage;
  return [t.name, new ort.Tensor(type, data, t.shape)];
}

function fromOrtTensor(name, tensor) {
  const datatype = v2FromOrtType(tensor.type);
  let storage = tensor.data;
  if (datatype === 'BYTES') storage = storage.map((s) => utf8.encode(s));
  else if (datatype === 'FP16' && !(storage instanceof Uint16Array)) {
    storage = new Uint16Array(storage.buffer, storage.byteOffset, storage.length); // Float16Array -> bits
  }
  return { name, datatype, shape: Array.from(tensor.dims, Number), ...fromStorage(datatype, storage) };
}

const TYPE_TO_V2 = (t) => (t === 'TYPE_STRING' ? 'BYTES' : String(t).replace(/^TYPE_/, ''));

/** One model loaded into an onnxruntime-web InferenceSession. */
export class LocalModel {
  /**
   * @param {object} info name, version, etag, device, source; `state`: the model config's
   *   sequence_batching.state ([{input_name, output_name, data_type, dims}]) for stateful models.
   */
  constructor(ort, session, { name, version, etag, device, source, state = [] }) {
    this.ort = ort;
    this.session = session;
    this.name = name;
    this.version = version;
    this.etag = etag;
    this.device = device;
    this.source = source;
    this.state = state;
    this.sequences = new Map(); // sequence_id -> {input name -> state tensor}, like the server keeps them
    this.inputNames = [...session.inputNames];
    this.outputNames = [...session.outputNames];
  }

  zeroState(batch) {
    return Object.fromEntries(this.state.map((s) => {
      const datatype = TYPE_TO_V2(s.data_type);
      const shape = [batch, ...s.dims.map(Number)];
      const count = shape.reduce((a, b) => a * b, 1);
      return [s.input_name, new this.ort.Tensor(datatypeInfo(datatype).ort, new (datatypeInfo(datatype).array)(count), shape)];
    }));
  }

  /** The state tensors for this request, following the V2 sequence parameters. */
  stateFeeds(parameters, batch) {
    const id = parameters?.sequence_id;
    if (id === undefined || id === 0 || id === '') return this.zeroState(batch); // one-shot: the whole sequence
    if (parameters.sequence_start) return this.zeroState(batch);
    const kept = this.sequences.get(id);
    if (!kept) throw new RangeError(`sequence ${JSON.stringify(id)} of '${this.name}' is not running: start it with sequence_start`);
    return kept;
  }

  /** Same signature and result shape as InferenceClient.infer (minus the transport options). */
  async infer(inputs, { outputs = undefined, id = undefined, parameters = undefined } = {}) {
    if (!Array.isArray(inputs) || inputs.length === 0) throw new TypeError('infer needs a non-empty array of inputs');
    const feeds = Object.fromEntries(inputs.map((t) => toOrtTensor(this.ort, t)));
    const stateful = this.state.length > 0 && this.state.some((s) => !(s.input_name in feeds));
    if (stateful) Object.assign(feeds, this.stateFeeds(parameters, feeds[inputs[0].name].dims[0]));
    for (const n of this.inputNames) if (!(n in feeds)) throw new TypeError(`model '${this.name}' needs input '${n}'`);
    const stateOutputs = stateful ? this.state.map((s) => s.output_name) : [];
    const wanted = outputs === undefined
      ? this.outputNames.filter((n) => !stateOutputs.includes(n))
      : outputs.map((o) => (typeof o === 'string' ? o : o.name));
    for (const n of wanted) {
      if (!this.outputNames.includes(n)) throw new RangeError(`model '${this.name}' has no output '${n}' (has ${this.outputNames.join(', ')})`);
    }
    const results = await this.session.run(feeds, [...new Set([...wanted, ...stateOutputs])]);
    const seq = parameters?.sequence_id;
    if (stateful && seq !== undefined && seq !== 0 && seq !== '') {
      if (parameters.sequence_end) this.sequences.delete(seq);
      else this.sequences.set(seq, Object.fromEntries(this.state.map((s) => [s.input_name, results[s.output_name]])));
    }
    return makeResult({
      modelName: this.name,
      modelVersion: this.version ?? '',
      id,
      outputs: wanted.map((n) => fromOrtTensor(n, results[n])),
    });
  }

  async release() {
    await this.session.release();
  }
}

export class LocalRunner {
  /**
   * @param {import('./client.js').InferenceClient} client where model.onnx files come from
   * @param {{ort?: any, device?: 'wasm'|'webgpu'|'auto', cache?: ModelCache, sessionOptions?: object}} [options]
   *   ort: the onnxruntime-web module (imported on first use when omitted).
   *   device: 'wasm' (default); 'webgpu' requires it; 'auto' uses WebGPU when an adapter exists and the
   *   session builds, else wasm.
   *   lowerIrVersion: when onnxruntime-web refuses the file's IR version as too new, retry with it lowered
   *   to the newest it supports (default true).
   */
  constructor(client, { ort = undefined, device = 'wasm', cache = new ModelCache(), sessionOptions = {},
    lowerIrVersion = true } = {}) {
    if (!['wasm', 'webgpu', 'auto'].includes(device)) throw new TypeError(`device must be 'wasm', 'webgpu' or 'auto', got '${device}'`);
    this.client = client;
    this.ortModule = ort;
    this.device = device;
    this.cache = cache;
    this.sessionOptions = sessionOptions;
    this.lowerIrVersion = lowerIrVersion;
    this.loaded = new Map();
  }

  async ort() {
    this.ortModule ??= await import('onnxruntime-web');
    return this.ortModule;
  }

  async createSession(bytes) {
    this.irDowngraded = null;
    try {
      return await this.createSessionOnce(bytes);   // as served: no rewrite while onnxruntime-web accepts it
    } catch (err) {
      const ir = this.lowerIrVersion ? unsupportedIrVersion(err) : null;
      if (!ir) throw err;
      // Saved by a newer onnx than this onnxruntime-web knows (onnx >= 1.23 stamps IR 14 on whatever it
      // saves; onnxruntime-web 1.30 reads <= 13): retry with the stamp lowered, and say so. A model that
      // really uses newer IR features still fails, with onnxruntime's own message.
      console.warn(`modelbridge: this model's ONNX IR version ${ir.found} is newer than onnxruntime-web reads ` +
        `(${ir.max}); opening it with the IR version rewritten to ${ir.max} (pass lowerIrVersion: false to refuse)`);
      this.irDowngraded = ir;
      return this.createSessionOnce(withIrVersion(bytes, ir.max));
    }
  }

  async createSessionOnce(bytes) {
    const ort = await this.ort();
    const make = (eps) => ort.InferenceSession.create(bytes, { ...this.sessionOptions, executionProviders: eps });
    if (this.device === 'webgpu') return [await make(['webgpu']), 'webgpu'];
    if (this.device === 'auto' && (await webgpuAvailable())) {
      try {
        return [await make(['webgpu', 'wasm']), 'webgpu'];
      } catch {
        // WebGPU EP refused the model (unsupported op or type): the wasm EP runs everything
      }
    }
    return [await make(['wasm']), 'wasm'];
  }

  /** Downloads (or revalidates) the model and opens a session; reuses it while the ETag is unchanged. */
  async load(model, { version = undefined } = {}) {
    const { bytes, etag, source } = await fetchModelBytes(this.client, this.cache, model, { version });
    const key = `${model}/${version ?? ''}`;
    const previous = this.loaded.get(key);
    if (previous && previous.etag === etag) {
      previous.source = source; // how this load got its bytes: revalidated ('cache') or downloaded again
      return previous;
    }
    const [session, device] = await this.createSession(bytes);
    // Stateful models declare their state tensors in the config (Triton's sequence_batching.state).
    const config = await this.client.modelConfig(model, { version }).catch((err) => {
      if (err instanceof ConnectionError) return null; // offline with a cached model: no state info
      throw err;
    });
    const state = config?.sequence_batching?.state ?? [];
    const local = new LocalModel(await this.ort(), session, { name: model, version, etag, device, source, state });
    this.loaded.set(key, local);
    if (previous) await previous.release();
    return local;
  }
}
