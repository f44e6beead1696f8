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
import { Runtime, type CompiledGraph } from '../../engine/runtime.js';
import type { SessionCacheStats } from '../../engine/session-cache.js';
import ort from 'onnxruntime-node';
import type { Dim, Value } from '../../engine/ir.js';
import { add } from '../../engine/ops/index.js';
import type { CausalLM } from '../../models/causal-lm.js';
import { buildDecodeGraph } from '../../models/decode.js';
import type { SlotRun } from '../slots.js';
import type { LinearSite, ModelHooks } from '../../models/hooks.js';
import type { HostTensor } from '../../tensor.js';
import type { Arena } from './arena.js';
import { CutMarks, cutName, partition, tapName, type Partition } from './partition.js';
import { SparsetuneError } from '../../errors.js';

/**
 * Called after the segment computing site `site`'s output: the site's input x [rows, in]
 * and output y [rows, out] are f32 arrays at byte offsets `x` and `y` of the arena's memory
 * (rows = batch x new tokens, or batch for the LM head, which sees each row's last
 * position only); edit y in place.
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
  /** The KV cache outputs, bound to the cache buffers (updated in place). */
  allocated: string[];
}

/** An env value held in the arena: its byte offset and shape. */
interface InArena {
  off: number;
  shape: number[];
}

const ORT_TYPE: Record<string, ort.Tensor.Type> = { f32: 'float32', i64: 'int64', i32: 'int32', f64: 'float64', bool: 'bool', u8: 'uint8' };

export class SegmentedModel {
  /** The arena block that holds one step's resident values (grown as needed, reused). */
  private block = { off: 0, bytes: 0 };
  private logits = new Float32Array(0);
  /** Segment runs repeated because the arena's memory was replaced while they were pending (runSegment). */
  viewRetries = 0;

  private constructor(
    readonly model: CausalLM,
    private readonly arena: Arena,
    private readonly parts: Partition,
    private readonly marks: CutMarks,
    private readonly segments: CompiledSegment[],
    /** Hidden size (embedding width). */
    readonly hidden: number,
    private readonly runtime: Runtime,
  ) {}

  /** The segments' own session cache (created counts rebuilds: it should equal the segment count). */
  get sessionStats(): SessionCacheStats {
    return this.runtime.sessionStats;
  }

  /**
   * Build and compile the segments of `model`'s decode graph (models/decode.ts) cut at the
   * sites `cutSite` picks (default all); one-time, a few seconds for deep models.
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
    const graph = buildDecodeGraph(model, hooks);
    if (!hidden) throw new SparsetuneError('BAD_CONFIG', `${model.config.modelType}: the architecture has no embedding hook, so it cannot run unfused adapters`);
    const parts = partition(graph, marks);
    const { layers } = model.arch.kvShape(model.config);
    const kvNames = new Set(Array.from({ length: layers }, (_, l) => [`present_k_${l}`, `present_v_${l}`]).flat().map((n) => parts.outputs.get(n)!));
    // The segments' own runtime (same options as the model's), sized so that its session
    // cache keeps all of them: one step runs every segment, so evicting any would rebuild it
    // every step. The count depends on the model's depth only.
    const rt = model.runtime;
    const runtime = new Runtime({ threads: rt.threads || undefined, executionProviders: rt.executionProviders, cpuMemArena: rt.cpuMemArena, spinning: rt.spinning, maxSessions: parts.segments.length + 1 });
    const segments: CompiledSegment[] = [];
    for (const seg of parts.segments) {
      const resident: ResidentOut[] = [];
      const allocated: string[] = [];
      for (const o of seg.graph.outputs) {
        if (kvNames.has(o.name)) allocated.push(o.name);
        else if (o.value.dtype === 'f32') resident.push({ name: o.name, shape: o.value.shape });
        else throw new SparsetuneError('BAD_GRAPH', `segmented decode graph: output ${o.name} is ${o.value.dtype}, expected f32`);
      }
      segments.push({ compiled: await runtime.compile(seg.graph), cuts: seg.cuts.map((n) => sites.get(n)!), resident, allocated });
    }
    return new SegmentedModel(model, arena, parts, marks, segments, hidden, runtime);
  }

  /** Number of onnxruntime runs per step. */
  get segmentCount(): number {
    return this.segments.length;
  }

