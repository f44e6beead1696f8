/**
 * Training data: read .txt / JSONL files into tokenized examples, shuffle and split them
 * deterministically, and collate them into padded int64 batches.
 *
 * Labels follow the Hugging Face convention: same length as inputIds, NOT shifted (the
 * loss shifts), -100 where no loss is taken.
 */
import { promises as fsp } from 'node:fs';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { ChatMessage, Tokenizer } from './tokenizer.js';
import { mulberry32 } from '../util/random.js';

export const IGNORE_INDEX = -100;

export interface TokenizedExample {
  inputIds: number[];
  labels: number[];
}

export interface LoadDatasetOptions {
  /** Window / truncation length in tokens (>= 2). */
  seqLen: number;
  /** Render {"prompt","completion"} rows as a user/assistant chat with the chat template. */
  chatTemplate?: boolean;
  /** Receives summary warnings (e.g. dropped rows); default console.warn. */
  onWarning?: (message: string) => void;
}

const messageSchema = z.object({ role: z.string().min(1), content: z.string() });
const rowSchemas = {
  messages: z.object({ messages: z.array(messageSchema).min(1) }),
  promptCompletion: z.object({ prompt: z.string(), completion: z.string() }),
  text: z.object({ text: z.string() }),
};
const EXPECTED = 'expected a JSON object with "text" (string), "prompt" + "completion" (strings), or "messages" ([{role, content}, ...])';

function badLine(file: string, lineNo: number, problem: string): SparsetuneError {
  return new SparsetuneError('BAD_DATA', `${file}:${lineNo}: ${problem}`);
}

/** Length of the common prefix of two id lists. */
function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/** Cut one long token stream into seqLen windows; a short tail (>= 2 tokens) is kept and padded later. */
function pack(stream: number[], seqLen: number): TokenizedExample[] {
  const out: TokenizedExample[] = [];
  for (let start = 0; start < stream.length; start += seqLen) {
    const ids = stream.slice(start, start + seqLen);
    if (ids.length >= 2) out.push({ inputIds: ids, labels: [...ids] });
  }
  return out;
}

/**
 * Plain text documents: split on `<|endoftext|>` when the file uses it (each document then
 * also ends with EOS), else on blank lines (paragraphs), else one document per line.
 */
function textDocuments(text: string): { docs: string[]; explicit: boolean } {
  const norm = text.replace(/\r\n?/g, '\n');
  if (norm.includes('<|endoftext|>')) return { docs: norm.split('<|endoftext|>').map((d) => d.trim()).filter(Boolean), explicit: true };
  const parts = /\n[ \t]*\n/.test(norm) ? norm.split(/\n[ \t]*\n/) : norm.split('\n');
  return { docs: parts.map((d) => d.trim()).filter(Boolean), explicit: false };
}

/** Token ids of a chat, with labels on assistant turns only (found by rendering growing prefixes). */
function chatExample(tok: Tokenizer, messages: ChatMessage[]): TokenizedExample | 'no-assistant' {
  const full = tok.applyChatTemplate(messages);
  // Templates that print BOS themselves must not get a second one from encode().
  const addBos = tok.templateEmitsBos(full) ? false : undefined;
  const ids = tok.encode(full, { addBos });
  const labels = new Array<number>(ids.length).fill(IGNORE_INDEX);
  let any = false;
  messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    const before = tok.encode(tok.applyChatTemplate(messages.slice(0, i), { addGenerationPrompt: true }), { addBos });
    const through = i + 1 === messages.length ? ids : tok.encode(tok.applyChatTemplate(messages.slice(0, i + 1)), { addBos });
    const start = commonPrefix(before, ids);
    const end = commonPrefix(through, ids);
    for (let k = start; k < end; k++) labels[k] = ids[k];
    any ||= end > start;
  });
  return any ? { inputIds: ids, labels } : 'no-assistant';
}

/** Prompt tokens get -100; completion + EOS are labelled. */
function promptCompletionExample(tok: Tokenizer, prompt: string, completion: string): { ex: TokenizedExample; promptLen: number } {
  const ids = tok.encode(prompt + completion);
  if (tok.eosId !== undefined) ids.push(tok.eosId);
  // Tokenizing prompt+completion together can merge across the seam; the shared prefix is the prompt.
  const promptLen = commonPrefix(tok.encode(prompt), ids);
  const labels = ids.map((id, k) => (k < promptLen ? IGNORE_INDEX : id));
  return { ex: { inputIds: ids, labels }, promptLen };
}

