/**
 * Tokenizer: a thin layer over @huggingface/tokenizers that knows the model's special
 * tokens (BOS/EOS/PAD), renders chat templates with @huggingface/jinja, and decodes
 * token by token for streaming output.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { SparsetuneError } from '../errors.js';

/** One chat turn. */
export interface ChatMessage {
  role: string;
  content: string;
}

/**
 * Chat template used when the tokenizer config has none: ChatML layout
 * (`<|im_start|>role\ncontent<|im_end|>\n`). `end_of_turn` is `<|im_end|>` when the
 * vocabulary has that token, otherwise the EOS token, so a model fine-tuned with this
 * template learns to stop generation with a token it actually has.
 */
export const DEFAULT_CHAT_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message.role + '\\n' + message.content + end_of_turn + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

type TokenSpec = string | { content?: unknown } | null | undefined;

/** tokenizer_config.json stores special tokens as strings or AddedToken objects. */
function tokenContent(spec: TokenSpec): string | undefined {
  if (typeof spec === 'string') return spec;
  if (spec && typeof spec === 'object' && typeof spec.content === 'string') return spec.content;
  return undefined;
}

function pickTemplate(raw: unknown): string | undefined {
  if (typeof raw === 'string') return raw;
  // Newer configs hold a list of named templates; "default" is the chat one.
  if (Array.isArray(raw)) {
    const named = raw as { name?: unknown; template?: unknown }[];
    const found = named.find((t) => t.name === 'default') ?? named[0];
    return typeof found?.template === 'string' ? found.template : undefined;
  }
  if (raw && typeof raw === 'object') {
    const rec = raw as Record<string, unknown>;
    const t = rec.default ?? Object.values(rec)[0];
    return typeof t === 'string' ? t : undefined;
  }
  return undefined;
}

