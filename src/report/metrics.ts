/**
 * Reading a run's `metrics.jsonl` for the report. The trainer writes `{"type":"train",...}`
 * per step and `{"type":"eval",...}` per evaluation (src/train/metrics.ts), but files from
 * older versions, other tools or hand edits vary: `"step"` as the type, snake_case keys,
 * method metrics nested under `metrics` or flattened, `null` where a value was NaN. Every
 * line is validated with zod after its keys are normalized; lines of unknown type are
 * skipped and counted, malformed lines are skipped and reported, never fatal.
 */
import { promises as fsp } from 'node:fs';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';

/** One optimizer step. Values the file did not have (or had as null) are undefined. */
export interface StepPoint {
  step: number;
  phase: number;
  loss?: number;
  lr?: number;
  gradNorm?: number;
  tokens?: number;
  tokensPerSecond?: number;
  /** The method's own scalars (lm_loss, penalty, ...). */
  extra: Record<string, number>;
}

/** One evaluation. */
export interface EvalPoint {
  step: number;
  kind?: string;
  loss?: number;
  ppl?: number;
  tokens?: number;
}

export interface RunMetrics {
  steps: StepPoint[];
  evals: EvalPoint[];
  /** Lines whose `type` is neither a step nor an evaluation (counted, not an error). */
  unknownTypes: number;
  /** Problems with individual lines: `line N: what` (the first few). */
  problems: string[];
  /** How many lines were malformed in total (problems lists at most MAX_PROBLEMS). */
  badLines: number;
}

const MAX_PROBLEMS = 10;

/** Alternative spellings accepted for each canonical key (compared after lower-casing and dropping `_`/`-`). */
const KEY_ALIASES: Record<string, string[]> = {
  type: ['type', 'event'],
  step: ['step', 'globalstep', 'iteration', 'iter'],
  phase: ['phase'],
  loss: ['loss', 'trainloss', 'evalloss'],
  lr: ['lr', 'learningrate'],
  gradNorm: ['gradnorm', 'gradientnorm'],
  tokens: ['tokens', 'numtokens', 'ntokens'],
  tokensPerSecond: ['tokenspersecond', 'tokenspersec', 'tokpersec', 'tokenss', 'tps', 'throughput'],
  ppl: ['ppl', 'perplexity'],
  kind: ['kind'],
  time: ['time', 'timestamp'],
  metrics: ['metrics'],
};

const ALIAS_TO_KEY = new Map<string, string>();
for (const [key, aliases] of Object.entries(KEY_ALIASES)) for (const a of aliases) ALIAS_TO_KEY.set(a, key);

const STEP_TYPES = new Set(['train', 'step', 'training', 'trainstep']);
const EVAL_TYPES = new Set(['eval', 'evaluation', 'validation', 'valid', 'val']);

/** A finite number, or absent (null and missing both mean "not recorded"). */
const maybeNumber = z
  .union([z.number(), z.null()])
  .optional()
  .transform((v) => (typeof v === 'number' && Number.isFinite(v) ? v : undefined));

const stepSchema = z.object({
  step: z.number().int().nonnegative(),
  phase: z.number().int().nonnegative().optional(),
  loss: maybeNumber,
  lr: maybeNumber,
  gradNorm: maybeNumber,
  tokens: maybeNumber,
  tokensPerSecond: maybeNumber,
  metrics: z.record(z.string(), z.unknown()).optional(),
});

const evalSchema = z.object({
  step: z.number().int().nonnegative(),
  kind: z.string().optional(),
  loss: maybeNumber,
  ppl: maybeNumber,
  tokens: maybeNumber,
});

/** Canonical key for a raw key, or null when it is not one of the known fields. */
function canonicalKey(raw: string): string | null {
  return ALIAS_TO_KEY.get(raw.toLowerCase().replace(/[_\-\s/]/g, '')) ?? null;
}

