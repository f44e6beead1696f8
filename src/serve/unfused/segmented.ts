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
import ort from 'onnxruntime-node';
import type { Dim, Value } from '../../engine/ir.js';
import { add } from '../../engine/ops/index.js';
import type { CausalLM, KvCache } from '../../models/causal-lm.js';
import type { LinearSite, ModelHooks } from '../../models/hooks.js';
import { stepMask, stepPositions } from '../../models/masks.js';
import type { HostTensor } from '../../tensor.js';
import type { Arena } from './arena.js';
import { CutMarks, cutName, partition, tapName, type Partition } from './partition.js';
import { SparsetuneError } from '../../errors.js';

/**
 * Called after the segment computing site `site`'s output: the site's input x [rows, in]
 * and output y [rows, out] (rows = batch x new tokens) are f32 arrays at byte offsets `x`
 * and `y` of the arena's memory; edit y in place.
 */
export type SiteHandler = (site: LinearSite, x: number, y: number, rows: number) => void;

export interface SegmentedStepOptions {
  onSite: SiteHandler;
  /** Added to the token embeddings: [batch * new tokens * hidden], or absent for none. */
  embedDelta?: Float32Array;
}

/** A segment output that lives in the arena (written there by onnxruntime) rather than in a fresh array. */
interface ResidentOut {
  name: string;
  shape: Dim[];
}

interface CompiledSegment {
  compiled: CompiledGraph;
  cuts: LinearSite[];
  resident: ResidentOut[];
  /** Outputs onnxruntime allocates (the KV cache it returns). */
  allocated: string[];
}

/** An env value held in the arena: its byte offset and shape. */
interface InArena {
  off: number;
  shape: number[];
}

const ORT_TYPE: Record<string, ort.Tensor.Type> = { f32: 'float32', i64: 'int64', i32: 'int32', f64: 'float64', bool: 'bool', u8: 'uint8' };
const FROM_ORT: Record<string, HostTensor['dtype']> = { float32: 'f32', int64: 'i64', int32: 'i32', float64: 'f64', bool: 'bool', uint8: 'u8' };

export class SegmentedModel {
  /** The arena block that holds one step's resident values (grown as needed, reused). */
  private block = { off: 0, bytes: 0 };

  private constructor(
    readonly model: CausalLM,
    private readonly arena: Arena,
    private readonly parts: Partition,
    private readonly marks: CutMarks,
    private readonly segments: CompiledSegment[],
    /** Hidden size (embedding width). */
    readonly hidden: number,
  ) {}

