/**
 * The `sparsetune` command: routes to one module per command (loaded lazily, so `--help`
 * and flag mistakes answer fast) and turns errors into messages and exit codes:
 * 0 success, 1 runtime error (bad file, bad config, failed training), 2 usage error (bad
 * flags, unknown command or method), 130 training interrupted by Ctrl-C (checkpoint saved).
 * Stack traces only with SPARSETUNE_DEBUG=1.
 */
import { readFileSync } from 'node:fs';
import { SparsetuneError } from '../errors.js';
import { closest, UsageError, wantsHelp } from './args.js';
import { delegated } from './commands/delegated.js';

interface CommandEntry {
  summary: string;
  /** Resolves to an exit code when it is not 0 (e.g. 130 for an interrupted training run). */
  run(argv: string[]): Promise<unknown>;
}

function lazy(summary: string, load: () => Promise<{ run(argv: string[]): Promise<number | void> }>): CommandEntry {
  return { summary, run: async (argv) => (await load()).run(argv) };
}

const COMMANDS: Record<string, CommandEntry> = {
  train: lazy('fine-tune a model with a sparse/PEFT method and save the adapter', () => import('./commands/train.js')),
  eval: lazy('loss and perplexity on a data file (JSON)', () => import('./commands/eval.js')),
  logits: lazy('logits of every position for token ids (JSON)', () => import('./commands/logits.js')),
  generate: lazy('generate text from a prompt (streamed)', () => import('./commands/generate.js')),
  merge: lazy('fuse adapters into a standard Hugging Face model directory', () => import('./commands/merge.js')),
  compose: lazy('compose several adapters into one', () => import('./commands/compose.js')),
  export: lazy('export the model (adapters fused) as ONNX for transformers.js', () => import('./commands/export.js')),
  serve: { summary: 'OpenAI-style server with hot-swappable adapters', run: delegated.serve.run },
  demo: { summary: 'end-to-end demo on the bundled model and data (no network)', run: delegated.demo.run },
  report: { summary: 'summarize training runs and adapters', run: delegated.report.run },
};

function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function topHelp(): string {
  const w = Math.max(...Object.keys(COMMANDS).map((c) => c.length)) + 2;
  return [
    'sparsetune: sparse parameter-efficient fine-tuning of LLMs on Node.js',
    '',
    'Usage: sparsetune <command> [flags]',
    '',
    'Commands:',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(w)}${c.summary}`),
    '',
    "Run 'sparsetune <command> --help' for a command's flags.",
    'Exit codes: 0 ok, 1 runtime error, 2 usage error, 130 interrupted (train saves a checkpoint first).',
    'SPARSETUNE_DEBUG=1 prints stack traces.',
    '',
  ].join('\n');
}

/** Print an error the way the CLI does and return its exit code. */
export function reportError(command: string | undefined, err: unknown): number {
  const debug = process.env.SPARSETUNE_DEBUG === '1';
  const prefix = command ? `sparsetune ${command}` : 'sparsetune';
  const usage = err instanceof UsageError;
  const message = err instanceof Error ? err.message : String(err);
  const name = err instanceof SparsetuneError || !(err instanceof Error) ? '' : `${err.name}: `;
  process.stderr.write(`${prefix}: error: ${name}${message}\n`);
  if (usage) process.stderr.write(`Run 'sparsetune ${command ?? ''}${command ? ' ' : ''}--help' for usage.\n`);
  else if (name && typeof (err as { code?: unknown }).code !== 'string' && !debug) process.stderr.write('This looks like a bug in sparsetune; rerun with SPARSETUNE_DEBUG=1 for the stack trace.\n');
  if (debug && err instanceof Error && err.stack) {
    process.stderr.write(`${err.stack}\n`);
    if (err.cause instanceof Error && err.cause.stack) process.stderr.write(`caused by: ${err.cause.stack}\n`);
  }
  return usage ? 2 : 1;
}

/**
 * Run the CLI with `argv` (arguments after the program name). Sets `process.exitCode` and
 * also returns it.
 */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  let code = 0;
  if (command === undefined) {
    process.stderr.write(topHelp());
    code = 2;
  } else if (command === '--help' || command === '-h' || command === 'help') {
    const target = command === 'help' ? rest[0] : undefined;
    if (target && COMMANDS[target]) return main([target, '--help']);
    process.stdout.write(topHelp());
  } else if (command === '--version' || command === '-v') {
    process.stdout.write(`${version()}\n`);
  } else if (!COMMANDS[command]) {
    const hint = closest(command, Object.keys(COMMANDS));
    code = reportError(undefined, new UsageError('', `unknown command '${command}'${hint ? `; did you mean '${hint}'?` : ''}; commands: ${Object.keys(COMMANDS).join(', ')}`));
  } else {
    try {
      const ret = await COMMANDS[command].run(rest);
      if (command in delegated) {
        // A delegated command may have set process.exitCode itself; keep it.
        code = typeof process.exitCode === 'number' ? process.exitCode : 0;
      } else if (typeof ret === 'number') code = ret;
    } catch (err) {
      // A delegated command missing from this build still answers --help.
      if (wantsHelp(rest) && err instanceof SparsetuneError && err.code === 'NOT_FOUND' && command in delegated) {
        process.stdout.write(`sparsetune ${command}: ${COMMANDS[command].summary}\n(${err.message})\n`);
      } else code = reportError(command, err);
    }
  }
  process.exitCode = code;
  return code;
}
