// Types of @modelbridge/client (hand-written; the sources are plain ESM JavaScript).

export type Datatype =
  | 'BOOL' | 'UINT8' | 'UINT16' | 'UINT32' | 'UINT64' | 'INT8' | 'INT16' | 'INT32' | 'INT64'
  | 'FP16' | 'BF16' | 'FP32' | 'FP64' | 'BYTES';

type NestedArray<T> = T[] | NestedArray<T>[];

/** What infer accepts: data flat or nested, row-major. */
export interface InputTensor {
  name: string;
  datatype: Datatype;
  shape: number[];
  /** numbers (or a typed array); bigint for INT64/UINT64; booleans for BOOL; strings or Uint8Array for BYTES;
   *  FP16/BF16 as numbers, or their raw bits as a Uint16Array. */
  data: ArrayLike<number> | ArrayLike<bigint> | NestedArray<number | bigint | boolean | string | Uint8Array>;
  parameters?: Record<string, unknown>;
}

/** What infer returns. BOOL → Uint8Array of 0/1; FP16/BF16 → Float32Array (bits in `raw`); BYTES → Uint8Array[]. */
export interface OutputTensor {
  name: string;
  datatype: Datatype;
  shape: number[];
  data: Int8Array | Uint8Array | Int16Array | Uint16Array | Int32Array | Uint32Array | BigInt64Array | BigUint64Array
    | Float32Array | Float64Array | Uint8Array[];
  raw?: Uint16Array;
  parameters?: Record<string, unknown>;
}

export interface InferResult {
  modelName: string;
  modelVersion: string;
  id?: string;
  parameters?: Record<string, unknown>;
  outputs: OutputTensor[];
  /** The output named `name`; throws RangeError if there is none. */
  output(name: string): OutputTensor;
}

export type RequestedOutput = string | { name: string; parameters?: Record<string, unknown> };

export interface InferOptions {
  version?: string | number;
  outputs?: RequestedOutput[];
  id?: string;
  parameters?: Record<string, unknown>;
  /** Binary tensor data extension (default true); false sends and receives JSON. */
  binary?: boolean;
  signal?: AbortSignal;
}

export interface VersionOption { version?: string | number }

export interface TensorMetadata { name: string; datatype: Datatype; shape: number[] }
export interface ModelMetadata { name: string; versions: string[]; platform: string; inputs: TensorMetadata[]; outputs: TensorMetadata[] }
export interface ServerMetadata { name: string; version: string; extensions: string[] }
export interface RepositoryEntry { name: string; version?: string; state?: string; reason?: string }
export interface ModelDownload { bytes: Uint8Array | null; etag: string | null; notModified: boolean }