  /**
   * Build and compile the segments of `model` (one-time, a few seconds for deep models).
   * `cutSite` picks the sites to cut at (default all).
   */
  static async create(model: CausalLM, arena: Arena, cutSite: (s: LinearSite) => boolean = () => true): Promise<SegmentedModel> {
    const marks = new CutMarks();
    const sites = new Map(model.sites().map((s) => [s.name, s]));
    let hidden = 0;
    const hooks: ModelHooks = {
      linear: (site: LinearSite, x: Value, base: (x: Value) => Value) => {
        if (!cutSite(site)) return base(x);
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
    const kvNames = new Set(built.result.present.flatMap((_, l) => [`present_k_${l}`, `present_v_${l}`]).map((n) => parts.outputs.get(n)!));
    const segments: CompiledSegment[] = [];
    for (const seg of parts.segments) {
      const resident: ResidentOut[] = [];
      const allocated: string[] = [];
      for (const o of seg.graph.outputs) {
        if (o.value.dtype === 'f32' && !kvNames.has(o.name) && o.value.shape.every((d) => typeof d === 'number' || /^[a-z0-9*+]+$/.test(d))) resident.push({ name: o.name, shape: o.value.shape });
        else allocated.push(o.name);
      }
      segments.push({ compiled: await model.runtime.compile(seg.graph), cuts: seg.cuts.map((n) => sites.get(n)!), resident, allocated });
    }
    return new SegmentedModel(model, arena, parts, marks, segments, hidden);
  }

  /** Number of onnxruntime runs per step. */
  get segmentCount(): number {
    return this.segments.length;
  }

  /**
   * `CausalLM.step` with `onSite` called at every site. Same inputs and outputs: `ids`
   * [B][S] new tokens, `attention` [B][past + S]; returns logits [B, S, V] and the extended
   * cache. Must not run twice at once (the caller holds the weight gate).
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
    const dims: Record<string, number> = { batch: B, seq: S, past: cache.length, total: cache.length + S };
    const resolve = (d: Dim): number => (typeof d === 'number' ? d : d.split('*').reduce((p, f) => p * (/^\d+$/.test(f) ? Number(f) : f.split('+').reduce((a, t) => a + (dims[t] ?? NaN), 0)), 1));
    // Lay out every resident value of the step in one arena block.
    const placed = new Map<string, InArena>();
    let bytes = 0;
    for (const seg of this.segments) {
      for (const r of seg.resident) {
        const shape = r.shape.map(resolve);
        if (shape.some((x) => !Number.isInteger(x))) throw new SparsetuneError('RUNTIME', `segmented step: cannot size output ${r.name} [${r.shape}]`);
        placed.set(r.name, { off: bytes, shape });
        bytes += Math.ceil((4 * shape.reduce((a, b) => a * b, 1)) / 16) * 16;
      }
    }
    if (bytes > this.block.bytes) {
      if (this.block.bytes) this.arena.release(this.block.off);
      this.block = { off: this.arena.alloc(bytes), bytes };
    }
    for (const p of placed.values()) p.off += this.block.off;

    const env: Record<string, HostTensor | InArena> = {
      input_ids: { dtype: 'i64', shape: [B, S], data: BigInt64Array.from(ids.flat().map((v) => BigInt(v))) },
      position_ids: stepPositions(attention, S),
      attention_mask: stepMask(attention, cache.length, S),
      embed_delta: { dtype: 'f32', shape: [B, S, this.hidden], data: opts.embedDelta ?? new Float32Array(rows * this.hidden) },
    };
    cache.k.forEach((k, l) => {
      env[`past_k_${l}`] = k;
      env[`past_v_${l}`] = cache.v[l];
    });
    const n = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
    const tensorOf = (v: HostTensor | InArena): ort.Tensor =>
      'off' in v ? new ort.Tensor('float32', this.arena.f32(v.off, n(v.shape)), v.shape) : new ort.Tensor(ORT_TYPE[v.dtype], v.data as never, v.shape);
    for (const seg of this.segments) {
      const feeds: Record<string, ort.Tensor> = {};
      for (const spec of seg.compiled.inputs) {
        const v = env[spec.name] ?? this.model.weights.get(spec.name);
        if (!v) throw new SparsetuneError('BAD_FEED', `segmented step: no value for input '${spec.name}'`);
        feeds[spec.name] = tensorOf(v);
      }
      const fetches: Record<string, ort.Tensor | null> = {};
      for (const r of seg.resident) fetches[r.name] = tensorOf(placed.get(r.name)!);
      for (const a of seg.allocated) fetches[a] = null;
      let out: ort.InferenceSession.ReturnType;
      // onnxruntime starts the run on a later tick: the arena must not grow (detaching these views) until it is done.
      this.arena.frozen = true;
      try {
        out = await seg.compiled.session.run(feeds, fetches);
      } catch (e) {
        throw new SparsetuneError('RUNTIME', `onnxruntime failed: ${(e as Error).message}`, { cause: e });
      } finally {
        this.arena.frozen = false;
      }
      for (const r of seg.resident) env[r.name] = placed.get(r.name)!;
      for (const a of seg.allocated) {
        const t = out[a];
        env[a] = { dtype: FROM_ORT[t.type], shape: [...t.dims], data: t.data as never };
      }
      for (const site of seg.cuts) {
        const y = env[cutName(site.name)] as InArena;
        const x = env[tapName(this.marks.tapOf(site.name))] as InArena;
        opts.onSite(site, x.off, y.off, rows);
      }
    }
    const get = (name: string): HostTensor<'f32'> => {
      const v = env[this.parts.outputs.get(name)!];
      return 'off' in v ? { dtype: 'f32', shape: v.shape, data: this.arena.f32(v.off, n(v.shape)).slice() } : (v as HostTensor<'f32'>);
    };
    const next: KvCache = { k: [], v: [], length: cache.length + S };
    cache.k.forEach((_, l) => {
      next.k.push(get(`present_k_${l}`));
      next.v.push(get(`present_v_${l}`));
    });
    return { logits: get('logits'), cache: next };
  }
}
