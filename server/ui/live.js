// The live sine panel of sine_lstm_stream: a sine streamed one sample per tick, each sample sent as one
// step of a V2 sequence to the server (which keeps the LSTM's h/c) and as the same step to this page's
// onnxruntime-web runner (which keeps its own h/c); both predict the next sample, plotted as they come.
import { openModel } from './vendor/modelbridge.js';
import { drawLines } from './plots.js';

export const LIVE_MODEL = 'sine_lstm_stream';
const TICK_MS = 50;
const STEP_RAD = 0.1; // the spacing the model was trained on
const AMPLITUDE = 0.8;
const SHOWN = 160; // samples on screen; older ones scroll out of the plot but stay in the series

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * window.__liveSine holds the plotted series for the browser tests: truth[t] is the sample sent at step
 * t, server[t] / browser[t] the predictions of truth[t + 1] answered to that step.
 */
export class LiveSine {
  constructor(client, runner) {
    this.client = client;
    this.runner = runner;
    this.run = null; // the running stream, or null
    this.data = null;
  }

  show() {
    $('live').hidden = false;
    $('live-toggle').onclick = () => (this.run ? this.stop() : this.start());
  }

  /** Starts a new stream (new sequences on both sides); a running one is stopped first. */
  async start() {
    await this.stop();
    const run = {
      remote: openModel(this.client, LIVE_MODEL).sequence(),
      local: openModel(this.client, LIVE_MODEL, { local: true, runner: this.runner }).sequence(),
      stopping: false,
    };
    this.data = { model: LIVE_MODEL, sequenceId: run.remote.id, truth: [], server: [], browser: [], maxDiff: 0,
      running: true, ended: false, error: null, stepMs: [] };
    window.__liveSine = this.data;
    this.run = run;
    $('live-toggle').textContent = 'Stop';
    run.done = this.loop(run, this.data);
    return run.done;
  }

  /** Stops the running stream: its last step carries sequence_end on both sides. */
  async stop() {
    const run = this.run;
    if (!run) return;
    run.stopping = true;
    await run.done;
  }

  async loop(run, data) {
    try {
      for (let t = 0; ; t++) {
        const began = performance.now();
        const last = run.stopping;
        const sample = AMPLITUDE * Math.sin(STEP_RAD * t);
        const x = [{ name: 'sample', datatype: 'FP32', shape: [1, 1, 1], data: [sample] }];
        const [r, b] = await Promise.all([run.remote.step(x, { end: last }), run.local.step(x, { end: last })]);
        const value = (res) => Number(res.output('next_value').data[0]);
        data.truth.push(sample);
        data.server.push(value(r));
        data.browser.push(value(b));
        data.maxDiff = Math.max(data.maxDiff, Math.abs(data.server[t] - data.browser[t]));
        data.stepMs.push(performance.now() - began);
        this.draw(data);
        if (last) break;
        await sleep(Math.max(0, TICK_MS - (performance.now() - began)));
      }
      data.ended = true;
    } catch (err) {
      data.error = String(err.message ?? err);
      $('live-text').textContent = `stream failed: ${data.error}`;
      $('live-text').className = 'bad';
    } finally {
      data.running = false;
      if (this.run === run) {
        this.run = null;
        $('live-toggle').textContent = 'Restart';
      }
    }
  }

  draw(data) {
    const n = data.truth.length;
    const from = Math.max(0, n - SHOWN);
    // A prediction answered at step t is for sample t + 1: plotted there, one ahead of the truth.
    const ahead = (ys) => ys.slice(from).map((y, k) => [from + k + 1, y]);
    drawLines($('live-plot'), [
      { color: '#c8cad6', width: 6, points: data.truth.slice(from).map((y, k) => [from + k, y]) },
      { color: '#2f6fde', width: 3, points: ahead(data.server) },
      { color: '#f29900', dash: [6, 4], points: ahead(data.browser) },
    ]);
    const text = $('live-text');
    text.textContent = `step ${n} · last ${data.stepMs[n - 1].toFixed(1)} ms · running max |server − browser| = `
      + `${data.maxDiff.toExponential(2)}`;
    text.className = data.maxDiff <= 1e-5 ? 'ok' : 'bad';
  }
}
