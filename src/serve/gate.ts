/**
 * An async mutex around the shared base weights. Model runs read the weights from a
 * worker thread while JavaScript awaits them, so a swap that patched the buffers during
 * that await would corrupt the run. Every model step and every swap goes through the gate:
 * swaps therefore happen only between steps.
 */
export class WeightGate {
  private tail: Promise<void> = Promise.resolve();
  private held = false;
  /** Number of exclusive sections entered so far (an "epoch" counter, for tests and metrics). */
  epoch = 0;

  /** True while some section holds the gate. */
  get busy(): boolean {
    return this.held;
  }

  /** Run `fn` alone: no other gated section runs until it settles. */
  run<T>(fn: () => Promise<T> | T): Promise<T> {
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise<void>((r) => (release = r));
    return prev.then(async () => {
      this.held = true;
      this.epoch++;
      try {
        return await fn();
      } finally {
        this.held = false;
        release();
      }
    });
  }
}
