/**
 * Prompt/label sets for accuracy by log-likelihood (`--classify`): JSONL rows
 * {"prompt","completion"} (the training format) or {"prompt","label"}; the candidate labels
 * are given or are the distinct labels of the file. Scoring is src/train/classify.ts.
 */
import { promises as fsp } from 'node:fs';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { ModelHooks } from '../models/hooks.js';
import type { HostTensor } from '../tensor.js';
import { loadOptional, optionalModules } from './optional.js';

export interface LabelledRow {
  prompt: string;
  label: string;
}

const rowSchema = z.union([z.object({ prompt: z.string(), completion: z.string() }), z.object({ prompt: z.string(), label: z.string() })]);

/** Read prompt/label rows; a bad line is an error naming file:line. */
export async function readLabelledRows(file: string): Promise<LabelledRow[]> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw new SparsetuneError('NOT_FOUND', `${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  const rows: LabelledRow[] = [];
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    let json: unknown;
    try {
      json = JSON.parse(line);
    } catch (err) {
      throw new SparsetuneError('BAD_DATA', `${file}:${i + 1}: invalid JSON (${(err as Error).message})`);
    }
    const r = rowSchema.safeParse(json);
    if (!r.success) throw new SparsetuneError('BAD_DATA', `${file}:${i + 1}: --classify needs {"prompt", "completion"} or {"prompt", "label"} string fields`);
    rows.push({ prompt: r.data.prompt, label: 'label' in r.data ? r.data.label : r.data.completion });
  });
  if (rows.length === 0) throw new SparsetuneError('BAD_DATA', `${file}: no rows to classify`);
  return rows;
}

/** Candidate labels: the given list, else the distinct labels in order of appearance. */
export function candidateLabels(rows: readonly LabelledRow[], given: readonly string[]): string[] {
  return given.length ? [...given] : [...new Set(rows.map((r) => r.label))];
}

export interface AccuracyResult {
  accuracy: number;
  correct: number;
  total: number;
}

type Accuracy = (
  model: CausalLM,
  examples: readonly LabelledRow[],
  labels: readonly string[],
  opts: { hooks?: ModelHooks; extraFeeds?: Record<string, HostTensor> },
) => Promise<AccuracyResult>;

/** Accuracy of argmax-likelihood labels (with the given hooks for unfused methods). */
export async function accuracy(
  model: CausalLM,
  rows: readonly LabelledRow[],
  labels: readonly string[],
  opts: { hooks?: ModelHooks; extraFeeds?: Record<string, HostTensor> } = {},
): Promise<AccuracyResult> {
  const fn = await loadOptional<Accuracy>(optionalModules.classify, 'train/classify.js', 'classificationAccuracy', '--classify');
  const r = await fn(model, rows, labels, opts);
  return { accuracy: r.accuracy, correct: r.correct, total: r.total };
}
