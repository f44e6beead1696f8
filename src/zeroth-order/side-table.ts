/** The per-sample side table of the perturbation passes (see perturb.ts for what it lists and why). */

/** Listed elements of one sample, sorted by (tensor, element) because pass + runs in order. */
export class SideTable {
  indices = new Uint32Array(0);
  /** Start values of the listed elements; only kept with `exactRestore`. */
  values: Float32Array | null;
  length = 0;
  readonly starts: Int32Array;

  constructor(tensorCount: number, keepValues: boolean) {
    this.starts = new Int32Array(tensorCount + 1);
    this.values = keepValues ? new Float32Array(0) : null;
  }

  reset(): void {
    this.length = 0;
    this.starts.fill(0);
  }

  get byteLength(): number {
    return this.indices.byteLength + (this.values?.byteLength ?? 0);
  }

  /** Grows the capacity (at least doubling) to hold `entries`, keeping the current entries. */
  reserve(entries: number): void {
    if (entries <= this.indices.length) return;
    const capacity = Math.max(1024, this.indices.length * 2, entries);
    const indices = new Uint32Array(capacity);
    indices.set(this.indices);
    this.indices = indices;
    if (this.values !== null) {
      const values = new Float32Array(capacity);
      values.set(this.values);
      this.values = values;
    }
  }
}

/**
 * A listed member restored without its stored value can round to just past the threshold;
 * pulling it back to ±h keeps it a member (a change within the restore's rounding error).
 */
export function clampMagnitude(v: number, h: number): number {
  return v > h ? h : v < -h ? -h : v;
}