  /**
   * Run `run` (slots.ts) through the segments, calling `onSite` at every cut site; the KV
   * cache views in `run.present` are updated in place. Returns the logits [rows, vocab] of
   * each row's last position, valid until the next step. The caller holds the weight gate.
   */
  async step(run: SlotRun, opts: SegmentedStepOptions): Promise<HostTensor<'f32'>> {
    const B = run.rows;
    const S = run.seq;
    const V = this.model.vocabSize;
    const capacity = (run.feeds.past_k_0 as HostTensor<'f32'>).shape[2];
    const dims: Record<string, number> = { batch: B, seq: S, capacity };
    const resolve = (d: Dim): number => (typeof d === 'number' ? d : d.split('*').reduce((p, f) => p * (/^\d+$/.test(f) ? Number(f) : (dims[f] ?? NaN)), 1));
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
      ...run.feeds,
      embed_delta: { dtype: 'f32', shape: [B, S, this.hidden], data: opts.embedDelta ?? new Float32Array(B * S * this.hidden) },
    };
    const n = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
    const tensorOf = (v: HostTensor | InArena): ort.Tensor =>
      'off' in v ? new ort.Tensor('float32', this.arena.f32(v.off, n(v.shape)), v.shape) : new ort.Tensor(ORT_TYPE[v.dtype], v.data as never, v.shape);
    const presentOf = new Map<string, HostTensor<'f32'>>();
    for (const [name, t] of Object.entries(run.present)) presentOf.set(this.parts.outputs.get(name)!, t);
    for (const seg of this.segments) {
      await this.runSegment(seg, () => {
        const feeds: Record<string, ort.Tensor> = {};
        for (const spec of seg.compiled.inputs) {
          const v = env[spec.name] ?? this.model.weights.get(spec.name);
          if (!v) throw new SparsetuneError('BAD_FEED', `segmented step: no value for input '${spec.name}'`);
          feeds[spec.name] = tensorOf(v);
        }
        const fetches: Record<string, ort.Tensor> = {};
        for (const r of seg.resident) fetches[r.name] = tensorOf(placed.get(r.name)!);
        for (const a of seg.allocated) fetches[a] = tensorOf(presentOf.get(a)!); // the cache, in place
        return { feeds, fetches };
      });
      for (const r of seg.resident) env[r.name] = placed.get(r.name)!;
      for (const site of seg.cuts) {
        const y = env[cutName(site.name)] as InArena;
        const x = env[tapName(this.marks.tapOf(site.name))] as InArena;
        opts.onSite(site, x.off, y.off, n(x.shape) / site.inFeatures);
      }
    }
    const out = env[this.parts.outputs.get('logits')!] as InArena;
    if (this.logits.length < B * V) this.logits = new Float32Array(B * V);
    const logits = this.logits.subarray(0, B * V);
    logits.set(this.arena.f32(out.off, B * V));
    return { dtype: 'f32', shape: [B, V], data: logits };
  }

  /**
   * Run one segment on views made by `views`. onnxruntime starts the run on a later tick, so
   * the arena must not grow (detaching the views) until it is done: it is frozen meanwhile.
   * Should the memory still be replaced in that gap, onnxruntime refuses the detached views
   * before running anything ("not enough space: expected N, got 0"); the segment is then run
   * again on fresh views (counted in `viewRetries`) rather than failing the batch.
   */
  private async runSegment(seg: CompiledSegment, views: () => { feeds: Record<string, ort.Tensor>; fetches: Record<string, ort.Tensor> }): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const { feeds, fetches } = views();
      this.arena.frozen = true;
      try {
        await seg.compiled.session.run(feeds, fetches);
        return;
      } catch (e) {
        const detached = [...Object.values(feeds), ...Object.values(fetches)].filter((t) => t.size > 0 && (t.data as ArrayBufferView).byteLength === 0);
        if (detached.length && attempt === 0) {
          this.viewRetries++;
          continue;
        }
        const why = detached.length ? ` (the arena's memory was replaced while the run was pending; detached: ${detached.map((t) => `[${t.dims.join(',')}]`).join(' ')})` : '';
        throw new SparsetuneError('RUNTIME', `onnxruntime failed: ${(e as Error).message}${why}`, { cause: e });
      } finally {
        this.arena.frozen = false;
      }
    }
  }

}
