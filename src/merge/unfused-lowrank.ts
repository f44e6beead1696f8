/**
 * Running a low-rank adapter (LoRA, PEFT LoRA) beside the base layers instead of fusing it:
 * y = base(x) + s · (x A^T) B^T (+ s · biasDelta), all in f32 with the adapter's own factors
 * fed as graph inputs. This is how adapters stay f32 on a model whose base weights are stored
 * in lower precision (`CausalLM.setWeightsDtype`), where fusing would round the adapter's
 * delta to the base's precision.
 */
import { SparsetuneError } from '../errors.js';
import { linear } from '../engine/nn.js';
import { constTensor, matmul, mul } from '../engine/ops/index.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { LinearSite, ModelHooks } from '../models/hooks.js';
import type { HostTensor } from '../tensor.js';
import type { Adapter, LowRankPair } from './types.js';

/** Whether every payload of the adapter is a low-rank pair on a Linear site of the model. */
export function runsUnfusedLowRank(model: CausalLM, adapter: Adapter): boolean {
  if (adapter.additive.size || adapter.structured.size || adapter.masks.size || adapter.pruned || adapter.lowrank.size === 0) return false;
  // A tied LM head's weight is also the embedding table, which a hook does not reach.
  const sites = new Set(model.sites().filter((s) => !(s.kind === 'lm_head' && model.config.tieWordEmbeddings)).map((s) => s.weightName));
  return [...adapter.lowrank.keys()].every((name) => sites.has(name));
}

/**
 * Hooks and feeds that add the adapter's low-rank pairs on their sites. `prefix` keeps the
 * feed names of several adapters apart. Throws unless `runsUnfusedLowRank` holds.
 */
export function lowRankHooks(model: CausalLM, adapter: Adapter, prefix: string): { hooks: ModelHooks; feeds: Record<string, HostTensor> } {
  if (!runsUnfusedLowRank(model, adapter)) {
    throw new SparsetuneError('BAD_ADAPTER', `adapter (${adapter.meta.method}, ${adapter.meta.kind}) has payloads other than low-rank pairs on linear layers: fuse it instead`);
  }
  const byWeight = new Map<string, LinearSite>();
  for (const s of model.sites()) if (!byWeight.has(s.weightName)) byWeight.set(s.weightName, s);
  const feeds: Record<string, HostTensor> = {};
  const bySite = new Map<string, { pair: LowRankPair; a: string; b: string }>();
  for (const [name, pair] of adapter.lowrank) {
    const site = byWeight.get(name)!;
    const a = `${prefix}.${name}.lowrank_A`;
    const b = `${prefix}.${name}.lowrank_B`;
    feeds[a] = pair.A;
    feeds[b] = pair.B;
    bySite.set(site.name, { pair, a, b });
    if (site.layout === 'out_in' && (pair.A.shape[1] !== site.inFeatures || pair.B.shape[0] !== site.outFeatures)) {
      throw new SparsetuneError('SHAPE_MISMATCH', `adapter pair on ${name}: A [${pair.A.shape}] / B [${pair.B.shape}] do not fit the layer [${site.outFeatures}, ${site.inFeatures}]`);
    }
  }
  const hooks: ModelHooks = {
    linear: (site, x, base, g) => {
      const y = base(x);
      const p = bySite.get(site.name);
      if (!p) return y;
      const A = g.inputs.find((v) => v.name === p.a) ?? g.input(p.a, 'f32', p.pair.A.shape);
      const B = g.inputs.find((v) => v.name === p.b) ?? g.input(p.b, 'f32', p.pair.B.shape);
      // out_in: W [out, in] += s B A, A [r, in], B [out, r]. in_out (Conv1D): W [in, out] += s B A, B [in, r], A [r, out].
      const h = site.layout === 'out_in' ? linear(linear(x, A), B) : matmul(matmul(x, B), A);
      let out = g.add('Add', [y, mul(h, p.pair.scale)])[0];
      if (p.pair.biasDelta) {
        const bias = Float32Array.from(p.pair.biasDelta, (v) => v * p.pair.scale);
        out = g.add('Add', [out, constTensor(g, { dtype: 'f32', shape: [bias.length], data: bias }, 'lowrank_bias')])[0];
      }
      return out;
    },
  };
  return { hooks, feeds };
}
