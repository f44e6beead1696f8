/**
 * A causal language model: HF config + JS-owned weights + tokenizer, and the graphs that
 * run it (training loss, logits, prefill/decode with a KV cache). Weights are fed by
 * reference on every run, so adapters and hot swaps can change them in place.
 */
import { SparsetuneError } from '../errors.js';
import { Graph, type Value } from '../engine/ir.js';
import { crossEntropy, linear } from '../engine/nn.js';
import { chunkedLinearCrossEntropy } from '../engine/loss.js';
import { gemm, reshape } from '../engine/ops/index.js';
import { defaultRuntime, type CompiledGraph, type Runtime } from '../engine/runtime.js';
import { isNoiseInput } from '../engine/noise.js';
import type { ResolveOptions } from '../io/hub.js';
import { loadModel, type GenerationDefaults, type LoadedModel } from '../io/model-dir.js';
import type { ModelConfig } from '../io/config.js';
import type { Tokenizer } from '../io/tokenizer.js';
import type { Batch } from '../io/datasets.js';
import type { HostTensor } from '../tensor.js';
import { mulDims } from '../engine/shapes.js';
import type { Architecture, BuildContext, ForwardInputs, ForwardResult } from './arch.js';
import type { LinearSite, ModelHooks } from './hooks.js';
import { causalMask, rangePositions, stepMask, stepPositions } from './masks.js';
import { planWeights } from './param-shapes.js';
import { architectureOf } from './registry.js';
import { lowerWeights, loweredBytes, lowPrecisionLinear, type LowPrecisionOptions, type LowPrecisionWeight, type WeightsDtype } from './low-precision.js';

export interface BuiltGraph {
  graph: Graph;
  kind: 'train' | 'infer';
  ids: Value;
  positions: Value;
  mask: Value;
  /** Shifted labels (int64, -100 = ignore); train graphs only. */
  targets?: Value;
  /** Mean cross-entropy over counted targets; train graphs only. */
  loss?: Value;
  past?: { k: Value; v: Value }[];
  result: ForwardResult;
}

/** Options of `CausalLM.build`. */
export interface BuildOptions {
  /**
   * Train graphs: compute the LM loss with the chunked LM head + cross-entropy when the LM
   * head is a plain linear (default true; env SPARSETUNE_CHUNKED_CE=0 turns it off).
   */
  chunkedLoss?: boolean;
}

/** The LM head's input, weight and logits when no hook changed it. */
interface LmHeadUse {
  x?: Value;
  w?: Value;
  logits?: Value;
}

export interface KvCache {
  k: HostTensor<'f32'>[];
  v: HostTensor<'f32'>[];
  /** Number of cached positions. */
  length: number;
}

export class CausalLM {
  readonly arch: Architecture;
  private siteList: LinearSite[];
  private dtype: WeightsDtype = 'f32';
  /** Lowered linear weights by site name (empty in f32). */
  private lowp = new Map<string, LowPrecisionWeight>();
  private lowpOpts: LowPrecisionOptions = {};
  /** Weight names whose f32 values were released by `setWeightsDtype`. */
  private released = new Set<string>();

  constructor(
    readonly config: ModelConfig,
    /** HF parameter name -> f32 tensor; shared by reference with every graph run. */
    readonly weights: Map<string, HostTensor<'f32'>>,
    readonly tokenizer: Tokenizer | null,
    readonly generation: GenerationDefaults,
    /** Where the model came from (a directory or hub id), recorded in adapters. */
    readonly source: string,
    readonly runtime: Runtime = defaultRuntime(),
  ) {
    this.arch = architectureOf(config);
    this.arch.normalizeWeights?.(weights as Map<string, unknown>, config);
    // The same check a load from disk runs on the headers: names, float dtype, exact shapes.
    planWeights(config, [...weights].map(([name, t]) => ({ name, dtype: String(t.dtype).toUpperCase(), shape: t.shape })), source, 'the weights');
    this.siteList = this.arch.sites(config);
  }

