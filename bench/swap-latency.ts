/**
 * Hot-swap latency of sparse additive deltas touching 0.1%, 1% and 10% of every 2-D weight,
 * on stories260K and a random ~30M Llama: base -> X (apply), X -> Y (revert X + apply Y),
 * Y -> base (revert). Plain adapters (`apply(adapter)`: checks, reduction and pristine reads
 * on every apply) against prepared ones (`apply(patcher.prepare(adapter))`, what the server
 * swaps), measured in alternating rounds, medians. Before every timed operation a 64 MB
 * buffer is streamed through the cache, as a model step between two swaps would do on a
 * model larger than the cache: the touched weights are then read from memory.
 */
import { cpus, loadavg } from 'node:os';
import { bundledModelPath } from '../src/io/model-dir.js';
import { WeightPatcher, type AppliedHandle, type PreparedAdapter } from '../src/merge/apply.js';
import { fingerprintWeights } from '../src/merge/fingerprint.js';
import type { Adapter } from '../src/merge/types.js';
import { CausalLM } from '../src/models/causal-lm.js';
import { LLAMA_30M, randomModel } from '../src/models/random.js';
import type { HostTensor } from '../src/tensor.js';
import { additiveElements, sparseAdapter } from './sparse-adapters.js';
import { table } from './util.js';

type Weights = Map<string, HostTensor<'f32'>>;

export interface SwapRow {
  model: string;
  params: number;
  density: number;
  path: 'plain' | 'prepared';
  /** Elements X touches (Y touches about as many). */
  elementsX: number;
  elementsY: number;
  applyMs: number;
  swapMs: number;
  revertMs: number;
  /** ns per touched element; equal to ms per million touched elements. Swap: per element of X and Y. */
  applyNs: number;
  swapNs: number;
  revertNs: number;
  /** Prepared only: time to prepare X once, and the bytes its prepared form holds per touched element. */
  prepareMs?: number;
  preparedBytesPerElement?: number;
  /** The weights had their original bits after the series. */
  exactRestore: boolean;
}

const evictBuffer = new Float32Array(16 * 1024 * 1024);
let evictSink = 0;
/** Stream 64 MB through the cache (one read per cache line). */
function evictCache(): void {
  let s = 0;
  for (let i = 0; i < evictBuffer.length; i += 16) s += evictBuffer[i];
  evictSink += s;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function timed(fn: () => void): number {
  evictCache();
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

function sameBits(weights: Weights, snapshot: Map<string, Float32Array>): boolean {
  for (const [name, t] of weights) {
    const a = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    const b = snapshot.get(name)!;
    if (!a.equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength))) return false;
  }
  return true;
}

async function series(model: string, weights: Weights): Promise<SwapRow[]> {
  const params = [...weights.values()].reduce((s, t) => s + t.data.length, 0);
  const fp = fingerprintWeights(weights);
  const snapshot = new Map([...weights].map(([k, t]) => [k, t.data.slice()]));
  const rows: SwapRow[] = [];
  for (const density of [0.001, 0.01, 0.1]) {
    const X = sparseAdapter(weights, density, 1, fp);
    const Y = sparseAdapter(weights, density, 2, fp);
    const patcher = new WeightPatcher(weights, { fingerprint: fp });
    let preparedX!: PreparedAdapter;
    const prepareMs = timed(() => (preparedX = patcher.prepare(X)));
    const preparedY = patcher.prepare(Y);
    const forms: Record<SwapRow['path'], [Adapter | PreparedAdapter, Adapter | PreparedAdapter]> = { plain: [X, Y], prepared: [preparedX, preparedY] };
    const times = { plain: { apply: [] as number[], swap: [] as number[], revert: [] as number[] }, prepared: { apply: [] as number[], swap: [] as number[], revert: [] as number[] } };
    const rounds = density >= 0.1 && params > 1e7 ? 5 : 9;
    for (let round = 0; round <= rounds; round++) {
      for (const path of ['plain', 'prepared'] as const) {
        const [x, y] = forms[path];
        let hx!: AppliedHandle, hy!: AppliedHandle;
        const a = timed(() => (hx = patcher.apply(x)));
        const s = timed(() => {
          patcher.revert(hx);
          hy = patcher.apply(y);
        });
        const r = timed(() => patcher.revert(hy));
        if (round > 0) {
          // The first round warms up the JIT.
          times[path].apply.push(a);
          times[path].swap.push(s);
          times[path].revert.push(r);
        }
      }
    }
    const exactRestore = sameBits(weights, snapshot);
    const nX = additiveElements(X);
    const nY = additiveElements(Y);
    for (const path of ['plain', 'prepared'] as const) {
      const t = times[path];
      const [applyMs, swapMs, revertMs] = [median(t.apply), median(t.swap), median(t.revert)];
      rows.push({
        model, params, density, path, elementsX: nX, elementsY: nY, applyMs, swapMs, revertMs,
        applyNs: (applyMs * 1e6) / nX, swapNs: (swapMs * 1e6) / (nX + nY), revertNs: (revertMs * 1e6) / nY,
        ...(path === 'prepared' ? { prepareMs, preparedBytesPerElement: preparedX.bytes / preparedX.elements } : {}),
        exactRestore,
      });
      console.error(`swap ${model} ${density * 100}% ${path}: apply ${applyMs.toFixed(3)} ms, swap ${swapMs.toFixed(3)} ms, revert ${revertMs.toFixed(3)} ms, exact ${exactRestore}`);
    }
  }
  return rows;
}

/** Run the swap-latency series on both models; returns the rows and a markdown section. */
export async function swapLatency(): Promise<{ rows: SwapRow[]; markdown: string }> {
  const loadBefore = loadavg()[0];
  const stories = await CausalLM.load(bundledModelPath());
  const rows = [...(await series('stories260K', stories.weights)), ...(await series('random llama ~30M', randomModel(LLAMA_30M).weights))];
  const markdown = [
    '## Hot swap: apply / swap / revert of sparse deltas',
    '',
    'Sparse additive deltas on a fraction of every 2-D weight; "swap" = revert X + apply Y (its ns/element counts the elements of X and Y). ' +
      '"plain": `apply(adapter)` checks, reduces and reads the pristine values on every apply; "prepared": `apply(patcher.prepare(adapter))` ' +
      '(prepared once, as the server does at load). Medians of alternating rounds; a 64 MB buffer is streamed through the cache before each ' +
      'timed operation (as a model step between swaps would). ns per element = ms per million touched elements. Exact restore: bitwise, after the series.',
    '',
    table(
      ['model', 'density', 'path', 'elements (X)', 'apply ms', 'swap X->Y ms', 'revert ms', 'apply ns/el', 'swap ns/el', 'revert ns/el', 'prepare ms (once)', 'prepared B/el', 'exact restore'],
      rows.map((r) => [
        r.model, `${r.density * 100}%`, r.path, r.elementsX, r.applyMs, r.swapMs, r.revertMs, r.applyNs, r.swapNs, r.revertNs,
        r.prepareMs ?? '', r.preparedBytesPerElement ?? '', r.exactRestore ? 'yes' : 'NO',
      ]),
    ),
    '',
    `Machine load average (1 min) ${loadBefore.toFixed(1)} at start, ${loadavg()[0].toFixed(1)} at end, on ${cpus().length} cores: ` +
      'these operations are bound by memory latency, so other work on the machine inflates all of them (compare rows of one run).',
  ].join('\n');
  return { rows, markdown };
}
