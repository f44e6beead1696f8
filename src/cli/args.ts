/**
 * Flag parsing for the `sparsetune` commands on top of node's util.parseArgs: a command
 * declares its flags once, and gets strict parsing, typed accessors with clear messages,
 * and its `--help` text from the same declaration.
 */
import { parseArgs } from 'node:util';
import { SparsetuneError } from '../errors.js';

/** A mistake on the command line (exit code 2). */
export class UsageError extends SparsetuneError {
  constructor(
    readonly command: string,
    message: string,
  ) {
    super('BAD_ARGUMENT', message);
    this.name = 'UsageError';
  }
}

export interface FlagSpec {
  type: 'string' | 'boolean';
  /** May be given several times (values collected in order). */
  multiple?: boolean;
  short?: string;
  /** Placeholder in the help text (`N`, `FILE`, `DIR`). */
  value?: string;
  description: string;
  /** Default shown in the help text (the command applies it). */
  default?: string;
  required?: boolean;
}

export interface CommandSpec {
  /** Command name as typed (`train`). */
  name: string;
  summary: string;
  /** Usage line(s) after `sparsetune `. */
  usage: string;
  flags: Record<string, FlagSpec>;
  /** Extra text at the end of the help (examples, notes). */
  notes?: string;
}

type FlagValue = string | boolean | string[] | boolean[] | undefined;

/** Levenshtein distance (for "did you mean" hints). */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  }
  return d[a.length][b.length];
}

/** The closest of `candidates` to `word`, if it is close enough to be a likely typo. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const dd = distance(word, c);
    if (dd < bestD) {
      bestD = dd;
      best = c;
    }
  }
  return bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : undefined;
}

/** Whether argv asks for help (`--help` / `-h` anywhere before a `--`). */
export function wantsHelp(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false;
    if (a === '--help' || a === '-h') return true;
  }
  return false;
}

/** Typed, validated access to parsed flags; every problem is a UsageError naming the flag. */
export class Flags {
  constructor(
    readonly spec: CommandSpec,
    private readonly values: Record<string, FlagValue>,
  ) {}

  private usage(message: string): UsageError {
    return new UsageError(this.spec.name, message);
  }

  has(name: string): boolean {
    return this.values[name] !== undefined;
  }

  str(name: string): string | undefined {
    const v = this.values[name];
    if (Array.isArray(v)) return v.length ? String(v[v.length - 1]) : undefined;
    return typeof v === 'string' ? v : undefined;
  }

  /** A string flag that must be present and non-empty. */
  required(name: string): string {
    const v = this.str(name);
    if (v === undefined || v === '') throw this.usage(`missing --${name} ${this.spec.flags[name]?.value ?? 'VALUE'} (${this.spec.flags[name]?.description ?? ''})`.trim());
    return v;
  }

  list(name: string): string[] {
    const v = this.values[name];
    if (v === undefined) return [];
    return (Array.isArray(v) ? v : [v]).map(String);
  }

  bool(name: string): boolean {
    return this.values[name] === true;
  }

  /** An integer flag within [min, max]; `fallback` when absent. */
  int(name: string, opts: { min?: number; max?: number } = {}, fallback?: number): number | undefined {
    const raw = this.str(name);
    if (raw === undefined) return fallback;
    const n = Number(raw);
    const lo = opts.min ?? -Infinity;
    const hi = opts.max ?? Infinity;
    if (!/^[+-]?\d+$/.test(raw.trim()) || !Number.isSafeInteger(n) || n < lo || n > hi) {
      const range = lo === 1 && hi === Infinity ? 'a positive integer' : lo === 0 && hi === Infinity ? 'an integer >= 0' : `an integer in [${lo}, ${hi}]`;
      throw this.usage(`--${name} must be ${range}, got '${raw}'`);
    }
    return n;
  }