export interface GateMatrices { W: number[][]; R: number[][]; Wb: number[]; Rb: number[]; source_gate?: string | null }
export interface GatesDirection {
  direction: 'forward' | 'reverse';
  gates: Record<string, GateMatrices>;
  peepholes?: { i: number[]; o: number[]; f: number[] };
  /** per gate: half-open row ranges [start, stop) in W[d], R[d] and B[d] (Wb first half of B, Rb second) */
  rows?: Record<string, { W: [number, number]; R: [number, number]; Wb: [number, number]; Rb: [number, number] }>;
}
/** What feeds one optional node input, traced back through the graph (docs/annotations.md, "wiring"). */
export interface WiringInput {
  tensor: string;
  /** a model input itself, a constant, zeros (constant or sized from inputs' shapes), or computed from model inputs */
  kind: 'graph_input' | 'constant' | 'zeros' | 'computed';
  /** model inputs whose values reach it (a mask's token input, the h0 input...) */
  graph_inputs: string[];
  /** model inputs whose shape only reaches it (a zero state sized to the batch) */
  shape_from: string[];
  /** op types on the way, from the model inputs towards the node */
  via: string[];
  /** recurrent nodes upstream (an encoder whose state feeds a decoder) */
  recurrent_nodes: string[];
  shape?: number[];
  value?: unknown;
}
/** Where one node output goes. */
export interface WiringOutput {
  tensor: string;
  /** graph outputs it becomes, directly or through Transpose/Squeeze/Unsqueeze/Reshape/Identity/Flatten/Cast */
  graph_outputs: string[];
  via: string[];
  /** other nodes reading it */
  consumers: string[];
  used: boolean;
}
export interface Wiring {
  X: WiringInput;
  sequence_lens: WiringInput | null;
  initial_h: WiringInput | null;
  initial_c?: WiringInput | null;
  Y: WiringOutput | null;
  Y_h: WiringOutput | null;
  Y_c?: WiringOutput | null;
}
export interface GatesNode {
  node: string;
  op: 'LSTM' | 'GRU' | 'RNN';
  hidden_size: number;
  input_size: number;
  activations?: string[];
  activation_alpha?: number[] | null;
  activation_beta?: number[] | null;
  clip?: number | null;
  linear_before_reset?: number;
  input_forget?: number;
  direction?: 'forward' | 'reverse' | 'bidirectional';
  /** 0: time-major X [seq, batch, input]; 1: batch-major X [batch, seq, input] */
  layout?: 0 | 1;
  onnx_gate_order?: string[];
  /** tensor names feeding W, R, B (and P) */
  inputs?: Record<string, string | null>;
  /** the meaning of each axis of X, the states and the outputs in this node's layout */
  axes?: Record<string, string[]>;
  wiring?: Wiring;
  directions: GatesDirection[];
  source?: Record<string, unknown> | null;
}
export interface GatesDocument { nodes: GatesNode[] }

export class ModelBridgeError extends Error {
  status: number;
  url?: string;
}
export class ServerError extends ModelBridgeError {
  serverMessage: string;
  body: unknown;
}
export class ConnectionError extends ModelBridgeError {}

export interface ClientOptions {
  /** e.g. "http://127.0.0.1:8000"; defaults to the page's origin in a browser. */
  baseUrl?: string;
  fetch?: typeof fetch;
  headers?: Record<string, string>;
  /** Sent as 'Authorization: Bearer <key>'. */
  apiKey?: string;
  timeoutMs?: number;
}

export class InferenceClient {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  live(): Promise<boolean>;
  ready(): Promise<boolean>;
  modelReady(model: string, options?: VersionOption): Promise<boolean>;
  serverMetadata(): Promise<ServerMetadata>;
  modelMetadata(model: string, options?: VersionOption): Promise<ModelMetadata>;
  modelConfig(model: string, options?: VersionOption): Promise<Record<string, any>>;
  modelStatistics(model?: string, options?: VersionOption): Promise<{ model_stats: Record<string, any>[] }>;
  repositoryIndex(options?: { ready?: boolean }): Promise<RepositoryEntry[]>;
  gates(model: string, options?: VersionOption): Promise<GatesDocument>;
  downloadModel(model: string, options?: VersionOption & { etag?: string }): Promise<ModelDownload>;
  infer(model: string, inputs: InputTensor[], options?: InferOptions): Promise<InferResult>;
}

export class ModelCache {
  constructor(options?: { cacheName?: string; persistent?: boolean });
  get(key: string): Promise<{ etag: string | null; bytes: Uint8Array } | undefined>;
  put(key: string, etag: string | null, bytes: Uint8Array): Promise<void>;
}

export function fetchModelBytes(client: InferenceClient, cache: ModelCache, model: string, options?: VersionOption):
  Promise<{ bytes: Uint8Array; etag: string | null; source: 'network' | 'cache' | 'offline-cache' }>;

export type Device = 'wasm' | 'webgpu' | 'auto';

export interface RunnerOptions {
  /** The onnxruntime-web module; imported on first use when omitted. */
  ort?: any;
  device?: Device;
  cache?: ModelCache;
  sessionOptions?: Record<string, unknown>;
  lowerIrVersion?: boolean;
}

