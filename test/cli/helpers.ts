/** Run the real `sparsetune` binary in a child process (TypeScript via tsx). */
import { execFile } from 'node:child_process';
import { join } from 'node:path';

export const ROOT = join(import.meta.dirname, '..', '..');
export const BIN = join(ROOT, 'bin', 'sparsetune.js');
export const SHARED_DATA = join(ROOT, '..', 'shared', 'data');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `node bin/sparsetune.js ...args`; never rejects (the exit code is part of the result). */
export function cli(args: string[], opts: { env?: Record<string, string> } = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [BIN, ...args],
      { cwd: ROOT, env: { ...process.env, SPARSETUNE_THREADS: '1', ...opts.env }, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** Parse the single JSON line a command printed. */
export function json<T = Record<string, unknown>>(r: CliResult): T {
  if (r.code !== 0) throw new Error(`command failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** Largest |a - b| over two [positions][vocab] logit tables. */
export function worst(a: number[][], b: number[][]): number {
  let w = 0;
  a.forEach((row, t) => row.forEach((x, v) => (w = Math.max(w, Math.abs(x - b[t][v])))));
  return w;
}
