/**
 * Preallocated gradient outputs of a compiled objective. onnxruntime writes each
 * micro-batch's gradients straight into these JS-owned buffers (bound fetches), so a step
 * allocates and copies no gradient memory; micro-batches after the first land in a scratch
 * set and are added into the first.
 */
import type { HostTensor } from '../tensor.js';

export class GradBuffers {
  private readonly main: Record<string, HostTensor<'f32'>> = {};
  private scratch: Record<string, HostTensor<'f32'>> | null = null;

  /** `outputs`: gradient output name -> shape. */
  constructor(private readonly outputs: ReadonlyMap<string, number[]>) {
    for (const [name, shape] of outputs) this.main[name] = alloc(shape);
  }

  /** The buffers micro-batch `micro` writes into. */
  bind(micro: number): Record<string, HostTensor<'f32'>> {
    if (micro === 0) return this.main;
    if (!this.scratch) {
      this.scratch = {};
      for (const [name, shape] of this.outputs) this.scratch[name] = alloc(shape);
    }
    return this.scratch;
  }

  /** Add the scratch set (a later micro-batch) into the accumulated gradients. */
  accumulate(): void {
    if (!this.scratch) return;
    for (const name of this.outputs.keys()) {
      const acc = this.main[name].data;
      const g = this.scratch[name].data;
      for (let i = 0; i < acc.length; i++) acc[i] += g[i];
    }
  }

  /** The accumulated gradient of an output (valid until the next step's first run). */
  get(name: string): Float32Array {
    return this.main[name].data;
  }
}

function alloc(shape: number[]): HostTensor<'f32'> {
  return { dtype: 'f32', shape: [...shape], data: new Float32Array(shape.reduce((a, b) => a * b, 1)) };
}
