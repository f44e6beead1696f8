/**
 * Progress display for long work. On a terminal: one line rewritten in place with `\r`
 * (a bar, step/total, loss, tokens/s, ETA). Elsewhere (logs, CI, pipes): a plain line
 * every N steps, so the output stays readable in a file.
 */
import type { StepLog } from './trainer.js';

/** The part of a writable stream the display needs. */
export interface ProgressStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  /** Where to draw (default process.stderr). */
  stream?: ProgressStream;
  /** Force terminal or plain mode (default: the stream's isTTY). */
  tty?: boolean;
  /** Plain mode: print every N steps (default: about 20 lines per run). */
  every?: number;
  /** Label in front of every line (e.g. "train"). */
  label?: string;
  /** Clock in ms (tests pass a fake one). */
  now?: () => number;
}

/** `1:02:03` / `2:03` / `7s`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

function formatRate(x: number): string {
  if (!Number.isFinite(x)) return '?';
  return x >= 1000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(0);
}

/** Shows training progress; feed it every StepLog. */
export class ProgressBar {
  private readonly stream: ProgressStream;
  private readonly tty: boolean;
  private readonly every: number;
  private readonly now: () => number;
  private total = 0;
  private firstStep = 0;
  private startMs = 0;
  private lastWidth = 0;
  private open = false;

  constructor(private readonly opts: ProgressOptions = {}) {
    this.stream = opts.stream ?? process.stderr;
    this.tty = opts.tty ?? Boolean(this.stream.isTTY);
    this.every = opts.every ?? 0;
    this.now = opts.now ?? (() => performance.now());
  }

  /** Begin a run of `total` steps, `done` of which already happened (resume). */
  start(total: number, done = 0): void {
    this.total = total;
    this.firstStep = done;
    this.startMs = this.now();
  }

  /** The status text for a step (exported for tests and custom displays). */
  line(log: StepLog): string {
    const elapsed = (this.now() - this.startMs) / 1000;
    const doneHere = log.step - this.firstStep;
    const total = log.phaseSteps ?? this.total;
    const eta = doneHere > 0 ? (elapsed / doneHere) * (total - log.step) : NaN;
    const phase = log.phase ? ` phase ${log.phase}` : '';
    const label = this.opts.label ? `${this.opts.label}${phase} ` : phase ? `${phase.trim()} ` : '';
    return `${label}step ${log.step}/${total} loss ${log.loss.toFixed(4)} lr ${log.lr.toExponential(2)} ${formatRate(log.tokensPerSecond)} tok/s ETA ${formatDuration(eta)}`;
  }

  /** Show a step. */
  update(log: StepLog): void {
    const text = this.line(log);
    const total = log.phaseSteps ?? this.total;
    if (this.tty) {
      const width = Math.max(20, (this.stream.columns || 100) - 1);
      const barWidth = 20;
      const filled = Math.round((barWidth * Math.min(log.step, total)) / Math.max(1, total));
      const bar = `[${'#'.repeat(filled)}${'-'.repeat(barWidth - filled)}] `;
      const full = (bar + text).slice(0, width);
      // Pad over the previous line's tail; \r goes back to column 0 without a new line.
      this.stream.write(`\r${full}${' '.repeat(Math.max(0, this.lastWidth - full.length))}`);
      this.lastWidth = full.length;
      this.open = true;
      return;
    }
    const every = this.every || Math.max(1, Math.ceil(total / 20));
    if (log.step % every === 0 || log.step === total || log.step === this.firstStep + 1) this.stream.write(`${text}\n`);
  }

  /** Print a message on its own line (ends an open progress line first). */
  message(text: string): void {
    this.endLine();
    this.stream.write(`${text}\n`);
  }

  /** End the progress line (call when the run is over). */
  finish(): void {
    this.endLine();
  }

  private endLine(): void {
    if (this.open) {
      this.stream.write('\n');
      this.open = false;
      this.lastWidth = 0;
    }
  }
}
