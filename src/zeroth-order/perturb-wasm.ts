/**
 * The passes of PerturbationKernel with the member rules in WebAssembly (member-scan.ts), used
 * for the hash generator without exactRestore. Per chunk: the members and their z are listed,
 * wasm applies the pass's rule to its copy of the chunk, the chunk is copied back, and the
 * side table's listed elements then get their own rule, computed in JS from their values before
 * the pass exactly as the JS loops of perturb.ts do, so both paths give the same bits (tested).
 */
import { hashKeys, hashNormalAt } from './hash-normal.js';
import { SWEEP_MINUS, SWEEP_RESTORE_MINUS, SWEEP_RESTORE_PLUS, type MemberScanner } from './member-scan.js';
import type { PerturbSetup, SweepMode } from './perturb.js';
import { clampMagnitude, type SideTable } from './side-table.js';

/** What the passes need from the kernel. */
export interface PassContext {
  readonly setup: PerturbSetup;
  readonly side: SideTable;
  readonly scanner: MemberScanner;
  /** New values of the current chunk's listed elements (chunk-sized). */
  readonly fixups: Float32Array;
  threshold(t: number): number;
  /** Takes chunk off .. off+len−1 of tensor t into the scanner and lists its members; returns their count. */
  collect(t: number, off: number, len: number): number;
  /** Notes the side-table size of a finished pass +. */
  recordPeak(entries: number): void;
}

/** Pass + (see PerturbationKernel.plus). */
export function plusInWasm(ctx: PassContext, seed: number): void {
  const { tensors, eps, chunk } = ctx.setup;
  const { side, scanner } = ctx;
  side.reset();
  let sideLength = 0;
  for (let t = 0; t < tensors.length; t++) {
    const data = tensors[t].data;
    const h = ctx.threshold(t);
    const safe = h * (1 - 2 ** -18); // see plus()
    const [kMul, kAdd] = hashKeys(seed, t);
    side.starts[t] = sideLength;
    for (let off = 0; off < data.length; off += chunk) {
      const len = Math.min(chunk, data.length - off);
      const count = ctx.collect(t, off, len);
      scanner.normals(count, off, kMul, kAdd);
      const found = scanner.applyPlus(count, eps, h, safe);
      scanner.copyOut(data, off, len);
      if (found === 0) continue;
      side.reserve(sideLength + found);
      const indices = side.indices;
      for (let l = 0; l < found; l++) indices[sideLength++] = off + scanner.listed[l];
    }
  }
  side.length = sideLength;
  side.starts[tensors.length] = sideLength;
  ctx.recordPeak(sideLength);
}

/** Pass − or a restore (see PerturbationKernel.sweep). */
export function sweepInWasm(ctx: PassContext, seed: number, mode: SweepMode): void {
  const { tensors, eps, chunk } = ctx.setup;
  const { side, scanner, fixups } = ctx;
  const { indices, starts } = side;
  const rule = mode === 'minus' ? SWEEP_MINUS : mode === 'restoreMinus' ? SWEEP_RESTORE_MINUS : SWEEP_RESTORE_PLUS;
  for (let t = 0; t < tensors.length; t++) {
    const data = tensors[t].data;
    const h = ctx.threshold(t);
    const [kMul, kAdd] = hashKeys(seed, t);
    const km = kMul | 0;
    const ka = kAdd | 0;
    let p = starts[t];
    const end = starts[t + 1];
    for (let off = 0; off < data.length; off += chunk) {
      const len = Math.min(chunk, data.length - off);
      const count = ctx.collect(t, off, len);
      scanner.normals(count, off, kMul, kAdd);
      // The listed elements of this chunk, from their values before the pass (see sweep()).
      const first = p;
      for (; p < end && indices[p] < off + len; p++) {
        const i = indices[p];
        const d = eps * hashNormalAt(i, km, ka);
        const cur = data[i];
        if (rule === SWEEP_MINUS) fixups[p - first] = Math.fround(cur - d) - d;
        else fixups[p - first] = clampMagnitude(Math.fround(rule === SWEEP_RESTORE_MINUS ? cur + d : cur - d), h);
      }
      scanner.applySweep(count, eps, rule);
      scanner.copyOut(data, off, len);
      for (let e = first; e < p; e++) data[indices[e]] = fixups[e - first];
    }
  }
}

/** The update, after a restore from − when `restoreFirst` (see PerturbationKernel.updatePass). */
export function updateInWasm(ctx: PassContext, seeds: readonly number[], grads: readonly number[], lr: number, wd: number, restoreFirst: boolean): void {
  const { tensors, eps, chunk } = ctx.setup;
  const { side, scanner, fixups } = ctx;
  const { indices, starts } = side;
  const n = seeds.length;
  const invN = 1 / n;
  const g = Float64Array.from(grads);
  const kMuls = new Int32Array(n);
  const kAdds = new Int32Array(n);
  const acc = scanner.acc;
  const z = scanner.z;
  for (let t = 0; t < tensors.length; t++) {
    const data = tensors[t].data;
    const h = ctx.threshold(t);
    const wdT = tensors[t].decay === false ? 0 : wd;
    for (let k = 0; k < n; k++) [kMuls[k], kAdds[k]] = hashKeys(seeds[k], t);
    let p = restoreFirst ? starts[t] : 0;
    const end = restoreFirst ? starts[t + 1] : 0;
    for (let off = 0; off < data.length; off += chunk) {
      const len = Math.min(chunk, data.length - off);
      const count = ctx.collect(t, off, len);
      // Σ_k g_k·z_k in sample order (wasm forms it itself for one sample); z ends as the last sample's.
      for (let k = 0; k < n; k++) {
        scanner.normals(count, off, kMuls[k], kAdds[k]);
        if (n === 1) break;
        const gk = g[k];
        if (k === 0) for (let q = 0; q < count; q++) acc[q] = 0 + gk * z[q];
        else for (let q = 0; q < count; q++) acc[q] += gk * z[q];
      }
      const first = p;
      for (; p < end && indices[p] < off + len; p++) {
        const i = indices[p];
        let sum = 0;
        let zLast = 0;
        for (let k = 0; k < n; k++) {
          zLast = hashNormalAt(i, kMuls[k], kAdds[k]);
          sum += g[k] * zLast;
        }
        const base = clampMagnitude(Math.fround(data[i] + eps * zLast), h);
        fixups[p - first] = base - lr * (sum * invN + wdT * base);
      }
      scanner.applyUpdate(count, eps, lr, wdT, invN, restoreFirst, g[0], n > 1);
      scanner.copyOut(data, off, len);
      for (let e = first; e < p; e++) data[indices[e]] = fixups[e - first];
    }
  }
}
