/**
 * `sparsetune report RUN_DIR`: an HTML page (RUN_DIR/report.html) and SVG charts
 * (RUN_DIR/report-charts/) from a run's metrics.jsonl and its adapter. Prints the paths
 * written as one JSON line on stdout.
 */
import { formatHelp, parseCommand, UsageError, wantsHelp, type CommandSpec } from './args.js';
import { log, printJson } from './output.js';
import { writeRunReport } from '../report/run-report.js';

export const reportCommand: CommandSpec = {
  name: 'report',
  summary: 'Write an HTML report (loss curves, learning rate, throughput, adapter statistics) for a training run',
  usage: 'report RUN_DIR [--adapter DIR] [--model M] [--out DIR] [--title TEXT]',
  flags: {
    run: { type: 'string', value: 'DIR', description: 'the run directory (same as the RUN_DIR argument)' },
    adapter: { type: 'string', value: 'DIR', description: 'adapter directory', default: 'RUN_DIR, else RUN_DIR/adapter' },
    model: { type: 'string', value: 'M', description: "base model dir or cached hub id, for densities and totals (default: the adapter's base when it is on disk)" },
    out: { type: 'string', value: 'DIR', description: 'where report.html and report-charts/ go', default: 'RUN_DIR' },
    title: { type: 'string', value: 'TEXT', description: 'page title' },
  },
  notes: [
    'The page is self-contained (inline SVG, no scripts, no network); open it in any browser.',
    'Example: sparsetune train --model models/stories260K --method lora --data data/demo/spanish.txt --out runs/es',
    '         sparsetune report runs/es',
  ].join('\n'),
};

const STRING_FLAGS = new Set(Object.entries(reportCommand.flags).filter(([, f]) => f.type === 'string').map(([n]) => n));

/** Split the positional RUN_DIR from the flags (args.ts accepts flags only). */
function splitPositionals(argv: string[]): { positionals: string[]; flags: string[] } {
  const positionals: string[] = [];
  const flags: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('-') && a !== '-') {
      flags.push(a);
      const name = a.replace(/^-+/, '');
      if (!a.includes('=') && STRING_FLAGS.has(name) && i + 1 < argv.length) flags.push(argv[++i]);
    } else positionals.push(a);
  }
  return { positionals, flags };
}

/** Run `sparsetune report` with the arguments after the command name. */
export async function runReport(argv: string[]): Promise<void> {
  if (wantsHelp(argv)) {
    process.stdout.write(formatHelp(reportCommand));
    return;
  }
  const { positionals, flags: flagArgs } = splitPositionals(argv);
  const flags = parseCommand(reportCommand, flagArgs);
  if (positionals.length > 1) throw new UsageError('report', `expected one RUN_DIR, got ${positionals.length}: ${positionals.join(' ')}`);
  const runDir = positionals[0] ?? flags.str('run');
  if (!runDir) throw new UsageError('report', 'missing RUN_DIR (the --out directory of `sparsetune train`); see sparsetune report --help');
  if (positionals[0] && flags.has('run') && flags.str('run') !== positionals[0]) {
    throw new UsageError('report', `RUN_DIR given twice (${positionals[0]} and --run ${flags.str('run')}); give it once`);
  }
  const result = await writeRunReport({
    runDir,
    adapterDir: flags.str('adapter'),
    model: flags.str('model'),
    outDir: flags.str('out'),
    title: flags.str('title'),
  });
  for (const n of result.notes) log(`note: ${n}`);
  log(`wrote ${result.html} and ${result.charts.length} chart(s)`);
  printJson({ html: result.html, charts: result.charts });
}