  /** A finite number flag; `gt`/`min`/`max` bound it. */
  num(name: string, opts: { gt?: number; min?: number; max?: number } = {}, fallback?: number): number | undefined {
    const raw = this.str(name);
    if (raw === undefined) return fallback;
    const n = Number(raw);
    const bad =
      raw.trim() === '' ||
      !Number.isFinite(n) ||
      (opts.gt !== undefined && !(n > opts.gt)) ||
      (opts.min !== undefined && n < opts.min) ||
      (opts.max !== undefined && n > opts.max);
    if (bad) {
      const parts = [opts.gt !== undefined ? `> ${opts.gt}` : '', opts.min !== undefined ? `>= ${opts.min}` : '', opts.max !== undefined ? `<= ${opts.max}` : ''].filter(Boolean);
      throw this.usage(`--${name} must be a number${parts.length ? ` ${parts.join(' and ')}` : ''}, got '${raw}'`);
    }
    return n;
  }

  /** One of a fixed set of words. */
  choice<T extends string>(name: string, choices: readonly T[], fallback?: T): T | undefined {
    const raw = this.str(name);
    if (raw === undefined) return fallback;
    if (!choices.includes(raw as T)) throw this.usage(`--${name} must be one of ${choices.join(', ')}, got '${raw}'`);
    return raw as T;
  }
}

/**
 * Parse `argv` against a command's flags (strict: unknown flags, missing values and stray
 * arguments are UsageErrors with a hint). `--help` is always accepted.
 */
export function parseCommand(spec: CommandSpec, argv: readonly string[]): Flags {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = {
    help: { type: 'boolean', short: 'h' },
  };
  for (const [name, f] of Object.entries(spec.flags)) options[name] = { type: f.type, ...(f.multiple ? { multiple: true } : {}), ...(f.short ? { short: f.short } : {}) };
  let values: Record<string, FlagValue>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({ args: [...argv], options, strict: true, allowPositionals: true }) as { values: Record<string, FlagValue>; positionals: string[] });
  } catch (err) {
    throw new UsageError(spec.name, explainParseError(err as Error & { code?: string }, spec));
  }
  if (positionals.length) {
    throw new UsageError(spec.name, `unexpected argument '${positionals[0]}' (flags take the form --name value)`);
  }
  const flags = new Flags(spec, values);
  for (const [name, f] of Object.entries(spec.flags)) if (f.required) flags.required(name);
  return flags;
}

function explainParseError(err: Error & { code?: string }, spec: CommandSpec): string {
  const quoted = /'(-{1,2}[^' ]+)/.exec(err.message)?.[1];
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && quoted) {
    const name = quoted.replace(/^-+/, '');
    const hint = closest(name, Object.keys(spec.flags));
    return `unknown flag ${quoted}${hint ? `; did you mean --${hint}?` : ''}`;
  }
  if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && quoted) {
    const name = quoted.replace(/^-+/, '');
    const f = spec.flags[name];
    if (f?.type === 'boolean') return `--${name} takes no value`;
    return `--${name} needs a value${f?.value ? ` (${f.value})` : ''}; write --${name}=VALUE when the value starts with '-'`;
  }
  return err.message;
}

/** The `--help` text of a command, generated from its flags. */
export function formatHelp(spec: CommandSpec): string {
  const rows = Object.entries(spec.flags).map(([name, f]) => {
    const left = `${f.short ? `-${f.short}, ` : '    '}--${name}${f.type === 'string' ? ` ${f.value ?? 'VALUE'}` : ''}`;
    const extras = [f.required ? 'required' : '', f.multiple ? 'repeatable' : '', f.default !== undefined ? `default: ${f.default}` : ''].filter(Boolean);
    return { left, right: `${f.description}${extras.length ? ` (${extras.join('; ')})` : ''}` };
  });
  rows.push({ left: '-h, --help', right: 'show this help' });
  const width = Math.min(34, Math.max(...rows.map((r) => r.left.length)) + 2);
  const lines = rows.map((r) => (r.left.length + 2 > width ? `  ${r.left}\n  ${' '.repeat(width)}${r.right}` : `  ${r.left.padEnd(width)}${r.right}`));
  return [`${spec.summary}`, '', `Usage: sparsetune ${spec.usage}`, '', 'Options:', ...lines, ...(spec.notes ? ['', spec.notes] : []), ''].join('\n');
}
