/**
 * MaskLLM: learnable N:M (semi-structured) sparsity. Every group of M consecutive input
 * weights of a targeted Linear chooses one of the C(M, N) N:M patterns; the choice is a
 * categorical distribution with trainable logits, learned end to end through a
 * Gumbel-softmax soft mask while the weights stay frozen. Evaluation and export use the
 * hard (arg-max) mask. See specs/maskllm.md.
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { Graph, Value } from '../engine/ir.js';
import { add, mul, stopGradient, sub, sumAll } from '../engine/ops/index.js';
import { loadDataset, type TokenizedExample } from '../io/datasets.js';
import { packBits } from '../merge/bits.js';
import { fingerprintWeights } from '../merge/fingerprint.js';
import { newAdapter, type Adapter } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { LinearSite, ModelHooks } from '../models/hooks.js';
import type { Method, Objective, StepContext, TrainableParam } from '../train/method.js';
import type { MethodRecipe } from '../train/recipe.js';
import { stepSeed } from '../train/trainer.js';
import type { HostTensor } from '../tensor.js';
import { initRng, normalInit, paramValue, parseMethodConfig, selectSites } from '../adapters/common.js';
import { argmaxCandidates, candidateTable, fillGumbel, hardMask, hardRowMask, lerp, softMask } from './maskllm-graph.js';
import { oneShotMasks } from './oneshot.js';
import { binomial, checkGroupable, fromRowView, magnitudeScores, nmCandidates, oneShotNM, toRowView } from './priors.js';

export const maskllmConfigSchema = z
  .object({
    n: z.number().int().positive().default(2),
    m: z.number().int().positive().max(8).default(4),
    /** Linear layers to sparsify (all attention and MLP projections by default; GPT-2 names included). */
    targetModules: z
      .union([z.array(z.string()).min(1), z.string()])
      .default(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'c_attn', 'c_proj', 'c_fc']),
    /** Std of the logits' normal init. */
    initStd: z.number().nonnegative().default(0.01),
    /**
     * One-shot mask the logits start from: 'sparsegpt' (OBS saliency from the input Hessian, the
     * official recipe's prior), 'activation' (alias 'wanda': |W|·||x||), 'magnitude' or 'none'.
     * The data-aware ones calibrate on `calibrationFile`, or else on the first training examples.
     */
    prior: z.enum(['sparsegpt', 'activation', 'wanda', 'magnitude', 'none']).default('sparsegpt'),
    /** The prior pattern gets +strength·std(logits) over patterns sharing one fewer position. */
    priorStrength: z.number().nonnegative().default(3),
    kappaStart: z.number().positive().default(100),
    kappaEnd: z.number().positive().default(500),
    tauStart: z.number().positive().default(4),
    tauEnd: z.number().positive().default(0.05),
    /** Weight of the fading reward for keeping large weights: -lambda·(1 - t/T)·sum ||W ⊙ M_soft||^2. */
    regLambda: z.number().nonnegative().default(1e-5),
    /** Text/JSONL file for the data-aware priors (read by createMethod; default: the training data). */
    calibrationFile: z.string().optional(),
    calibrationExamples: z.number().int().positive().default(32),
    calibrationSeqLen: z.number().int().min(2).default(128),
    seed: z.number().int().default(0),
  })
  .refine((c) => c.n < c.m, { message: 'n must be smaller than m (N:M keeps n of every m weights)', path: ['n'] });
export type MaskllmConfig = z.infer<typeof maskllmConfigSchema>;

/** One sparsified Linear: its site and its trainable logits [groups, C]. */
export interface MaskllmTensor {
  site: LinearSite;
  logits: TrainableParam;
  groups: number;
}

