/**
 * Global top-K selection by |current − reference| across many tensors, without ever
 * materializing the list of deltas (LT-SFT step 3).
 *
 * A non-negative float32's bit pattern, read as an unsigned integer, orders exactly like
 * the float. So the K-th largest |delta| is found by a two-level radix select: one pass
 * histograms the high 16 bits (65,536 bins), a second pass histograms the low 16 bits
 * inside the one high bin that holds the K-th value. That pins the threshold's exact bit
 * pattern; a third pass marks every entry above it and, at the boundary, either every entry
 * equal to it (`ties: 'all'`, the official LT-SFT rule `|delta| >= threshold`; entries that
 * did not change at all are never picked then, so a zero threshold cannot unmask everything)
 * or just enough of them (first in tensor order, then index order) that exactly K are picked
 * (`ties: 'first'`). Memory: two fixed histograms and one small scratch chunk, whatever the
 * model size.
 */
import { SparsetuneError } from '../errors.js';

/** One tensor taking part in the selection. */
export interface SelectionTensor {
  name: string;
  /** Current values (e.g. after full fine-tuning). */
  current: Float32Array;
  /** Reference values of the same length (e.g. the pretrained weights). */
  reference: Float32Array;
  /**
   * 0/1 per entry. Entries already 1 are not candidates (masks accumulate over
   * iterations); newly picked entries are set to 1.
   */
  mask: Uint8Array;
}

export interface SelectionResult {
  /** Entries newly set in the masks: k with ties 'first'; with ties 'all', k plus the extra ties (fewer if fewer changed). */
  picked: number;
  /** The K-th largest |delta| among the candidates (the selection threshold). */
  threshold: number;
  /** Entries picked that equal the threshold. */
  tiesPicked: number;
  /** Candidates seen (entries not yet in a mask, with a finite delta). */
  candidates: number;
}

const CHUNK = 1 << 16;
const NAN_BITS = 0x7f800000; // keys above this are NaN: never candidates

/**
 * Calls `visit(key, index)` for every candidate entry of `t`, where `key` is the uint32
 * bit pattern of float32(|current − reference|). Deltas are computed chunk by chunk into a
 * reused scratch buffer so the bit patterns can be read through a Uint32Array view.
 */
function forEachKey(t: SelectionTensor, scratch: Float32Array, bits: Uint32Array, visit: (key: number, index: number) => void): void {
  const n = t.current.length;
  for (let start = 0; start < n; start += CHUNK) {
    const end = Math.min(n, start + CHUNK);
    for (let i = start; i < end; i++) scratch[i - start] = Math.abs(t.current[i] - t.reference[i]);
    for (let i = start; i < end; i++) {
      if (t.mask[i]) continue;
      const key = bits[i - start];
      if (key > NAN_BITS) continue;
      visit(key, i);
    }
  }
}

/** How entries equal to the k-th largest |delta| are treated (see the module comment). */
export type TieRule = 'all' | 'first';

/**
 * Pick the `k` not-yet-masked entries with the largest |current − reference| across all
 * `tensors` (globally, not per tensor) and set them in the tensors' masks; `ties` decides
 * the boundary (default 'first': exactly k). Throws BAD_ARGUMENT when fewer than `k`
 * candidates exist.
 */
export function selectTopKByDelta(tensors: readonly SelectionTensor[], k: number, opts: { ties?: TieRule } = {}): SelectionResult {
  const allTies = (opts.ties ?? 'first') === 'all';
  if (!Number.isInteger(k) || k < 0) throw new SparsetuneError('BAD_ARGUMENT', `selectTopKByDelta: k must be a non-negative integer, got ${k}`);
  for (const t of tensors) {
    if (t.current.length !== t.reference.length || t.mask.length !== t.current.length) {
      throw new SparsetuneError('SHAPE_MISMATCH', `selectTopKByDelta: tensor '${t.name}' has ${t.current.length} values, ${t.reference.length} reference values and ${t.mask.length} mask entries; they must match`);
    }
  }
  const scratch = new Float32Array(CHUNK);
  const bits = new Uint32Array(scratch.buffer);

  // Pass 1: histogram of the high 16 bits. Float64 counts: exact past 2^32 entries.
  const high = new Float64Array(1 << 16);
  let candidates = 0;
  for (const t of tensors) {
    forEachKey(t, scratch, bits, (key) => {
      high[key >>> 16]++;
      candidates++;
    });
  }
  if (k > candidates) {
    throw new SparsetuneError('BAD_ARGUMENT', `cannot select ${k} entries: only ${candidates} maskable entries are still unselected; lower the density/count of the sparse fine-tuning`);
  }
  if (k === 0) return { picked: 0, threshold: Infinity, tiesPicked: 0, candidates };

  // The high bin holding the k-th largest key, and how many keys lie in higher bins.
  let hiBin = 0xffff;
  let above = 0;
  while (above + high[hiBin] < k) above += high[hiBin--];

  // Pass 2: histogram of the low 16 bits inside that bin.
  const low = new Float64Array(1 << 16);
  for (const t of tensors) {
    forEachKey(t, scratch, bits, (key) => {
      if (key >>> 16 === hiBin) low[key & 0xffff]++;
    });
  }
  let loBin = 0xffff;
  while (above + low[loBin] < k) above += low[loBin--];
  const thresholdKey = ((hiBin << 16) | loBin) >>> 0;
  // `above` now counts keys strictly greater than the threshold; the rest come from ties.
  // Rule 'all' takes every tie, but never an unchanged entry (key 0).
  const tiesNeeded = allTies ? (thresholdKey === 0 ? 0 : Infinity) : k - above;

  // Pass 3: mark.
  let ties = 0;
  let picked = 0;
  for (const t of tensors) {
    const mask = t.mask;
    forEachKey(t, scratch, bits, (key, i) => {
      if (key > thresholdKey || (key === thresholdKey && ties < tiesNeeded)) {
        if (key === thresholdKey) ties++;
        mask[i] = 1;
        picked++;
      }
    });
  }
  bits[0] = thresholdKey;
  return { picked, threshold: scratch[0], tiesPicked: ties, candidates };
}
