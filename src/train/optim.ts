/** Optimizers (AdamW with decoupled weight decay, SGD with momentum) and LR schedules. */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { TrainableParam } from './method.js';

export const optimizerSchema = z.object({
  type: z.enum(['adamw', 'sgd']).default('adamw'),
  lr: z.number().positive().finite().default(1e-3),
  weightDecay: z.number().nonnegative().default(0),
  beta1: z.number().min(0).max(1).default(0.9),
  beta2: z.number().min(0).max(1).default(0.999),
  eps: z.number().positive().default(1e-8),
  momentum: z.number().min(0).max(1).default(0.9),
});
export type OptimizerConfig = z.infer<typeof optimizerSchema>;

export interface OptimizerState {
  /** Optimizer steps taken (calls of `step`). */
  t: number;
  /**
   * Per slot: the updates that param received. A param without a gradient in a step (an
   * unused MoSA module, a dead GS-LoRA group) is not updated and its count does not move,
   * so Adam's bias correction 1 − beta^steps[k] is that param's own. Absent in checkpoints
   * written before per-param counts: every slot then counts `t`.
   */
  steps: number[];
  m: Float32Array[];
  v: Float32Array[];
}

/**
 * Updates params in place from gradients; one state slot per param. AdamW keeps a step
 * count per param (PyTorch's `state['step']` is per parameter too), so a param that skips
 * steps gets the bias correction of the updates it actually had.
 */
export class Optimizer {
  private t = 0;
  private steps: number[];
  private m: Float32Array[];
  private v: Float32Array[];

  constructor(
    readonly params: TrainableParam[],
    readonly cfg: OptimizerConfig,
  ) {
    this.steps = params.map(() => 0);
    this.m = params.map((p) => new Float32Array(p.data.length));
    this.v = cfg.type === 'adamw' ? params.map((p) => new Float32Array(p.data.length)) : [];
  }

  /** One update with learning rate `lr`; grads[i] belongs to params[i] (null = no gradient this step). */
  step(grads: (Float32Array | null)[], lr: number): void {
    this.t++;
    const { beta1, beta2, eps, weightDecay, momentum } = this.cfg;
    this.params.forEach((p, k) => {
      const g = grads[k];
      if (!g) return;
      const n = ++this.steps[k];
      const w = p.data;
      const plr = lr * (p.lrScale ?? 1);
      const wd = p.decay ? weightDecay : 0;
      const m = this.m[k];
      if (this.cfg.type === 'adamw') adamwUpdate(w, g, m, this.v[k], { lr: plr, beta1, beta2, eps, weightDecay: wd, bc1: 1 - beta1 ** n, bc2: 1 - beta2 ** n });
      else {
        for (let i = 0; i < w.length; i++) {
          m[i] = momentum * m[i] + g[i] + wd * w[i];
          w[i] -= plr * m[i];
        }
      }
    });
  }

  /** The live state (not copies). */
  state(): OptimizerState {
    return { t: this.t, steps: this.steps, m: this.m, v: this.v };
  }

  loadState(s: OptimizerState): void {
    if (s.steps.length !== this.params.length) {
      throw new SparsetuneError('SHAPE_MISMATCH', `optimizer state has step counts for ${s.steps.length} params, this optimizer has ${this.params.length}`);
    }
    this.t = s.t;
    this.steps = [...s.steps];
    s.m.forEach((a, k) => this.m[k].set(a));
    s.v.forEach((a, k) => this.v[k].set(a));
  }
}

/**
 * One AdamW update in place: m, v moments, then w -= lr * (m/bc1 / (sqrt(v/bc2) + eps) + wd * w),
 * with the per-step constants folded out of the loop (one division and one square root per
 * element; no allocation).
 */
export function adamwUpdate(
  w: Float32Array,
  g: Float32Array,
  m: Float32Array,
  v: Float32Array,
  c: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; bc1: number; bc2: number },
): void {
  const { beta1, beta2, eps } = c;
  const c1 = 1 - beta1;
  const c2 = 1 - beta2;
  const step = c.lr / c.bc1;
  const ib2 = 1 / c.bc2;
  const keep = 1 - c.lr * c.weightDecay;
  const n = w.length;
  for (let i = 0; i < n; i++) {
    const gi = g[i];
    const mi = beta1 * m[i] + c1 * gi;
    const vi = beta2 * v[i] + c2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = keep * w[i] - (step * mi) / (Math.sqrt(vi * ib2) + eps);
  }
}

export const scheduleSchema = z.object({
  type: z.enum(['constant', 'linear', 'cosine']).default('cosine'),
  warmupSteps: z.number().int().nonnegative().default(0),
  /** Final LR as a fraction of the peak (cosine/linear). */
  minRatio: z.number().min(0).max(1).default(0.1),
});
export type ScheduleConfig = z.infer<typeof scheduleSchema>;

/** LR at `step` (0-based) of `total` steps: linear warmup, then constant, linear or cosine decay. */
export function scheduledLr(peak: number, step: number, total: number, s: ScheduleConfig): number {
  if (s.warmupSteps > 0 && step < s.warmupSteps) return (peak * (step + 1)) / s.warmupSteps;
  if (s.type === 'constant') return peak;
  const span = Math.max(1, total - s.warmupSteps);
  const p = Math.min(1, (step - s.warmupSteps) / span);
  const min = peak * s.minRatio;
  if (s.type === 'linear') return peak - (peak - min) * p;
  return min + 0.5 * (peak - min) * (1 + Math.cos(Math.PI * p));
}

/** Scale gradients so their global L2 norm is at most maxNorm; returns the norm before clipping. */
export function clipGlobalNorm(grads: (Float32Array | null)[], maxNorm: number): number {
  let sq = 0;
  for (const g of grads) if (g) for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
  const norm = Math.sqrt(sq);
  if (maxNorm > 0 && norm > maxNorm) {
    const s = maxNorm / (norm + 1e-6);
    for (const g of grads) if (g) for (let i = 0; i < g.length; i++) g[i] *= s;
  }
  return norm;
}
