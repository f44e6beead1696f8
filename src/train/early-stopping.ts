/**
 * Early stopping on held-out loss: stop once `patience` evaluations in a row failed to
 * beat the best loss so far by more than `minDelta`. Its state goes into checkpoints so a
 * resumed run stops where the uninterrupted one would have.
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';

export const earlyStoppingSchema = z.object({
  patience: z.number().int().positive(),
  minDelta: z.number().nonnegative().default(0),
});
export type EarlyStoppingConfig = z.infer<typeof earlyStoppingSchema>;

export interface EarlyStoppingState {
  best: number | null;
  bestStep: number | null;
  bad: number;
}

export class EarlyStopping {
  readonly cfg: EarlyStoppingConfig;
  private best: number | null = null;
  private bestStep: number | null = null;
  private bad = 0;

  constructor(cfg: z.input<typeof earlyStoppingSchema>) {
    const parsed = earlyStoppingSchema.safeParse(cfg);
    if (!parsed.success) throw new SparsetuneError('BAD_CONFIG', `early stopping: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    this.cfg = parsed.data;
  }

  /** Record an evaluation; returns a stop reason when patience ran out, else null. */
  update(step: number, loss: number): string | null {
    if (this.best === null || loss < this.best - this.cfg.minDelta) {
      this.best = loss;
      this.bestStep = step;
      this.bad = 0;
      return null;
    }
    this.bad++;
    if (this.bad >= this.cfg.patience) {
      return `early stopping: eval loss did not improve on ${this.best.toFixed(4)} (step ${this.bestStep}) for ${this.bad} evaluation(s)`;
    }
    return null;
  }

  get bestLoss(): number | null {
    return this.best;
  }

  state(): EarlyStoppingState {
    return { best: this.best, bestStep: this.bestStep, bad: this.bad };
  }

  loadState(s: EarlyStoppingState): void {
    this.best = s.best;
    this.bestStep = s.bestStep;
    this.bad = s.bad;
  }
}