/** Names of the per-step scalar feeds of the training graph. */
export const MASKLLM_FEEDS = { kappa: 'maskllm.kappa', tau: 'maskllm.tau', regCoef: 'maskllm.reg_coef' } as const;
const KAPPA = MASKLLM_FEEDS.kappa;
const TAU = MASKLLM_FEEDS.tau;
const REG = MASKLLM_FEEDS.regCoef;
/** Name of a site's Gumbel-noise feed [groups, C]. */
export const maskllmNoiseName = (site: LinearSite): string => `maskllm.${site.name}.gumbel`;
const noiseName = maskllmNoiseName;

export class MaskllmMethod implements Method {
  readonly name = 'maskllm';
  readonly kind = 'mask' as const;
  readonly config: MaskllmConfig;
  readonly tensors: MaskllmTensor[];
  /** The C(M, N) candidate patterns, row-major [C, M]. */
  readonly candidates: Uint8Array;
  readonly numCandidates: number;
  private readonly byWeight: Map<string, MaskllmTensor>;
  private readonly noise: Float32Array[];
  /** Soft effective weights (weights detached) per training graph, for the regularizer. */
  private readonly softWeights = new WeakMap<Graph, Value[]>();
  private calibrated = false;

  constructor(
    readonly model: CausalLM,
    config: z.input<typeof maskllmConfigSchema> = {},
  ) {
    this.config = parseMethodConfig('maskllm', maskllmConfigSchema, config);
    const { n, m } = this.config;
    this.candidates = nmCandidates(n, m);
    this.numCandidates = binomial(m, n);
    this.tensors = selectSites(model, this.config.targetModules).map((site) => {
      checkGroupable(site, m);
      const groups = (site.outFeatures * site.inFeatures) / m;
      const logits: TrainableParam = { name: `maskllm.${site.name}.logits`, shape: [groups, this.numCandidates], data: new Float32Array(groups * this.numCandidates), decay: true };
      return { site, logits, groups };
    });
    this.byWeight = new Map(this.tensors.map((t) => [t.site.weightName, t]));
    this.noise = this.tensors.map((t) => new Float32Array(t.logits.data.length));
    // Data-aware priors start from magnitude until calibrate() (or the first training step) runs.
    if (this.config.prior === 'none') this.initLogits(null);
    else this.initLogits((t) => oneShotNM(magnitudeScores(this.weightOf(t), t.site), n, m));
  }

  /** Whether the prior needs calibration data (sparsegpt, activation / wanda). */
  get dataAwarePrior(): boolean {
    return this.config.prior === 'sparsegpt' || this.config.prior === 'activation' || this.config.prior === 'wanda';
  }

  private weightOf(t: MaskllmTensor): Float32Array {
    return this.model.weights.get(t.site.weightName)!.data;
  }

  /**
   * Reset the logits to N(0, initStd) (seeded) and add the prior: for each group and
   * candidate, (overlap - (N - 1))·std(logits of the layer)·strength, where overlap counts
   * the candidate's kept positions that the prior also keeps. For 2:4 this is the spec's
   * (overlap - 1); a constant shift per group changes neither softmax nor arg-max.
   */
  private initLogits(priorOf: ((t: MaskllmTensor) => Uint8Array) | null): void {
    const { n, m, initStd, priorStrength, seed } = this.config;
    const C = this.numCandidates;
    this.tensors.forEach((t, k) => {
      const rand = initRng(stepSeed(seed, k));
      const data = normalInit(t.logits.data.length, initStd, rand);
      if (priorOf && priorStrength > 0) {
        const prior = priorOf(t);
        let mean = 0;
        for (const v of data) mean += v;
        mean /= data.length;
        let sq = 0;
        for (const v of data) sq += (v - mean) ** 2;
        const bump = Math.sqrt(sq / data.length) * priorStrength;
        for (let gi = 0; gi < t.groups; gi++) {
          for (let c = 0; c < C; c++) {
            let overlap = 0;
            for (let j = 0; j < m; j++) overlap += this.candidates[c * m + j] & prior[gi * m + j];
            data[gi * C + c] += (overlap - (n - 1)) * bump;
          }
        }
      }
      t.logits.data.set(data);
    });
  }

