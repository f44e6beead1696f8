/**
 * R-AMT's gradient dropout: the task gradient on each score is kept or dropped at random,
 * more likely dropped when it disagrees with the knowledge (KL-to-base) gradient.
 *
 *   P = ½·(1 + sign(g_a)·(g_a + g_b)/(|g_a| + |g_b| + 1e-8)),  U ~ U(0, 1) per element
 *   g = ((1 − λ) + λ·1[P > U])·g_a
 *
 * Same sign: P ≈ 1, always kept. Opposite sign: kept with probability |g_a|/(|g_a| + |g_b|).
 * g_b only sets the probability; it never enters the update.
 */
import { SparsetuneError } from '../errors.js';

export interface DropoutStats {
  /** Elements whose task gradient survived the draw. */
  kept: number;
  /** Elements whose task gradient was dropped. */
  dropped: number;
}

/** Keep probability P of one element (see the module comment). */
export function keepProbability(ga: number, gb: number): number {
  return 0.5 * (1 + (Math.sign(ga) * (ga + gb)) / (Math.abs(ga) + Math.abs(gb) + 1e-8));
}

/**
 * Apply gradient dropout to `ga` in place with strength `lambda` in [0, 1] (1 = drop fully,
 * 0 = plain AMT), drawing one fresh uniform per element from `rand`.
 */
export function gradientDropout(ga: Float32Array, gb: Float32Array, lambda: number, rand: () => number): DropoutStats {
  if (ga.length !== gb.length) throw new SparsetuneError('SHAPE_MISMATCH', `gradient dropout: task gradient has ${ga.length} elements, knowledge gradient ${gb.length}`);
  if (!(lambda >= 0 && lambda <= 1)) throw new SparsetuneError('BAD_ARGUMENT', `gradient dropout: lambda must be in [0, 1], got ${lambda}`);
  const stats: DropoutStats = { kept: 0, dropped: 0 };
  for (let i = 0; i < ga.length; i++) {
    const a = ga[i];
    const keep = keepProbability(a, gb[i]) > rand();
    if (keep) stats.kept++;
    else {
      stats.dropped++;
      ga[i] = (1 - lambda) * a;
    }
  }
  return stats;
}