  /**
   * Load a HF model directory or a hub id (cached, or downloaded unless offline;
   * `progressCallback` reports the download). `weightsDtype` other than f32 stores the
   * linear weights in lower precision right after loading (`setWeightsDtype`).
   */
  static async load(ref: string, opts: { runtime?: Runtime; weightsDtype?: WeightsDtype } & LowPrecisionOptions & ResolveOptions = {}): Promise<CausalLM> {
    const { runtime, weightsDtype, blockSize, accuracyLevel, ...resolve } = opts;
    const model = CausalLM.fromLoaded(await loadModel(ref, { planWeights, ...resolve }), runtime);
    if (weightsDtype && weightsDtype !== 'f32') model.setWeightsDtype(weightsDtype, { blockSize, accuracyLevel });
    return model;
  }

  /** How the linear weights are stored: 'f32' (default) unless `setWeightsDtype` lowered them. */
  get weightsDtype(): WeightsDtype {
    return this.dtype;
  }

  /** Bytes of weights the model holds: the f32 tensors plus the lowered ones (codes, scales, halves). */
  get weightBytes(): number {
    let n = loweredBytes(this.lowp);
    for (const w of this.weights.values()) n += w.data.byteLength;
    return n;
  }

  /**
   * Store every Linear weight (attention, MLP, LM head) as f16, int8 or int4 (see
   * models/low-precision.ts) for inference, and release their f32 values: memory drops to
   * about 0.5x / 0.28x / 0.16x for those weights. Irreversible; call it before running the
   * model (graphs compiled before are dropped). Adapters that must be fused go in first
   * (fuse, then lower); adapters running unfused (hooks) stay f32. Training, merging and
   * in-place patching need f32 weights and refuse a lowered model.
   */
  setWeightsDtype(dtype: WeightsDtype, opts: LowPrecisionOptions = {}): void {
    if (dtype === this.dtype) return;
    if (this.dtype !== 'f32') throw new SparsetuneError('BAD_ARGUMENT', `the weights are already stored as ${this.dtype}; load the model again for ${dtype}`);
    const { lowered, released } = lowerWeights(this.siteList, this.weights, dtype as Exclude<WeightsDtype, 'f32'>, { ...opts, tiedHead: this.config.tieWordEmbeddings });
    this.lowp = lowered;
    this.lowpOpts = opts;
    for (const name of released) {
      this.weights.delete(name);
      this.released.add(name);
    }
    this.dtype = dtype;
    this.inferCache = new WeakMap();
    this.lossCache = new WeakMap();
  }

  /** Throw unless the weights are f32 (what training, merging and in-place patching need). */
  requireF32(what: string): void {
    if (this.dtype !== 'f32') {
      throw new SparsetuneError('BAD_ARGUMENT', `${what} needs the f32 weights, but this model stores its linear weights as ${this.dtype}; load it without --weights-dtype (weightsDtype 'f32')`);
    }
  }

  static fromLoaded(m: LoadedModel, runtime?: Runtime): CausalLM {
    return new CausalLM(m.config, m.weights, m.tokenizer, m.generation, m.dir, runtime);
  }

  /** Every Linear site, in a stable order (blocks first, then lm_head). */
  sites(): LinearSite[] {
    return this.siteList;
  }

  get vocabSize(): number {
    return this.config.vocabSize;
  }

  get eosIds(): number[] {
    const fromGen = this.generation.eosTokenId ?? [];
    const fromCfg = this.config.eosTokenId === undefined ? [] : ([] as number[]).concat(this.config.eosTokenId);
    const fromTok = this.tokenizer && this.tokenizer.eosId !== undefined && this.tokenizer.eosId !== null ? [this.tokenizer.eosId] : [];
    return [...new Set([...fromGen, ...fromCfg, ...fromTok])];
  }

