/**
 * PAT's mask schedule (specs/pat.md): the soft channel mask is sigmoid(T(t)·m) + b(t) with
 *   T(t) = 1 / (1 − log(max(1, t)) / log(T_end) + 1e-6)   (rises towards "hard" at T_end)
 *   b(t) = max(0.5 − t / T_end, 0)                          (reaches 0 at T_end / 2)
 * From floor(0.8·T_end) on, the temperature stays at its value there and the LM loss no
 * longer moves the mask logits (the reference detaches them from the forward pass; its
 * mask regularizer keeps acting, which is what lands the kept count on d_keep).
 * At inference the mask is hard: round(sigmoid(1e6·m)), taken here as 1[m >= 0].
 */

/** Schedule values for one step. */
export interface MaskSchedule {
  temperature: number;
  bias: number;
  /** True once the LM loss no longer trains the mask logits. */
  frozen: boolean;
}

/** T(t) of the spec; `tEnd` below 2 is treated as 2 (log(1) = 0 would divide by zero). */
export function maskTemperature(step: number, tEnd: number): number {
  const end = Math.max(2, tEnd);
  return 1 / (1 - Math.log(Math.max(1, step)) / Math.log(end) + 1e-6);
}

/** b(t) of the spec. */
export function maskBias(step: number, tEnd: number): number {
  return Math.max(0.5 - step / Math.max(2, tEnd), 0);
}

/** The schedule at 0-based `step`. */
export function maskSchedule(step: number, tEnd: number, freezeFraction: number): MaskSchedule {
  const freezeAt = Math.floor(Math.max(2, tEnd) * freezeFraction);
  const frozen = step >= freezeAt;
  return { temperature: maskTemperature(frozen ? freezeAt : step, tEnd), bias: maskBias(step, tEnd), frozen };
}

/**
 * The hard inference mask: 1 where m >= 0, else 0. The tie m == 0 counts as kept, the same
 * rule as the straight-through count in the mask loss, so an untrained mask (m = 0) keeps
 * every channel and the model equals the base. (Rounding sigmoid(0) = 0.5 half-to-even,
 * as torch.round does, would instead drop every untouched channel.)
 */
export function hardMask(m: Float32Array): Float32Array {
  return Float32Array.from(m, (v) => (v >= 0 ? 1 : 0));
}

/** Indices of the kept channels (m >= 0), ascending. */
export function keptChannels(m: Float32Array): Int32Array {
  const out: number[] = [];
  m.forEach((v, i) => {
    if (v >= 0) out.push(i);
  });
  return Int32Array.from(out);
}
