/**
 * Output conventions of the CLI: results on stdout (JSON for machine-readable commands),
 * status and progress on stderr, so `sparsetune eval ... > result.json` stays clean.
 */
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