  /**
   * Data-aware prior: measure the calibration statistics (input norms for Wanda, input Gram
   * matrices for SparseGPT) on `examples` and re-initialize the logits toward the resulting
   * one-shot N:M mask.
   */
  async calibrate(examples: readonly TokenizedExample[], opts: { batchSize?: number } = {}): Promise<void> {
    if (!this.dataAwarePrior) throw new SparsetuneError('BAD_CONFIG', `maskllm: prior '${this.config.prior}' takes no calibration data`);
    const { n, m } = this.config;
    const kind = this.config.prior === 'sparsegpt' ? 'sparsegpt' : 'wanda';
    const masks = await oneShotMasks(this.model, { kind, n, m, calibration: examples, batchSize: opts.batchSize }, this.tensors.map((t) => t.site));
    const byName = new Map(masks.map((x) => [x.site.name, toRowView(Float32Array.from(x.mask), x.site)]));
    this.initLogits((t) => Uint8Array.from(byName.get(t.site.name)!));
    this.calibrated = true;
  }

  params(): TrainableParam[] {
    return this.tensors.map((t) => t.logits);
  }

  hooks(mode: 'train' | 'eval'): ModelHooks {
    return {
      param: (name, value, g) => {
        const t = this.byWeight.get(name);
        if (!t) return value;
        const logits = paramValue(g, t.logits);
        const table = candidateTable(g, this.candidates, this.config.m);
        if (mode === 'eval') return mul(value, hardMask(logits, table, t.site));
        const gumbel = inputOnce(g, noiseName(t.site), [t.groups, this.numCandidates]);
        const mSoft = softMask(logits, gumbel, inputOnce(g, KAPPA, []), inputOnce(g, TAU, []), table, t.site);
        // The regularizer sees detached weights: its gradient reaches the mask only.
        const list = this.softWeights.get(g) ?? [];
        list.push(mul(stopGradient(value), mSoft));
        this.softWeights.set(g, list);
        return mul(value, mSoft);
      },
    };
  }

  /** LM loss minus the fading magnitude reward on the soft effective weights (weights are not trained). */
  objective(model: CausalLM, hooks: ModelHooks): Objective {
    const built = model.build('train', hooks);
    const g = built.graph;
    const soft = this.softWeights.get(g) ?? [];
    const lm = built.loss!;
    if (soft.length === 0) return { graph: g, loss: lm, metrics: { lm_loss: lm } };
    const sq = soft.map((w) => sumAll(mul(w, w))).reduce((a, b) => add(a, b));
    const coef = inputOnce(g, REG, []);
    return { graph: g, loss: sub(lm, mul(coef, sq)), metrics: { lm_loss: lm, kept_sq_norm: sq } };
  }

  /** Calibrates a data-aware prior on the first `calibrationExamples` training examples unless calibrate() ran. */
  async beforeTraining(_ctx?: StepContext, train?: readonly TokenizedExample[]): Promise<void> {
    if (!this.dataAwarePrior || this.calibrated) return;
    if (!train?.length) {
      throw new SparsetuneError('BAD_CONFIG', `maskllm: prior '${this.config.prior}' needs calibration data; set calibrationFile or call calibrate(examples) before training`);
    }
    await this.calibrate(train.slice(0, this.config.calibrationExamples));
  }

  /** Temperature, scale and regularizer weight of this step, and fresh Gumbel noise. */
  stepFeeds(ctx: StepContext): Record<string, HostTensor> {
    const { kappaStart, kappaEnd, tauStart, tauEnd, regLambda } = this.config;
    const p = ctx.totalSteps > 1 ? ctx.step / (ctx.totalSteps - 1) : 1;
    const feeds: Record<string, HostTensor> = {
      [KAPPA]: scalarF32(lerp(kappaStart, kappaEnd, p)),
      [TAU]: scalarF32(lerp(tauStart, tauEnd, p)),
      [REG]: scalarF32(regLambda * (1 - ctx.step / Math.max(1, ctx.totalSteps))),
    };
    this.tensors.forEach((t, k) => {
      fillGumbel(this.noise[k], initRng(stepSeed(ctx.seed, k)));
      feeds[noiseName(t.site)] = { dtype: 'f32', shape: [t.groups, this.numCandidates], data: this.noise[k] };
    });
    return feeds;
  }

