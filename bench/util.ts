/** Small helpers the benchmark scripts share: timing, results files, tables. */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomicSync } from '../src/io/atomic.js';

export const RESULTS = join(import.meta.dirname, 'results');

/** Median wall time in ms of `fn` over `reps` runs after `warmup` runs. */
export async function timeIt(fn: () => Promise<unknown> | unknown, reps = 5, warmup = 1): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    ts.push(performance.now() - t0);
  }
  ts.sort((a, b) => a - b);
  return ts[Math.floor(ts.length / 2)];
}

/** Write bench/results/<name>.json and .md atomically. */
export function writeResults(name: string, json: unknown, markdown: string): void {
  mkdirSync(RESULTS, { recursive: true });
  for (const [ext, body] of [['json', JSON.stringify(json, null, 2)], ['md', markdown]] as const) {
    const file = join(RESULTS, `${name}.${ext}`);
    writeFileAtomicSync(file, body);
  }
  console.log(markdown);
}

export function table(headers: string[], rows: (string | number)[][]): string {
  const fmt = (v: string | number) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : v);
  return [`| ${headers.join(' | ')} |`, `| ${headers.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.map(fmt).join(' | ')} |`)].join('\n');
}

export function peakRssMb(): number {
  return process.resourceUsage().maxRSS / 1024;
}
