/**
 * Output conventions of the CLI: results on stdout (JSON for machine-readable commands),
 * status and progress on stderr, so `sparsetune eval ... > result.json` stays clean.
 */
import type { DownloadProgress } from '../io/hub.js';
import { ProgressBar } from '../train/progress.js';

/** A status line on stderr. */
export function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** A result as one line of JSON on stdout. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

/**
 * Progress for a counted loop (batches, tensors): a rewritten line on a terminal, else a
 * line at about every 10%.
 */
export function countProgress(label: string): (done: number, total: number) => void {
  const tty = Boolean(process.stderr.isTTY);
  let lastTenth = -1;
  return (done, total) => {
    if (tty) {
      process.stderr.write(`\r${label} ${done}/${total}${done === total ? '\n' : ''}`);
      return;
    }
    const tenth = Math.floor((10 * done) / Math.max(1, total));
    if (tenth > lastTenth) {
      process.stderr.write(`${label} ${done}/${total}\n`);
      lastTenth = tenth;
    }
  };
}

/** The training progress display for the CLI (off with --quiet). */
export function trainingProgress(quiet: boolean, every?: number): ProgressBar | null {
  return quiet ? null : new ProgressBar({ stream: process.stderr, every });
}

function mb(n: number): string {
  return (n / 1e6).toFixed(n < 1e7 ? 2 : 1);
}

/**
 * Hub download progress on stderr: one rewritten line per file on a terminal
 * (`downloading org/name model.safetensors  12.3/45.6 MB  27%`), else a line when a download
 * starts, at each quarter of a large file, and when it is done. Files already cached are silent.
 */
export function downloadProgress(stream: NodeJS.WriteStream = process.stderr): (p: DownloadProgress) => void {
  const tty = Boolean(stream.isTTY);
  const shown = new Map<string, number>();
  return (p) => {
    const key = `${p.repo}/${p.file}`;
    const quarter = p.total ? Math.floor((4 * p.loaded) / p.total) : 0;
    if (!shown.has(key)) {
      if (p.status === 'done') return; // already cached
      shown.set(key, -1);
    }
    const pct = p.total ? Math.floor((100 * p.loaded) / p.total) : 100;
    const line = `downloading ${p.repo} ${p.file}  ${mb(p.loaded)}/${mb(p.total)} MB  ${pct}%`;
    if (tty) {
      stream.write(`\r${line}${p.status === 'done' ? '\n' : ''}`);
    } else if (p.status === 'done' || quarter > shown.get(key)!) {
      if (p.status === 'done' || p.total > 8e6 || shown.get(key) === -1) stream.write(`${line}\n`);
      shown.set(key, p.status === 'done' ? 4 : quarter);
    }
  };
}
