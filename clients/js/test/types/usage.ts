// Compiled (not run) by test/types.test.js: the README's calls must type-check against types/index.d.ts.
import {
  InferenceClient, LocalRunner, ServerError, openModel, runGates, type InferResult, type GatesDocument,
} from '@modelbridge/client';

async function main(): Promise<number> {
  const client = new InferenceClient({ baseUrl: 'http://127.0.0.1:8000' });
  const live: boolean = await client.live();
  const meta = await client.modelMetadata('add_sub');
  const firstShape: number[] = meta.inputs[0].shape;
  const result: InferResult = await client.infer('add_sub', [
    { name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: new Int32Array(16) },
    { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], data: Array(16).fill(1) },
  ], { outputs: ['OUTPUT0'], id: 'r1', binary: true });
  const sum = result.output('OUTPUT0').data;
  const local = await new LocalRunner(client, { device: 'auto' }).load('lstm_tiny');
  const y = (await local.infer([{ name: 'x', datatype: 'FP32', shape: [1, 3, 2], data: [1, 2, 3, 4, 5, 6] }])).outputs[0];
  const model = openModel(client, 'lstm_tiny', { local: true });
  await model.infer([{ name: 'x', datatype: 'FP32', shape: [1, 1, 2], data: [[[0.5, 1]]] }]);
  const gates: GatesDocument = await client.gates('lstm_tiny');
  const { Y_h } = runGates(gates, new Float32Array(6), { seqLength: 3, batchSize: 1 });
  const lens = gates.nodes[0].wiring?.sequence_lens?.graph_inputs ?? [];
  const masked = runGates(gates, new Float32Array(12), { seqLength: 3, batchSize: 2, seqLens: [3, 1], layout: 1,
    initialH: new Float32Array(8), initialC: new Float32Array(8) });
  const cDims: number[] | undefined = masked.dims.Y_c;
  const download = await client.downloadModel('add_sub', { etag: '"x"' });
  try {
    await client.modelConfig('nope');
  } catch (err) {
    if (err instanceof ServerError) return err.status;
  }
  return Number(live) + firstShape.length + sum.length + y.shape.length + Y_h.length + lens.length + (cDims?.length ?? 0) + (download.bytes?.length ?? 0);
}

// @ts-expect-error: datatypes are checked
void client_misuse({ name: 'x', datatype: 'FLOAT32', shape: [1], data: [1] });
function client_misuse(t: Parameters<InferenceClient['infer']>[1][number]): void { void t; }
void main;
