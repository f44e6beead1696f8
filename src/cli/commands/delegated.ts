/**
 * Commands implemented by other parts of the package (`serve`, `demo`, `report`): the CLI
 * only routes to them, and says clearly when this build lacks one.
 */
import { loadOptional, optionalModules } from '../optional.js';

type Runner = (argv: string[]) => Promise<unknown> | unknown;

export const delegated = {
  serve: {
    summary: 'Serve one base model and many hot-swappable adapters over an OpenAI-style HTTP API.',
    run: async (argv: string[]) => (await loadOptional<Runner>(optionalModules.serve, 'serve/cli.js', 'runServe', 'sparsetune serve'))(argv),
  },
  demo: {
    summary: 'Train, compose and generate with sparse adapters on the bundled model and data (no network).',
    run: async (argv: string[]) => (await loadOptional<Runner>(optionalModules.demo, 'cli/demo.js', 'runDemo', 'sparsetune demo'))(argv),
  },
  report: {
    summary: 'Summarize training runs (metrics.jsonl) and adapters.',
    run: async (argv: string[]) => (await loadOptional<Runner>(optionalModules.report, 'cli/report.js', 'runReport', 'sparsetune report'))(argv),
  },
} as const;