  /**
   * Build a forward graph. `train`: inputs ids/targets/positions and a causal mask, with a
   * `loss` value; `infer`: also cached keys/values in, present keys/values out.
   * Nothing is marked as output: callers choose (`graph.output(...)`).
   */
  build(kind: 'train' | 'infer', hooks: ModelHooks = {}, opts: BuildOptions = {}): BuiltGraph {
    const g = new Graph(`${this.config.modelType}-${kind}`);
    const ids = g.input('input_ids', 'i64', ['batch', 'seq']);
    const positions = g.input('position_ids', 'i64', ['batch', 'seq']);
    const mask = kind === 'train' ? g.input('attention_mask', 'f32', [1, 1, 'seq', 'seq']) : g.input('attention_mask', 'f32', ['batch', 1, 'seq', 'total']);
    const { layers, kvHeads, headDim } = this.arch.kvShape(this.config);
    const past =
      kind === 'infer'
        ? Array.from({ length: layers }, (_, l) => ({
            k: g.input(`past_k_${l}`, 'f32', ['batch', kvHeads, 'past', headDim]),
            v: g.input(`past_v_${l}`, 'f32', ['batch', kvHeads, 'past', headDim]),
          }))
        : undefined;
    const head: LmHeadUse = {};
    const ctx = this.context(g, hooks, head);
    const result = this.arch.forward(ctx, this.config, { ids, positions, mask, past });
    const built: BuiltGraph = { graph: g, kind, ids, positions, mask, past, result };
    if (kind === 'train') {
      const targets = (built.targets = g.input('targets', 'i64', ['batch', 'seq']));
      const chunked = opts.chunkedLoss ?? process.env.SPARSETUNE_CHUNKED_CE !== '0';
      if (chunked && head.x && head.w && head.logits === result.logits) {
        // The plain LM head feeds the loss: compute it chunk by chunk (no [tokens x vocab] tensors).
        const [B, T, E] = head.x.shape;
        const rows = mulDims([B, T]);
        built.loss = chunkedLinearCrossEntropy(reshape(head.x, [rows, E]), head.w, reshape(targets, [rows]));
      } else built.loss = crossEntropy(result.logits, targets);
    }
    return built;
  }

  /**
   * Run the architecture's forward pass inside an existing graph (e.g. a second stochastic
   * pass for MoSA, or a frozen-base pass for a KL term, or an exported inference graph with a
   * KV cache). Base parameters are shared between passes of the same graph.
   */
  forward(g: Graph, inputs: ForwardInputs, hooks: ModelHooks = {}): ForwardResult {
    return this.arch.forward(this.context(g, hooks), this.config, inputs);
  }

  private rawParams = new WeakMap<Graph, Map<string, Value>>();

  /** The graph input holding base parameter `name` (declared once per graph). */
  paramInput(g: Graph, name: string): Value {
    let raw = this.rawParams.get(g);
    if (!raw) {
      raw = new Map();
      this.rawParams.set(g, raw);
    }
    let v = raw.get(name);
    if (!v) {
      const w = this.weights.get(name);
      if (!w && this.released.has(name)) this.requireF32(`reading parameter '${name}' in a graph`);
      if (!w) throw new SparsetuneError('BAD_CONFIG', `parameter '${name}' is not in the model weights`);
      v = g.input(name, 'f32', w.shape);
      raw.set(name, v);
    }
    return v;
  }

