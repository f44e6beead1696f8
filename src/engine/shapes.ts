/** Shape arithmetic shared by the ops' shape rules and gradient rules. */
import type { Dim, Shape } from './ir.js';

export function dimEq(a: Dim, b: Dim): boolean {
  return a === b;
}

/** Multiply dims: static sizes multiply, symbols form a canonical product like `batch*seq`. */
export function mulDims(dims: Dim[]): Dim {
  let n = 1;
  const syms: string[] = [];
  for (const d of dims) {
    if (typeof d === 'number') n *= d;
    else syms.push(...d.split('*'));
  }
  if (syms.length === 0) return n;
  syms.sort();
  if (n !== 1) syms.unshift(String(n));
  return syms.join('*');
}

/** NumPy-style broadcast of two shapes; throws a plain Error the op wraps with context. */
export function broadcastShapes(a: Shape, b: Shape): Shape {
  const rank = Math.max(a.length, b.length);
  const out: Shape = [];
  for (let i = 0; i < rank; i++) {
    const da = i < rank - a.length ? 1 : a[i - (rank - a.length)];
    const db = i < rank - b.length ? 1 : b[i - (rank - b.length)];
    if (dimEq(da, db)) out.push(da);
    else if (da === 1) out.push(db);
    else if (db === 1) out.push(da);
    else throw new Error(`cannot broadcast [${a.join(', ')}] with [${b.join(', ')}] (axis ${i}: ${da} vs ${db})`);
  }
  return out;
}

export function normAxis(axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw new Error(`axis ${axis} out of range for rank ${rank}`);
  return a;
}

export function isStatic(s: Shape): s is number[] {
  return s.every((d) => typeof d === 'number');
}