function zodIssues(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.join('.') || '(line)'}: ${i.message}`).join('; ');
}

/**
 * Parse the text of a metrics.jsonl file. Never throws on content: bad lines land in
 * `problems`. Points are sorted by step (a resumed run may have appended out of order).
 */
export function parseMetrics(text: string): RunMetrics {
  const out: RunMetrics = { steps: [], evals: [], unknownTypes: 0, problems: [], badLines: 0 };
  const problem = (line: number, what: string) => {
    out.badLines++;
    if (out.problems.length < MAX_PROBLEMS) out.problems.push(`line ${line}: ${what}`);
  };
  const lines = text.split('\n');
  lines.forEach((rawLine, i) => {
    const lineNo = i + 1;
    if (!rawLine.trim()) return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(rawLine);
    } catch {
      problem(lineNo, 'not valid JSON (a torn last line from a crash looks like this)');
      return;
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      problem(lineNo, 'not a JSON object');
      return;
    }
    const canon: Record<string, unknown> = {};
    const extra: Record<string, number> = {};
    for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) {
      const key = canonicalKey(k);
      if (key && !(key in canon)) canon[key] = v;
      else if (!key && typeof v === 'number' && Number.isFinite(v)) extra[k] = v;
    }
    const type = typeof canon.type === 'string' ? canon.type.toLowerCase().replace(/[_\-\s]/g, '') : '';
    if (STEP_TYPES.has(type)) {
      const r = stepSchema.safeParse(canon);
      if (!r.success) return problem(lineNo, `step line: ${zodIssues(r.error)}`);
      const nested = r.data.metrics ?? {};
      for (const [k, v] of Object.entries(nested)) if (typeof v === 'number' && Number.isFinite(v)) extra[k] = v;
      out.steps.push({
        step: r.data.step,
        phase: r.data.phase ?? 0,
        loss: r.data.loss,
        lr: r.data.lr,
        gradNorm: r.data.gradNorm,
        tokens: r.data.tokens,
        tokensPerSecond: r.data.tokensPerSecond,
        extra,
      });
    } else if (EVAL_TYPES.has(type)) {
      const r = evalSchema.safeParse(canon);
      if (!r.success) return problem(lineNo, `eval line: ${zodIssues(r.error)}`);
      const ppl = r.data.ppl ?? (r.data.loss !== undefined ? Math.exp(r.data.loss) : undefined);
      out.evals.push({ step: r.data.step, kind: r.data.kind, loss: r.data.loss, ppl: Number.isFinite(ppl) ? ppl : undefined, tokens: r.data.tokens });
    } else {
      out.unknownTypes++;
    }
  });
  out.steps.sort((a, b) => a.step - b.step);
  out.evals.sort((a, b) => a.step - b.step);
  return out;
}

/** Read and parse a metrics file; a missing file is NOT_FOUND naming the path. */
export async function readRunMetrics(file: string): Promise<RunMetrics> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new SparsetuneError('NOT_FOUND', `${file} does not exist; point the report at a run directory written by \`sparsetune train --out DIR\``);
    }
    throw new SparsetuneError('NOT_FOUND', `${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  return parseMetrics(text);
}

/** Headline numbers of a run for the summary table. */
export interface RunSummary {
  steps: number;
  firstLoss?: number;
  lastLoss?: number;
  initialEval?: EvalPoint;
  finalEval?: EvalPoint;
  tokens: number;
  meanTokensPerSecond?: number;
  phases: number;
}

/** Summarize parsed metrics (the last eval counts as final even when `kind` is missing). */
export function summarizeRun(m: RunMetrics): RunSummary {
  const losses = m.steps.filter((s) => s.loss !== undefined);
  const rates = m.steps.map((s) => s.tokensPerSecond).filter((v): v is number => v !== undefined);
  const initialEval = m.evals.find((e) => e.kind === 'initial') ?? (m.evals[0]?.step === 0 ? m.evals[0] : undefined);
  const finalEval = m.evals.find((e) => e.kind === 'final') ?? (m.evals.length > 1 || !initialEval ? m.evals[m.evals.length - 1] : undefined);
  return {
    steps: m.steps.length ? m.steps[m.steps.length - 1].step : 0,
    firstLoss: losses[0]?.loss,
    lastLoss: losses[losses.length - 1]?.loss,
    initialEval,
    finalEval,
    tokens: m.steps.reduce((acc, s) => acc + (s.tokens ?? 0), 0),
    meanTokensPerSecond: rates.length ? rates.reduce((a, b) => a + b, 0) / rates.length : undefined,
    phases: new Set(m.steps.map((s) => s.phase)).size,
  };
}