  private context(g: Graph, hooks: ModelHooks, head?: LmHeadUse): BuildContext {
    const params = new Map<string, Value>();
    const lowInputs = new Map<string, Value>();
    const probes = new Map<string, Value>();
    /** A lowered weight cannot go through a hook that transforms base parameters (masks, S2FT): check none does. */
    const checkUntransformed = (s: LinearSite) => {
      if (!hooks.param) return;
      let probe = probes.get(s.weightName);
      if (!probe) probes.set(s.weightName, (probe = g.input(`probe:${s.weightName}`, 'f32', [s.outFeatures, s.inFeatures])));
      if (hooks.param(s.weightName, probe, g) !== probe) this.requireF32(`a hook that transforms '${s.weightName}'`);
    };
    const param = (name: string): Value => {
      let v = params.get(name);
      if (!v) {
        v = this.paramInput(g, name);
        if (hooks.param) v = hooks.param(name, v, g);
        params.set(name, v);
      }
      return v;
    };
    const site = (s: LinearSite, x: Value): Value => {
      const base = (xx: Value): Value => {
        const low = this.lowp.get(s.name);
        if (low) {
          checkUntransformed(s);
          return lowPrecisionLinear(s, low, xx, s.biasName ? param(s.biasName) : undefined, g, lowInputs, this.lowpOpts);
        }
        const w = param(s.weightName);
        const b = s.biasName ? param(s.biasName) : undefined;
        if (s.layout === 'out_in') return linear(xx, w, b);
        // Conv1D: y = x W + b with W [in, out].
        const lead = xx.shape.slice(0, -1);
        const y2 = gemm(reshape(xx, [mulDims(lead), s.inFeatures]), w, { c: b });
        return reshape(y2, [...lead, s.outFeatures]);
      };
      if (!head || s.kind !== 'lm_head' || s.layout !== 'out_in' || s.biasName || x.rank !== 3 || this.lowp.has(s.name)) return hooks.linear ? hooks.linear(s, x, base, g) : base(x);
      // Record a plain LM head (no linear hook changed it) so the loss can be chunked.
      let seen: { x: Value; y: Value } | undefined;
      const recording = (xx: Value): Value => {
        const y = base(xx);
        seen = { x: xx, y };
        return y;
      };
      const y = hooks.linear ? hooks.linear(s, x, recording, g) : recording(x);
      if (seen && seen.x === x && seen.y === y) Object.assign(head, { x, w: param(s.weightName), logits: y });
      return y;
    };
    return { g, hooks, param, site };
  }

  /**
   * Feeds for a compiled graph: values in `extra` first (adapter parameters, data), then
   * base weights by name. A missing input is an error naming it.
   */
  feeds(compiled: CompiledGraph, extra: Record<string, HostTensor>): Record<string, HostTensor> {
    const out: Record<string, HostTensor> = {};
    for (const spec of compiled.inputs) {
      const t = extra[spec.name] ?? this.weights.get(spec.name) ?? this.lowFeed(spec.name);
      if (!t && isNoiseInput(spec.name)) {
        throw new SparsetuneError('BAD_FEED', `graph input '${spec.name}' is seeded dropout noise: the Trainer feeds it; to run a training graph yourself add noiseFeeds() (src/train/noise-feeds.ts), or build with the method's 'eval' hooks`);
      }
      if (!t) throw new SparsetuneError('BAD_FEED', `no value for graph input '${spec.name}'`);
      out[spec.name] = t;
    }
    return out;
  }

  private lowFeed(name: string): HostTensor | undefined {
    if (!name.startsWith('f16:')) return undefined;
    for (const lw of this.lowp.values()) if (lw.kind === 'f16' && lw.input === name) return lw.tensor;
    return undefined;
  }