function parseRows(file: string, text: string): { row: unknown; lineNo: number }[] {
  const trimmed = text.trimStart();
  if (file.endsWith('.json') && trimmed.startsWith('[')) {
    let arr: unknown;
    try {
      arr = JSON.parse(text);
    } catch (err) {
      throw new SparsetuneError('BAD_DATA', `${file}: invalid JSON (${(err as Error).message})`);
    }
    return (arr as unknown[]).map((row, i) => ({ row, lineNo: i + 1 }));
  }
  const rows: { row: unknown; lineNo: number }[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    try {
      rows.push({ row: JSON.parse(line), lineNo: i + 1 });
    } catch (err) {
      throw badLine(file, i + 1, `invalid JSON (${(err as Error).message}); ${EXPECTED}`);
    }
  });
  return rows;
}

function jsonlExamples(file: string, text: string, tok: Tokenizer, opts: LoadDatasetOptions): TokenizedExample[] {
  const out: TokenizedExample[] = [];
  const stream: number[] = [];
  let droppedLong = 0;
  const addSingle = (ex: TokenizedExample, promptLen: number) => {
    // Drop what leaves nothing to learn inside the window.
    if (promptLen >= opts.seqLen || !ex.labels.slice(0, opts.seqLen).some((l) => l !== IGNORE_INDEX)) {
      droppedLong++;
      return;
    }
    out.push({ inputIds: ex.inputIds.slice(0, opts.seqLen), labels: ex.labels.slice(0, opts.seqLen) });
  };
  for (const { row, lineNo } of parseRows(file, text)) {
    if (row === null || typeof row !== 'object' || Array.isArray(row)) throw badLine(file, lineNo, EXPECTED);
    const r = row as Record<string, unknown>;
    const kind = 'messages' in r ? 'messages' : 'prompt' in r || 'completion' in r ? 'promptCompletion' : 'text' in r ? 'text' : null;
    if (!kind) throw badLine(file, lineNo, `${EXPECTED}; got keys ${JSON.stringify(Object.keys(r))}`);
    const parsed = rowSchemas[kind].safeParse(r);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw badLine(file, lineNo, `field "${issue.path.join('.')}": ${issue.message}; ${EXPECTED}`);
    }
    if (kind === 'text') {
      const ids = tok.encode((parsed.data as { text: string }).text);
      if (tok.eosId !== undefined) ids.push(tok.eosId);
      for (const id of ids) stream.push(id);
    } else if (kind === 'promptCompletion' && !opts.chatTemplate) {
      const { prompt, completion } = parsed.data as { prompt: string; completion: string };
      const { ex, promptLen } = promptCompletionExample(tok, prompt, completion);
      addSingle(ex, promptLen);
    } else {
      const messages: ChatMessage[] =
        kind === 'messages'
          ? (parsed.data as { messages: ChatMessage[] }).messages
          : [
              { role: 'user', content: (parsed.data as { prompt: string }).prompt },
              { role: 'assistant', content: (parsed.data as { completion: string }).completion },
            ];
      const ex = chatExample(tok, messages);
      if (ex === 'no-assistant') throw badLine(file, lineNo, '"messages" has no assistant turn with content to learn from');
      addSingle(ex, ex.labels.findIndex((l) => l !== IGNORE_INDEX));
    }
  }
  if (droppedLong > 0) {
    (opts.onWarning ?? console.warn)(`${file}: dropped ${droppedLong} example(s) whose prompt fills the whole seqLen ${opts.seqLen}; raise --seq-len to keep them`);
  }
  return [...pack(stream, opts.seqLen), ...out];
}

/**
 * Load a training/eval file. `.jsonl` (or `.json` array) rows: {"text"} rows are tokenized
 * with BOS + EOS, concatenated and packed into seqLen windows; {"prompt","completion"} rows
 * become one example each with loss on completion + EOS only; {"messages"} rows go through
 * the chat template with loss on assistant turns. Other files are plain text, split into
 * documents (see textDocuments), each starting with BOS, and packed into seqLen windows.
 */