export class LocalModel {
  readonly name: string;
  readonly version?: string | number;
  readonly etag?: string | null;
  readonly device: 'wasm' | 'webgpu';
  readonly source: 'network' | 'cache' | 'offline-cache';
  readonly inputNames: string[];
  readonly outputNames: string[];
  constructor(ort: any, session: any, info: { name: string; version?: string | number; etag?: string | null; device?: string; source?: string });
  infer(inputs: InputTensor[], options?: { outputs?: RequestedOutput[]; id?: string }): Promise<InferResult>;
  release(): Promise<void>;
}

export class LocalRunner {
  constructor(client: InferenceClient, options?: RunnerOptions);
  /** Set when a model's IR version was lowered to what onnxruntime-web supports. */
  irDowngraded?: { found: number; max: number };
  load(model: string, options?: VersionOption): Promise<LocalModel>;
  createSession(bytes: Uint8Array): Promise<[any, 'wasm' | 'webgpu']>;
}

export interface ModelHandle {
  readonly name: string;
  readonly version?: string | number;
  readonly local: boolean;
  metadata(): Promise<ModelMetadata>;
  gates(): Promise<GatesDocument>;
  infer(inputs: InputTensor[], options?: InferOptions): Promise<InferResult>;
  /** A stateful model's sequence (V2 sequence extension): the state lives on the server, or in this process when local. */
  sequence(id?: string | number): SequenceHandle;
}

export interface SequenceHandle {
  readonly id: string | number;
  /** The first step sends sequence_start; `end: true` sends sequence_end. */
  step(inputs: InputTensor[], options?: InferOptions & { end?: boolean }): Promise<InferResult>;
  /** The last step. */
  end(inputs: InputTensor[], options?: InferOptions): Promise<InferResult>;
}

/** One flag between the server (local: false) and onnxruntime-web in this process (local: true). */
export function openModel(client: InferenceClient, name: string,
  options?: VersionOption & { local?: boolean; runner?: LocalRunner }): ModelHandle;

export interface RecurrentResult {
  /** [seq, directions, batch, hidden] */
  Y: Float32Array;
  /** [directions, batch, hidden] */
  Y_h: Float32Array;
  /** LSTM only: [directions, batch, hidden] */
  Y_c?: Float32Array;
  dims: { Y: number[]; Y_h: number[]; Y_c?: number[] };
}
export interface RecurrentShape {
  seqLength: number;
  batchSize?: number;
  /** flat [directions, batch, hidden] (layout 0) or [batch, directions, hidden] (layout 1); zeros when omitted */
  initialH?: ArrayLike<number>;
  initialC?: ArrayLike<number>;
  /** each batch item's length (ONNX sequence_lens): Y is zero past it, Y_h/Y_c hold its last valid step (zeros for length 0, like onnxruntime) */
  seqLens?: ArrayLike<number | bigint>;
  /** 0: time-major (x [seq, batch, input]); 1: batch-major (x [batch, seq, input]). Default: the node's layout, else 0 */
  layout?: 0 | 1;
}
/** x is flat [seqLength, batchSize, input_size] (layout 0) or [batchSize, seqLength, input_size] (layout 1). */
export function runRecurrentNode(node: GatesNode, x: ArrayLike<number>, shape: RecurrentShape): RecurrentResult;
export function runGates(gates: GatesDocument, x: ArrayLike<number>, options: RecurrentShape & { node?: number | string }): RecurrentResult;

export function bytesToStrings(items: Uint8Array[]): string[];
export function encodeInferRequest(inputs: InputTensor[], options?: Omit<InferOptions, 'version' | 'signal'>):
  { body: Uint8Array; headers: Record<string, string> };
export function decodeInferResponse(bytes: Uint8Array, headerLength: string | number | null): InferResult;
export function floatToHalfBits(value: number): number;
export function halfBitsToFloat(bits: number): number;
export function floatToBf16Bits(value: number): number;
export function bf16BitsToFloat(bits: number): number;
export const DATATYPES: Record<Datatype, { array: any; size: number; ort: string | null }>;

/** Only in the browser bundle (server/ui/vendor/modelbridge.js, or the "./browser" export). */
export const ort: any;
export function createLocalRunner(client: InferenceClient, options?: RunnerOptions): LocalRunner;