  /** Data feeds of a training batch (shifted targets, positions, causal mask). */
  static trainFeeds(batch: Batch): Record<string, HostTensor> {
    const { batchSize: B, seqLen: T } = batch;
    const targets = new BigInt64Array(B * T);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) targets[b * T + t] = t + 1 < T ? batch.labels[b * T + t + 1] : -100n;
    }
    return {
      input_ids: { dtype: 'i64', shape: [B, T], data: batch.inputIds },
      targets: { dtype: 'i64', shape: [B, T], data: targets },
      position_ids: rangePositions(B, T),
      attention_mask: causalMask(T),
    };
  }

  private inferCache = new WeakMap<ModelHooks, Promise<CompiledGraph>>();
  private noHooks: ModelHooks = {};

  /** The compiled inference graph for a hook set (cached per hook object). */
  inferenceGraph(hooks: ModelHooks = this.noHooks): Promise<CompiledGraph> {
    let p = this.inferCache.get(hooks);
    if (!p) {
      const built = this.build('infer', hooks);
      built.graph.output('logits', built.result.logits);
      built.result.present.forEach((kv, l) => {
        built.graph.output(`present_k_${l}`, kv.k);
        built.graph.output(`present_v_${l}`, kv.v);
      });
      p = this.runtime.compile(built.graph);
      this.inferCache.set(hooks, p);
    }
    return p;
  }

  /** An empty KV cache for `batch` rows. */
  emptyCache(batch: number): KvCache {
    const { layers, kvHeads, headDim } = this.arch.kvShape(this.config);
    const empty = (): HostTensor<'f32'> => ({ dtype: 'f32', shape: [batch, kvHeads, 0, headDim], data: new Float32Array(0) });
    return { k: Array.from({ length: layers }, empty), v: Array.from({ length: layers }, empty), length: 0 };
  }

  /**
   * Run new tokens through the model with a KV cache. `ids` [B][S] are the new tokens,
   * `attention` [B][past + S] marks real (1) and padding (0) positions of the whole row.
   * Returns logits [B, S, V] and the extended cache.
   */
  async step(
    ids: readonly (readonly number[])[],
    attention: readonly (readonly number[])[],
    cache: KvCache,
    opts: { hooks?: ModelHooks; extraFeeds?: Record<string, HostTensor> } = {},
  ): Promise<{ logits: HostTensor<'f32'>; cache: KvCache }> {
    const B = ids.length;
    const S = ids[0]?.length ?? 0;
    if (B === 0 || S === 0) throw new SparsetuneError('BAD_ARGUMENT', 'step: need at least one row and one token');
    if (ids.some((r) => r.length !== S)) throw new SparsetuneError('BAD_ARGUMENT', 'step: all rows must have the same number of new tokens (left-pad them)');
    if (attention.length !== B || attention.some((r) => r.length !== cache.length + S)) {
      throw new SparsetuneError('BAD_ARGUMENT', `step: attention rows must cover past + new tokens (${cache.length + S})`);
    }
    for (const row of ids) for (const t of row) {
      if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) throw new SparsetuneError('BAD_ARGUMENT', `token id ${t} is outside the vocabulary (0..${this.vocabSize - 1})`);
    }
    const compiled = await this.inferenceGraph(opts.hooks);
    const data: Record<string, HostTensor> = {
      ...opts.extraFeeds,
      input_ids: { dtype: 'i64', shape: [B, S], data: BigInt64Array.from(ids.flat().map((v) => BigInt(v))) },
      position_ids: stepPositions(attention, S),
      attention_mask: stepMask(attention, cache.length, S),
    };
    cache.k.forEach((k, l) => {
      data[`past_k_${l}`] = k;
      data[`past_v_${l}`] = cache.v[l];
    });
    const out = await compiled.run(this.feeds(compiled, data));
    const next: KvCache = { k: [], v: [], length: cache.length + S };
    cache.k.forEach((_, l) => {
      next.k.push(out[`present_k_${l}`] as HostTensor<'f32'>);
      next.v.push(out[`present_v_${l}`] as HostTensor<'f32'>);
    });
    return { logits: out.logits as HostTensor<'f32'>, cache: next };
  }

  /** Logits of every position for a batch of sequences (right-aligned when `attention` marks left padding). */
  async logits(
    ids: readonly (readonly number[])[],
    opts: { attention?: readonly (readonly number[])[]; hooks?: ModelHooks; extraFeeds?: Record<string, HostTensor> } = {},
  ): Promise<HostTensor<'f32'>> {
    const attention = opts.attention ?? ids.map((r) => r.map(() => 1));
    return (await this.step(ids, attention, this.emptyCache(ids.length), opts)).logits;
  }

  private lossCache = new WeakMap<ModelHooks, Promise<CompiledGraph>>();

  /** Mean cross-entropy of a batch (labels shifted inside) and the number of counted tokens. */
  async loss(batch: Batch, opts: { hooks?: ModelHooks; extraFeeds?: Record<string, HostTensor> } = {}): Promise<{ loss: number; tokens: number }> {
    const hooks = opts.hooks ?? this.noHooks;
    let p = this.lossCache.get(hooks);
    if (!p) {
      const built = this.build('train', hooks);
      built.graph.output('loss', built.loss!);
      p = this.runtime.compile(built.graph);
      this.lossCache.set(hooks, p);
    }
    const compiled = await p;
    const data = { ...opts.extraFeeds, ...CausalLM.trainFeeds(batch) };
    const out = await compiled.run(this.feeds(compiled, data));
    const targets = data.targets.data as BigInt64Array;
    let tokens = 0;
    for (const t of targets) if (t !== -100n) tokens++;
    return { loss: Number(out.loss.data[0]), tokens };
  }
}