async function readJson(file: string, required: boolean): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SparsetuneError('NOT_FOUND', `${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  try {
    const v: unknown = JSON.parse(text);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (err) {
    throw new SparsetuneError('BAD_CONFIG', `${file}: invalid JSON (${(err as Error).message})`);
  }
}

/** Tokenizer model types (tokenizer.json `model.type`) this package can run. */
export const SUPPORTED_TOKENIZER_MODELS: readonly string[] = Object.freeze(['BPE', 'Unigram', 'WordPiece']);

/**
 * Refuse a tokenizer.json whose model type is missing or unknown: the underlying library
 * would otherwise guess a model from the fields present and tokenize wrongly without a word.
 */
function checkTokenizerModel(json: Record<string, unknown>): void {
  const model = json.model;
  if (model === null || typeof model !== 'object' || Array.isArray(model)) {
    throw new SparsetuneError('BAD_CONFIG', 'tokenizer.json has no "model" object; it is not a Hugging Face tokenizers file (re-save it with tokenizer.save_pretrained)');
  }
  const type = (model as Record<string, unknown>).type;
  if (typeof type !== 'string' || !SUPPORTED_TOKENIZER_MODELS.includes(type)) {
    const what = typeof type === 'string' ? `type "${type.slice(0, 60)}"` : 'no "type"';
    throw new SparsetuneError(
      'BAD_CONFIG',
      `tokenizer.json: model ${what} is not supported; supported tokenizer models: ${SUPPORTED_TOKENIZER_MODELS.join(', ')} (re-save the tokenizer with a recent tokenizers library, or use a model whose tokenizer is one of these)`,
    );
  }
  checkTokenIds(json, model as Record<string, unknown>);
}

/**
 * Token ids must be integers in a range the vocabulary fills: the tokenizer library builds
 * an array indexed by id, so one id of 1e9 in a corrupt file would cost minutes and gigabytes.
 * Ids may leave gaps, but not exceed twice the number of tokens (plus a little slack).
 */
function checkTokenIds(json: Record<string, unknown>, model: Record<string, unknown>): void {
  const ids: [string, unknown][] = [];
  const vocab = model.vocab;
  let count = 0;
  if (vocab && typeof vocab === 'object' && !Array.isArray(vocab)) {
    for (const [tok, id] of Object.entries(vocab)) ids.push([tok, id]);
    count += ids.length;
  } else if (Array.isArray(vocab)) count += vocab.length; // Unigram: ids are the positions
  const added = Array.isArray(json.added_tokens) ? (json.added_tokens as unknown[]) : [];
  for (const t of added) {
    const rec = t && typeof t === 'object' ? (t as Record<string, unknown>) : {};
    ids.push([String(rec.content), rec.id]);
  }
  count += added.length;
  const limit = Math.min(2 * count + 256, 1 << 24);
  for (const [tok, id] of ids) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= limit) {
      throw new SparsetuneError(
        'BAD_CONFIG',
        `tokenizer.json: token ${JSON.stringify(tok.slice(0, 40))} has id ${String(id).slice(0, 40)}, but ids must be integers in [0, ${limit}) for a vocabulary of ${count} tokens; the file is corrupt, re-save the tokenizer`,
      );
    }
  }
}

export class Tokenizer {
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  /** PAD token id; falls back to EOS (then 0) because batching only needs a valid id. */
  readonly padId: number;
  /** Highest token id + 1, added tokens included. */
  readonly vocabSize: number;
  /** Whether `encode` prepends BOS by default (tokenizer_config add_bos_token, or what the post-processor does). */
  readonly addsBos: boolean;
  readonly chatTemplate: string | undefined;
  private readonly hf: HfTokenizer;
  private readonly specials: Record<string, string | undefined>;

  /** Build from parsed tokenizer.json and tokenizer_config.json objects. */
  constructor(tokenizerJson: Record<string, unknown>, tokenizerConfig: Record<string, unknown> = {}, extra: { chatTemplate?: string } = {}) {
    checkTokenizerModel(tokenizerJson);
    try {
      this.hf = new HfTokenizer(tokenizerJson, tokenizerConfig);
    } catch (err) {
      throw new SparsetuneError('BAD_CONFIG', `tokenizer.json could not be loaded: ${(err as Error).message}`, { cause: err });
    }
    const cfg = tokenizerConfig;
    this.specials = {
      bos_token: tokenContent(cfg.bos_token as TokenSpec),
      eos_token: tokenContent(cfg.eos_token as TokenSpec),
      pad_token: tokenContent(cfg.pad_token as TokenSpec),
      unk_token: tokenContent(cfg.unk_token as TokenSpec),
    };
    const idOf = (tok: string | undefined) => (tok === undefined ? undefined : this.hf.token_to_id(tok));
    this.bosId = idOf(this.specials.bos_token);
    this.eosId = idOf(this.specials.eos_token);
    this.padId = idOf(this.specials.pad_token) ?? this.eosId ?? 0;
    let maxId = -1;
    for (const id of this.hf.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    if (typeof cfg.add_bos_token === 'boolean') {
      this.addsBos = cfg.add_bos_token && this.bosId !== undefined;
    } else {
      // No explicit flag (e.g. Llama 3): BOS is added iff the post-processor adds it.
      this.addsBos = this.bosId !== undefined && this.hf.encode('a').ids[0] === this.bosId;
    }
    this.chatTemplate = extra.chatTemplate ?? pickTemplate(cfg.chat_template);
  }

  /** Load tokenizer.json (+ tokenizer_config.json and chat_template.jinja when present) from a model directory. */
  static async fromDir(dir: string): Promise<Tokenizer> {
    const json = await readJson(path.join(dir, 'tokenizer.json'), true);
    const cfg = (await readJson(path.join(dir, 'tokenizer_config.json'), false)) ?? {};
    let chatTemplate: string | undefined;
    try {
      chatTemplate = await fsp.readFile(path.join(dir, 'chat_template.jinja'), 'utf8');
    } catch {
      chatTemplate = undefined; // optional file
    }
    try {
      return new Tokenizer(json!, cfg, { chatTemplate });
    } catch (err) {
      if (err instanceof SparsetuneError) throw new SparsetuneError(err.code, `${dir}/${err.message}`, { cause: err });
      throw err;
    }
  }

  /** Token ids of `text`; BOS is prepended when `addBos` (default: what the model's tokenizer does). */
  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    const ids = this.hf.encode(text, { add_special_tokens: false }).ids;
    const addBos = opts.addBos ?? this.addsBos;
    return addBos && this.bosId !== undefined ? [this.bosId, ...ids] : ids;
  }

  /** Text of `ids`. Special tokens are dropped unless `skipSpecialTokens: false`. */
  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return ''; // the underlying library rejects empty input
    return this.hf.decode([...ids], { skip_special_tokens: opts.skipSpecialTokens ?? true });
  }

  /** Token string for an id (e.g. "▁Once"), or undefined. */
  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  /** Id of a token string, or undefined. */
  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  /**
   * Render a conversation with the model's chat template (or DEFAULT_CHAT_TEMPLATE).
   * The result is text; encode it with `addBos: false` when the template already emits BOS.
   */
  applyChatTemplate(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): string {
    const source = this.chatTemplate ?? DEFAULT_CHAT_TEMPLATE;
    let template: Template;
    try {
      template = new Template(source);
    } catch (err) {
      throw new SparsetuneError('BAD_CONFIG', `chat template does not parse: ${(err as Error).message}`);
    }
    const endOfTurn = this.hf.token_to_id('<|im_end|>') !== undefined ? '<|im_end|>' : (this.specials.eos_token ?? '<|im_end|>');
    try {
      return template.render({
        messages,
        add_generation_prompt: opts.addGenerationPrompt ?? false,
        bos_token: this.specials.bos_token ?? '',
        eos_token: this.specials.eos_token ?? '',
        pad_token: this.specials.pad_token ?? '',
        unk_token: this.specials.unk_token ?? '',
        end_of_turn: endOfTurn,
      });
    } catch (err) {
      throw new SparsetuneError('BAD_ARGUMENT', `chat template failed on these messages: ${(err as Error).message}`);
    }
  }

  /** Whether the rendered chat template text begins with the BOS token text. */
  templateEmitsBos(rendered: string): boolean {
    const bos = this.specials.bos_token;
    return bos !== undefined && bos.length > 0 && rendered.startsWith(bos);
  }

  /** A decoder for token-by-token output; `context` are ids already shown (e.g. the prompt). */
  streamDecoder(opts: { context?: readonly number[]; skipSpecialTokens?: boolean } = {}): TokenStreamDecoder {
    return new TokenStreamDecoder(this, opts);
  }
}

/**
 * Turns a stream of token ids into text deltas. Decodes a short sliding window rather than
 * single tokens, because decoders depend on neighbours (leading-space stripping, byte
 * fallback pieces that only form a character together). A delta ending in U+FFFD is held
 * back until the character completes.
 */
export class TokenStreamDecoder {
  private ids: number[];
  private prefixOffset = 0;
  private readOffset: number;
  private readonly skip: boolean;

  constructor(
    private readonly tok: Tokenizer,
    opts: { context?: readonly number[]; skipSpecialTokens?: boolean } = {},
  ) {
    // A few context tokens are enough to decode the next token's spacing correctly.
    this.ids = [...(opts.context ?? [])].slice(-6);
    this.readOffset = this.ids.length;
    this.skip = opts.skipSpecialTokens ?? true;
  }

  /** Add one token; returns the newly completed text (possibly empty). */
  push(id: number): string {
    this.ids.push(id);
    return this.emit(false);
  }

  /** The text `push(id)` would return now, without adding it (the strings of logprob alternatives). */
  peek(id: number): string {
    const opts = { skipSpecialTokens: this.skip };
    const before = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset), opts);
    const after = this.tok.decode([...this.ids.slice(this.prefixOffset), id], opts);
    return after.length <= before.length || after.endsWith('\uFFFD') ? '' : after.slice(before.length);
  }

  /** Return whatever is still held back (an incomplete character shows as U+FFFD). */
  flush(): string {
    return this.readOffset < this.ids.length ? this.emit(true) : '';
  }

  private emit(force: boolean): string {
    const opts = { skipSpecialTokens: this.skip };
    const before = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset), opts);
    const after = this.tok.decode(this.ids.slice(this.prefixOffset), opts);
    if (!force && (after.length <= before.length || after.endsWith('\uFFFD'))) return '';
    const delta = after.slice(before.length);
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    // Drop ids before the window so memory and work stay constant per token.
    if (this.prefixOffset > 0) {
      this.ids = this.ids.slice(this.prefixOffset);
      this.readOffset -= this.prefixOffset;
      this.prefixOffset = 0;
    }
    return delta;
  }
}
