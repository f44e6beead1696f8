/**
 * `metrics.jsonl`: one JSON object per line, `{"type":"train",...}` per optimizer step and
 * `{"type":"eval",...}` per evaluation. Lines are appended as they happen so a crashed run
 * keeps its history; resuming first drops the lines after the checkpoint's step, so the
 * file reads like one uninterrupted run.
 */
import { appendFileSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../io/atomic.js';
import type { EvalKind, EvalResult, StepLog } from './trainer.js';

export interface TrainMetricsLine {
  type: 'train';
  /** Global step (over all phases), 1-based. */
  step: number;
  phase: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokens: number;
  tokensPerSecond: number;
  time: string;
  [metric: string]: number | string;
}

export interface EvalMetricsLine {
  type: 'eval';
  step: number;
  /** initial (before training), periodic, or final (after the last step). */
  kind?: EvalKind;
  loss: number;
  ppl: number;
  tokens: number;
  time: string;
}

export type MetricsLine = TrainMetricsLine | EvalMetricsLine;

/** Appends metric lines to a JSONL file. */
export class MetricsWriter {
  private constructor(readonly file: string) {}

  /**
   * Open `file` for appending. With `keepUpToStep`, existing lines whose step is greater
   * are dropped, and so are `final` evaluations (the run they ended goes on); the file is
   * rewritten atomically (`writeFileAtomic`). Without it the file starts empty.
   */
  static async open(file: string, opts: { keepUpToStep?: number } = {}): Promise<MetricsWriter> {
    await fsp.mkdir(path.dirname(file), { recursive: true });
    let kept = '';
    if (opts.keepUpToStep !== undefined) {
      const old = await fsp.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return '';
        throw err;
      });
      for (const line of old.split('\n')) {
        if (!line.trim()) continue;
        try {
          const row = JSON.parse(line) as { step?: unknown; kind?: unknown };
          if (typeof row.step === 'number' && row.step <= opts.keepUpToStep && row.kind !== 'final') kept += `${line}\n`;
        } catch {
          // A torn last line from a crash: drop it.
        }
      }
    }
    await writeFileAtomic(file, kept);
    return new MetricsWriter(file);
  }

  /** Append one line (synchronously, so lines stay in order and survive a crash right after). */
  write(line: MetricsLine): void {
    appendFileSync(this.file, `${JSON.stringify(line)}\n`);
  }

  /** Log an optimizer step; the method's own metrics are flattened in. */
  step(log: StepLog): void {
    const line: TrainMetricsLine = {
      type: 'train',
      step: log.globalStep ?? log.step,
      phase: log.phase ?? 0,
      loss: log.loss,
      lr: log.lr,
      gradNorm: log.gradNorm,
      tokens: log.tokens,
      tokensPerSecond: log.tokensPerSecond,
      time: new Date().toISOString(),
    };
    for (const [k, v] of Object.entries(log.metrics)) if (!(k in line)) line[k] = v;
    this.write(line);
  }

  /** Log an evaluation at a global step. */
  eval(step: number, r: EvalResult, kind?: EvalKind): void {
    this.write({ type: 'eval', step, kind, loss: r.loss, ppl: r.ppl, tokens: r.tokens, time: new Date().toISOString() });
  }
}

/** Read a metrics file back (for reports and tests). */
export async function readMetrics(file: string): Promise<MetricsLine[]> {
  const text = await fsp.readFile(file, 'utf8');
  return text
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as MetricsLine);
}