export async function loadDataset(file: string, tok: Tokenizer, opts: LoadDatasetOptions): Promise<TokenizedExample[]> {
  if (!Number.isInteger(opts.seqLen) || opts.seqLen < 2) {
    throw new SparsetuneError('BAD_ARGUMENT', `seqLen must be an integer >= 2, got ${opts.seqLen}`);
  }
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw new SparsetuneError('NOT_FOUND', `${file}: cannot read data file (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  let examples: TokenizedExample[];
  if (/\.(jsonl|ndjson|json)$/i.test(file)) {
    examples = jsonlExamples(file, text, tok, opts);
  } else {
    const { docs, explicit } = textDocuments(text);
    const stream: number[] = [];
    for (const doc of docs) {
      for (const id of tok.encode(doc)) stream.push(id);
      if (explicit && tok.eosId !== undefined) stream.push(tok.eosId);
    }
    examples = pack(stream, opts.seqLen);
  }
  if (examples.length === 0) throw new SparsetuneError('BAD_DATA', `${file}: no training examples (empty file, or everything was dropped)`);
  return examples;
}

/** A shuffled copy of `items`; the same seed always gives the same order. */
export function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  const rand = mulberry32(seed);
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** Deterministic train/eval split: `fraction` of the items (at least one when possible) go to eval. */
export function splitHoldout<T>(items: readonly T[], fraction: number, seed: number): { train: T[]; eval: T[] } {
  if (!(fraction >= 0 && fraction < 1)) throw new SparsetuneError('BAD_ARGUMENT', `holdout fraction must be in [0, 1), got ${fraction}`);
  const order = shuffled(items, seed);
  let nEval = Math.round(order.length * fraction);
  if (fraction > 0 && order.length >= 2) nEval = Math.min(order.length - 1, Math.max(1, nEval));
  return { eval: order.slice(0, nEval), train: order.slice(nEval) };
}

export interface Batch {
  inputIds: BigInt64Array;
  labels: BigInt64Array;
  attentionMask: BigInt64Array;
  batchSize: number;
  seqLen: number;
}

/** Right-pad examples to the longest one: pads get `padId`, label -100 and mask 0. */
export function collate(examples: readonly TokenizedExample[], padId: number): Batch {
  if (examples.length === 0) throw new SparsetuneError('BAD_ARGUMENT', 'collate: no examples');
  const seqLen = Math.max(...examples.map((e) => e.inputIds.length));
  const batchSize = examples.length;
  const inputIds = new BigInt64Array(batchSize * seqLen).fill(BigInt(padId));
  const labels = new BigInt64Array(batchSize * seqLen).fill(BigInt(IGNORE_INDEX));
  const attentionMask = new BigInt64Array(batchSize * seqLen);
  examples.forEach((ex, b) => {
    if (ex.labels.length !== ex.inputIds.length) {
      throw new SparsetuneError('SHAPE_MISMATCH', `collate: example ${b} has ${ex.inputIds.length} ids but ${ex.labels.length} labels`);
    }
    const row = b * seqLen;
    for (let t = 0; t < ex.inputIds.length; t++) {
      inputIds[row + t] = BigInt(ex.inputIds[t]);
      labels[row + t] = BigInt(ex.labels[t]);
      attentionMask[row + t] = 1n;
    }
  });
  return { inputIds, labels, attentionMask, batchSize, seqLen };
}

/** Batches over one epoch in a seeded order that changes with `epoch`; the last batch may be smaller. */
export function* batches(
  examples: readonly TokenizedExample[],
  batchSize: number,
  opts: { seed: number; epoch?: number; padId: number },
): Generator<Batch> {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new SparsetuneError('BAD_ARGUMENT', `batchSize must be a positive integer, got ${batchSize}`);
  const order = shuffled(examples, (opts.seed ^ Math.imul((opts.epoch ?? 0) + 1, 0x9e3779b1)) >>> 0);
  for (let i = 0; i < order.length; i += batchSize) yield collate(order.slice(i, i + batchSize), opts.padId);
}