  /** Evaluation uses the hard mask, which needs only the logits. */
  evalFeeds(): Record<string, HostTensor> {
    return {};
  }

  /** The hard 0/1 mask of a tensor in the weight's own layout. */
  hardMaskOf(t: MaskllmTensor): Uint8Array {
    const winners = argmaxCandidates(t.logits.data, this.numCandidates);
    return fromRowView(hardRowMask(winners, this.candidates, this.config.m), t.site);
  }

  export(model: CausalLM): Adapter {
    const a = newAdapter({ method: this.name, kind: 'mask', base: { model: model.source, fingerprint: fingerprintWeights(model.weights) }, config: { ...this.config } });
    let kept = 0;
    let total = 0;
    for (const t of this.tensors) {
      const mask = this.hardMaskOf(t);
      for (const v of mask) kept += v;
      total += mask.length;
      a.masks.set(t.site.weightName, { bits: packBits(mask), numel: mask.length });
    }
    a.meta.metrics = { sparsity: 1 - kept / total, maskedTensors: this.tensors.length, pattern: `${this.config.n}:${this.config.m}` };
    return a;
  }
}

/** An f32 graph input declared once per graph (hooks may run for several passes). */
function inputOnce(g: Graph, name: string, shape: number[]): Value {
  return g.inputs.find((v) => v.name === name) ?? g.input(name, 'f32', shape);
}

function scalarF32(v: number): HostTensor<'f32'> {
  return { dtype: 'f32', shape: [], data: Float32Array.of(v) };
}

/**
 * The reference trainer settings (the defaults of `train --method maskllm`): only the logits
 * train, with weight decay 0.1 on them (their params have `decay: true`).
 */
export const recipe: MethodRecipe = {
  source:
    'MaskLLM (Fang et al., NeurIPS 2024), official code NVlabs/MaskLLM: scripts/learnable_sparsity/llama2_7b_mask_only_tp8_c4.sh ' +
    '(Adam betas 0.9/0.95, eps 1e-5, weight decay 0.1, clip 1.0, lr 5e-5 x lr-mult 10 = 5e-4 on the logits, cosine to 5e-6 x 10, 2,000 iterations, no warmup; SparseGPT prior, strength 3)',
  lr: 5e-4,
  steps: 300,
  batchSize: 8,
  optimizer: { type: 'adamw', beta1: 0.9, beta2: 0.95, eps: 1e-5, weightDecay: 0.1 },
  schedule: { type: 'cosine', warmupSteps: 0, minRatio: 0.1 },
  clipNorm: 1,
  notes:
    'the reference runs 2,000 iterations of 256 x 4,096 tokens; here 300 steps of 8 x 128 tokens, with kappa, tau, the regularizer and the lr all scheduled relative to the step count',
};

export const configSchema = maskllmConfigSchema;
export const summary = 'MaskLLM: learnable N:M (default 2:4) masks via Gumbel-softmax over candidate patterns, weights frozen';

/** Registry entry; with a data-aware prior and a calibrationFile, calibrates before returning. */
export async function createMethod(model: CausalLM, config: unknown): Promise<MaskllmMethod> {
  const method = new MaskllmMethod(model, config as never);
  const { calibrationFile, calibrationExamples, calibrationSeqLen } = method.config;
  if (method.dataAwarePrior && calibrationFile) {
    if (!model.tokenizer) throw new SparsetuneError('BAD_CONFIG', 'maskllm: a data-aware prior needs a tokenizer to read calibrationFile');
    const examples = await loadDataset(calibrationFile, model.tokenizer, { seqLen: calibrationSeqLen });
    await method.calibrate(examples.slice(0, calibrationExamples));
  }
  return method;
}
