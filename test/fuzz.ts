/**
 * Seeded mutators for the fuzz tests: hostile JSON values, random edits at random paths of
 * a JSON document, and byte-level corruption (flips, truncation, splices). Every choice
 * comes from the generator passed in, so a failing case is reproduced by its seed.
 */
import { expect } from 'vitest';
import { SparsetuneError } from '../src/errors.js';
import type { Rng } from '../src/util/random.js';

/** Values a hostile or corrupt file may hold where a well-formed one holds something else. */
export const HOSTILE_VALUES: readonly unknown[] = [
  0, -1, 1, 2, 7, 0.5, -0.5, 1e9, 1e12, 2 ** 31, 2 ** 32, 2 ** 40, 2 ** 53, 1e308, -1e308,
  '', 'x', 'F32', 'I32', 'BOOL', 'BPE', 'llama', 'x'.repeat(5000), '../../etc/passwd', '\u0000',
  null, true, false, [], {}, [1, 2, 3], [-1], [2 ** 40, 2 ** 40], { a: 1 }, { __proto__: null }, [[[]]],
];

export function pick<T>(rand: Rng, xs: readonly T[]): T {
  return xs[Math.floor(rand() * xs.length)];
}

type Json = unknown;

/** Paths to every value of a JSON document (object keys and array indices). */
function paths(doc: Json, prefix: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(prefix);
  if (Array.isArray(doc)) {
    // Long arrays (vocabularies, merges) are sampled, not walked.
    const n = doc.length;
    for (let k = 0; k < Math.min(n, 8); k++) paths(doc[k], [...prefix, k], out);
    if (n > 8) paths(doc[n - 1], [...prefix, n - 1], out);
  } else if (doc && typeof doc === 'object') {
    const keys = Object.keys(doc);
    for (const k of keys.slice(0, 64)) paths((doc as Record<string, Json>)[k], [...prefix, k], out);
  }
  return out;
}

function getAt(doc: Json, p: (string | number)[]): Json {
  let cur = doc;
  for (const k of p) cur = (cur as Record<string | number, Json>)[k];
  return cur;
}

/**
 * One random edit of a JSON document (a deep copy is edited and returned): replace a value
 * with a hostile one, delete a key or element, add a key, or change a number slightly.
 */
export function mutateJson(rand: Rng, doc: Json): Json {
  const copy: Json = structuredClone(doc);
  const all = paths(copy);
  const p = pick(rand, all);
  if (p.length === 0) return rand() < 0.5 ? pick(rand, HOSTILE_VALUES) : copy;
  const parent = getAt(copy, p.slice(0, -1)) as Record<string | number, Json>;
  const key = p[p.length - 1];
  const op = rand();
  if (op < 0.5) parent[key] = structuredClone(pick(rand, HOSTILE_VALUES));
  else if (op < 0.65) {
    if (Array.isArray(parent)) parent.splice(Number(key), 1);
    else delete parent[key];
  } else if (op < 0.75 && !Array.isArray(parent)) parent[`${String(key)}_x`] = structuredClone(pick(rand, HOSTILE_VALUES));
  else {
    const v = parent[key];
    if (typeof v === 'number') parent[key] = pick(rand, [v + 1, v - 1, v * 2, -v, v * 1e6, Math.floor(v / 2)]);
    else parent[key] = structuredClone(pick(rand, HOSTILE_VALUES));
  }
  return copy;
}

/** `n` random edits. */
export function mutateJsonTimes(rand: Rng, doc: Json, n: number): Json {
  let d = doc;
  for (let k = 0; k < n; k++) d = mutateJson(rand, d);
  return d;
}

/**
 * Byte-level corruption: a few random bytes replaced (mostly within the first `hot` bytes,
 * e.g. a header), a truncation, or a duplicated span.
 */
export function mutateBytes(rand: Rng, src: Uint8Array, hot = src.length): Uint8Array {
  const op = rand();
  if (op < 0.15) return src.slice(0, Math.floor(rand() * src.length));
  if (op < 0.25) {
    const a = Math.floor(rand() * src.length);
    const b = Math.min(src.length, a + 1 + Math.floor(rand() * 64));
    const out = new Uint8Array(src.length + (b - a));
    out.set(src.subarray(0, b));
    out.set(src.subarray(a), b);
    return out;
  }
  const out = Uint8Array.from(src);
  const span = rand() < 0.8 ? Math.min(hot, out.length) : out.length;
  const flips = 1 + Math.floor(rand() * 4);
  for (let k = 0; k < flips; k++) {
    const i = Math.floor(rand() * span);
    out[i] = rand() < 0.5 ? out[i] ^ (1 << Math.floor(rand() * 8)) : Math.floor(rand() * 256);
  }
  return out;
}

/**
 * Run `fn` and classify the outcome: resolved (`ok`), or rejected with a SparsetuneError
 * whose message is a real sentence. Anything else (TypeError, RangeError, a bare Error,
 * a message too short to help) fails the test with the case label.
 */
export async function okOrSparsetuneError<T>(label: string, fn: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: SparsetuneError }> {
  try {
    return { ok: true, value: await fn() };
  } catch (err) {
    if (!(err instanceof SparsetuneError)) {
      expect.fail(`${label}: threw ${(err as Error)?.name}: ${(err as Error)?.message}\n${(err as Error)?.stack}`);
    }
    expect(err.message.length, `${label}: message too short: ${err.message}`).toBeGreaterThan(20);
    return { ok: false, error: err };
  }
}
