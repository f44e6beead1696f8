/**
 * The base model's inference graph cut at every Linear site, so unfused adapter
 * contributions can be added to each site's output between segment runs (kernels.ts does the
 * arithmetic in WebAssembly). The base GEMMs run once for the whole batch, in onnxruntime,
 * with the shared weights fed by reference as always; only the per-row extras run outside.
 *
 * The segments are built once per model from the architecture's own forward pass (via
 * `ModelHooks`), so every architecture gets them and the number of compiled graphs depends
 * on the model's depth only, never on adapters. Token-embedding deltas enter as one extra
 * input added to the embedding output (`embed_delta`).
 */
import type { CompiledGraph } from '../../engine/runtime.js';
import type { Value } from '../../engine/ir.js';
import { add } from '../../engine/ops/index.js';
import type { CausalLM, KvCache } from '../../models/causal-lm.js';
import type { LinearSite, ModelHooks } from '../../models/hooks.js';
import { stepMask, stepPositions } from '../../models/masks.js';
import type { HostTensor } from '../../tensor.js';
import { CutMarks, cutName, partition, tapName, type Partition } from './partition.js';
import { SparsetuneError } from '../../errors.js';

/**
 * Called after the segment computing site `site`'s output: `x` is the site input
 * [rows, in] (rows = batch x new tokens), `y` the output [rows, out], edited in place.
 */
export type SiteHandler = (site: LinearSite, x: Float32Array, y: Float32Array, rows: number) => void;

export interface SegmentedStepOptions {
  onSite: SiteHandler;
  /** Added to the token embeddings: [batch * new tokens * hidden], or absent for none. */
  embedDelta?: Float32Array;
}

interface CompiledSegment {
  compiled: CompiledGraph;
  cuts: LinearSite[];
}

export class SegmentedModel {
  private constructor(
    readonly model: CausalLM,
    private readonly parts: Partition,
    private readonly marks: CutMarks,
    private readonly segments: CompiledSegment[],
    /** Hidden size (embedding width). */
    readonly hidden: number,
  ) {}

  /** Build and compile the segments of `model` (one-time, a few seconds for deep models). */
  static async create(model: CausalLM): Promise<SegmentedModel> {
    const marks = new CutMarks();
    const sites = new Map(model.sites().map((s) => [s.name, s]));
    let hidden = 0;
    const hooks: ModelHooks = {
      linear: (site: LinearSite, x: Value, base: (x: Value) => Value) => {
        marks.tap(x, site.name);
        return marks.cut(base(x), site.name);
      },
      residual: (kind, _layer, h, g) => {
        if (kind !== 'embed') return h;
        hidden = Number(h.shape[h.shape.length - 1]);
        return add(h, g.input('embed_delta', 'f32', h.shape));
      },
    };
    const built = model.build('infer', hooks);
    if (!hidden) throw new SparsetuneError('BAD_CONFIG', `${model.config.modelType}: the architecture has no embedding hook, so it cannot run unfused adapters`);
    built.graph.output('logits', built.result.logits);
    built.result.present.forEach((kv, l) => {
      built.graph.output(`present_k_${l}`, kv.k);
      built.graph.output(`present_v_${l}`, kv.v);
    });
    const parts = partition(built.graph, marks);
    const segments: CompiledSegment[] = [];
    for (const seg of parts.segments) {
      segments.push({ compiled: await model.runtime.compile(seg.graph), cuts: seg.cuts.map((n) => sites.get(n)!) });
    }
    return new SegmentedModel(model, parts, marks, segments, hidden);
  }

  /** Number of onnxruntime runs per step. */
  get segmentCount(): number {
    return this.segments.length;
  }

  /**
   * `CausalLM.step` with `onSite` called at every site. Same inputs and outputs: `ids`
   * [B][S] new tokens, `attention` [B][past + S]; returns logits [B, S, V] and the extended
   * cache.
   */
  async step(
    ids: readonly (readonly number[])[],
    attention: readonly (readonly number[])[],
    cache: KvCache,
    opts: SegmentedStepOptions,
  ): Promise<{ logits: HostTensor<'f32'>; cache: KvCache }> {
    const B = ids.length;
    const S = ids[0]?.length ?? 0;
    const V = this.model.vocabSize;
    if (B === 0 || S === 0 || ids.some((r) => r.length !== S)) throw new SparsetuneError('BAD_ARGUMENT', 'step: need at least one row, all with the same number of new tokens');
    if (attention.length !== B || attention.some((r) => r.length !== cache.length + S)) {
      throw new SparsetuneError('BAD_ARGUMENT', `step: attention rows must cover past + new tokens (${cache.length + S})`);
    }
    for (const row of ids) for (const t of row) {
      if (!Number.isInteger(t) || t < 0 || t >= V) throw new SparsetuneError('BAD_ARGUMENT', `token id ${t} is outside the vocabulary (0..${V - 1})`);
    }
    const rows = B * S;
    const env: Record<string, HostTensor> = {
      input_ids: { dtype: 'i64', shape: [B, S], data: BigInt64Array.from(ids.flat().map((v) => BigInt(v))) },
      position_ids: stepPositions(attention, S),
      attention_mask: stepMask(attention, cache.length, S),
      embed_delta: { dtype: 'f32', shape: [B, S, this.hidden], data: opts.embedDelta ?? new Float32Array(rows * this.hidden) },
    };
    cache.k.forEach((k, l) => {
      env[`past_k_${l}`] = k;
      env[`past_v_${l}`] = cache.v[l];
    });
    for (const seg of this.segments) {
      const out = await seg.compiled.run(this.model.feeds(seg.compiled, env));
      Object.assign(env, out);
      for (const site of seg.cuts) {
        const y = out[cutName(site.name)] as HostTensor<'f32'>;
        const x = env[tapName(this.marks.tapOf(site.name))] as HostTensor<'f32'>;
        opts.onSite(site, x.data, y.data, rows);
      }
    }
    const get = (name: string) => env[this.parts.outputs.get(name)!] as HostTensor<'f32'>;
    const next: KvCache = { k: [], v: [], length: cache.length + S };
    cache.k.forEach((_, l) => {
      next.k.push(get(`present_k_${l}`));
      next.v.push(get(`present_v_${l}`));
    });
    return { logits: get('logits'), cache: next };
  }
}
