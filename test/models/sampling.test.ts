import { describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { Sampler, StopStringMatcher } from '../../src/models/sampling.js';
import { normalAt, uniform01 } from '../../src/zeroth-order/rng.js';

function randomLogits(seed: number, n: number, scale = 3): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => scale * normalAt(seed, 0, i));
}

function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

function softmax(logits: number[], temperature = 1): number[] {
  const m = Math.max(...logits);
  const w = logits.map((l) => Math.exp((l - m) / temperature));
  const s = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / s);
}

/** Draws n tokens and checks every frequency against p within 5 binomial standard deviations. */
function expectFrequencies(sampler: Sampler, logits: Float32Array, p: number[], n: number): number[] {
  const counts = new Array(logits.length).fill(0);
  for (let i = 0; i < n; i++) counts[sampler.next(logits, [])]++;
  for (let k = 0; k < p.length; k++) {
    const sd = Math.sqrt(n * p[k] * (1 - p[k]));
    expect(Math.abs(counts[k] - n * p[k])).toBeLessThanOrEqual(5 * sd + 1e-9);
  }
  return counts;
}

describe('Sampler', () => {
  it('is greedy (argmax, first on ties) with temperature 0 or unset', () => {
    for (const opts of [{}, { temperature: 0 }, { temperature: 0, topP: 0.5, topK: 3 }]) {
      const sampler = new Sampler(opts);
      for (let s = 0; s < 20; s++) {
        const logits = randomLogits(s, 1000);
        expect(sampler.next(logits, [])).toBe(argmax(logits));
      }
      expect(sampler.next(new Float32Array([1, 5, 5, 2]), [])).toBe(1);
    }
  });

  it('with topK = 1 equals greedy at any temperature', () => {
    const sampler = new Sampler({ temperature: 1.5, topK: 1, seed: 3 });
    for (let s = 0; s < 50; s++) {
      const logits = randomLogits(100 + s, 5000);
      expect(sampler.next(logits, [])).toBe(argmax(logits));
    }
  });

  it('is reproducible with a seed and differs across seeds', () => {
    const run = (seed: number) => {
      const sampler = new Sampler({ temperature: 1, topK: 50, topP: 0.95, seed });
      return Array.from({ length: 200 }, (_, i) => sampler.next(randomLogits(i, 300, 1), [i % 7]));
    };
    expect(run(7)).toEqual(run(7));
    expect(run(7)).not.toEqual(run(8));
    expect(new Sampler({ temperature: 1 }).seed).toBeGreaterThanOrEqual(0);
  });

  it('draws with the softmax frequencies of a small vocabulary (binomial bounds), at T = 1 and T = 0.6', () => {
    const logits = new Float32Array([1, 0.5, 0, -0.5, -1, 2]);
    for (const temperature of [1, 0.6]) {
      const p = softmax(Array.from(logits), temperature);
      expectFrequencies(new Sampler({ temperature, seed: 11 }), logits, p, 20000);
    }
  });

  it('top-p keeps the nucleus and renormalizes it; the tail is never drawn', () => {
    const p = [0.5, 0.3, 0.15, 0.05];
    const logits = Float32Array.from(p, Math.log);
    // Mass before token 2 is 0.8 >= 0.75: tokens 2 and 3 are cut; tokens 0, 1 renormalize to 0.625 / 0.375.
    const counts = expectFrequencies(new Sampler({ temperature: 1, topP: 0.75, seed: 5 }), logits, [0.625, 0.375, 0, 0], 20000);
    expect(counts[2] + counts[3]).toBe(0);
    // topP below the top token's mass keeps exactly one token.
    const one = new Sampler({ temperature: 1, topP: 0.1, seed: 5 });
    for (let i = 0; i < 100; i++) expect(one.next(logits, [])).toBe(0);
    // Shuffled order and a large vocabulary with a long tail behave the same.
    const big = new Float32Array(10000).fill(-30);
    big.set([Math.log(0.3), Math.log(0.5)], 4000);
    big[9000] = Math.log(0.15);
    const nucleus = new Sampler({ temperature: 1, topP: 0.75, seed: 9 });
    for (let i = 0; i < 500; i++) expect([4000, 4001]).toContain(nucleus.next(big, []));
  });

  it('applies top-k before top-p, keeping ties with the k-th logit', () => {
    const logits = new Float32Array([3, 2, 2, 1, 0]);
    const sampler = new Sampler({ temperature: 1, topK: 2, seed: 1 });
    const seen = new Set<number>();
    for (let i = 0; i < 3000; i++) seen.add(sampler.next(logits, []));
    expect([...seen].sort()).toEqual([0, 1, 2]);
    const p = softmax([3, 2, 2]);
    expectFrequencies(new Sampler({ temperature: 1, topK: 2, seed: 2 }), logits, [...p, 0, 0], 20000);
    // top-k 3 then top-p 0.5: p over {0,1,2} is [0.576, 0.212, 0.212]; only token 0 survives.
    const both = new Sampler({ temperature: 1, topK: 3, topP: 0.5, seed: 3 });
    for (let i = 0; i < 200; i++) expect(both.next(logits, [])).toBe(0);
  });

  it('top-k selects exactly the set a full sort selects, on random logits', () => {
    for (let s = 0; s < 10; s++) {
      const logits = randomLogits(500 + s, 2000);
      const k = 1 + ((s * 37) % 30);
      const sorted = Array.from(logits).sort((a, b) => b - a);
      const allowed = Array.from(logits.keys()).filter((i) => logits[i] >= sorted[k - 1]);
      // A huge temperature makes the kept set nearly uniform: 40·k draws see every member.
      const sampler = new Sampler({ temperature: 1e6, topK: k, seed: s });
      const seen = new Set<number>();
      for (let i = 0; i < 40 * k; i++) seen.add(sampler.next(logits, []));
      expect([...seen].sort((a, b) => a - b)).toEqual(allowed);
    }
  });

  it('applies the repetition penalty the HF way: positive / p, negative * p, once per id', () => {
    const greedy = (logits: number[], prev: number[], p: number) => new Sampler({ repetitionPenalty: p }).next(new Float32Array(logits), prev);
    expect(greedy([2, 1.9], [], 1.5)).toBe(0);
    expect(greedy([2, 1.9], [0], 1.5)).toBe(1); // 2 / 1.5 = 1.33
    expect(greedy([2, 1.3], [0, 0, 0], 1.5)).toBe(0); // once: 1.33 > 1.3 (three times would be 0.59)
    expect(greedy([-1, -1.5], [0], 2)).toBe(1); // -1 * 2 = -2 < -1.5
    expect(greedy([1, 3], [1, 99, -1], 4)).toBe(0); // out-of-range ids are ignored
    // Sampling: the penalized token's frequency follows the penalized softmax.
    const logits = new Float32Array([1, 1, 1]);
    const p = softmax([1 / 2, 1, 1]);
    const sampler = new Sampler({ temperature: 1, repetitionPenalty: 2, seed: 4 });
    const counts = [0, 0, 0];
    const n = 20000;
    for (let i = 0; i < n; i++) counts[sampler.next(logits, [0])]++;
    for (let k = 0; k < 3; k++) expect(Math.abs(counts[k] - n * p[k])).toBeLessThan(5 * Math.sqrt(n * p[k] * (1 - p[k])));
  });

  it('uses uniform01(seed, 0, i) for draw i', () => {
    const logits = new Float32Array([0, 0]);
    const sampler = new Sampler({ temperature: 1, seed: 123 });
    for (let i = 0; i < 50; i++) expect(sampler.next(logits, [])).toBe(uniform01(123, 0, i) < 0.5 ? 0 : 1);
  });

  it('rejects bad options and NaN or empty logits', () => {
    for (const bad of [{ temperature: -1 }, { topK: 1.5 }, { topP: 0 }, { topP: 1.2 }, { repetitionPenalty: 0 }, { seed: -3 }, { temperature: NaN }]) {
      expect(() => new Sampler(bad as object)).toThrow(SparsetuneError);
    }
    // Wider option objects (generate options) are accepted; their extra keys are ignored.
    expect(() => new Sampler({ temperature: 1, maxNewTokens: 5, stop: ['x'], seed: undefined } as object)).not.toThrow();
    const sampler = new Sampler({ temperature: 1, seed: 1 });
    expect(() => sampler.next(new Float32Array([0, NaN]), [])).toThrow(/NaN/);
    expect(() => sampler.next(new Float32Array(0), [])).toThrow(/empty/);
    expect(() => sampler.next(new Float32Array([-Infinity, -Infinity]), [])).toThrow(/-Infinity/);
  });
});

describe('StopStringMatcher', () => {
  /** Reference: everything before the earliest occurrence of any stop string. */
  function expected(text: string, stops: string[]): { text: string; stopped: boolean } {
    let first = -1;
    for (const s of stops) {
      const at = text.indexOf(s);
      if (at !== -1 && (first === -1 || at < first)) first = at;
    }
    return first === -1 ? { text, stopped: false } : { text: text.slice(0, first), stopped: true };
  }

  function stream(matcher: StopStringMatcher, chunks: string[]): { text: string; stopped: boolean } {
    let text = '';
    let stopped = false;
    for (const chunk of chunks) {
      const r = matcher.push(chunk);
      text += r.emit;
      stopped = r.stopped;
    }
    return { text: text + matcher.flush(), stopped };
  }

  it('holds back partial matches across chunks and never emits the stop string', () => {
    const m = new StopStringMatcher(['##END']);
    expect(m.push('Hello #')).toEqual({ emit: 'Hello ', stopped: false });
    expect(m.push('#EN')).toEqual({ emit: '', stopped: false });
    expect(m.push('D and more')).toEqual({ emit: '', stopped: true });
    expect(m.push('later')).toEqual({ emit: '', stopped: true });
    expect(m.flush()).toBe('');
  });

  it('releases held text when the partial match breaks, and on flush', () => {
    const m = new StopStringMatcher(['##END']);
    expect(m.push('a##E')).toEqual({ emit: 'a', stopped: false });
    expect(m.push('x')).toEqual({ emit: '##Ex', stopped: false });
    expect(m.push('#')).toEqual({ emit: '', stopped: false });
    expect(m.flush()).toBe('#');
  });

  it('stops at the earliest of several (overlapping) stop strings', () => {
    const m = new StopStringMatcher(['abc', 'bc', '\n\n']);
    expect(m.push('xa')).toEqual({ emit: 'x', stopped: false });
    expect(m.push('bcz')).toEqual({ emit: '', stopped: true });
    expect(stream(new StopStringMatcher(['END', '\n\n']), ['one\n', '\ntwo END'])).toEqual({ text: 'one', stopped: true });
  });

  it('matches a reference on random texts split into random chunks', () => {
    const alphabet = 'ab#\n';
    const stops = ['a#b', '##', 'b\nb', 'aaaa'];
    for (let trial = 0; trial < 300; trial++) {
      const u = (i: number) => uniform01(trial, 1, i);
      const length = Math.floor(u(0) * 40);
      let text = '';
      for (let i = 0; i < length; i++) text += alphabet[Math.floor(u(1 + i) * alphabet.length)];
      const chunks: string[] = [];
      for (let at = 0, i = 100; at < text.length; i++) {
        const size = Math.floor(u(i) * 5);
        chunks.push(text.slice(at, at + size));
        at += size;
      }
      expect(stream(new StopStringMatcher(stops), chunks)).toEqual(expected(text, stops));
    }
  });

  it('passes text straight through with no stop strings, and rejects empty ones', () => {
    const m = new StopStringMatcher([]);
    expect(m.push('anything')).toEqual({ emit: 'anything', stopped: false });
    expect(() => new StopStringMatcher([''])).toThrow(SparsetuneError);
  });
});
