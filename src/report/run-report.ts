/**
 * `sparsetune report`: turn a run directory (metrics.jsonl + the exported adapter) into
 * `report.html`, a self-contained page with inline SVG charts, plus every chart as its own
 * SVG file. The base model is optional: it only turns counts into fractions.
 */
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { SparsetuneError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { ADAPTER_JSON, loadAdapter } from '../merge/adapter.js';
import type { Adapter } from '../merge/types.js';
import { adapterStats, type AdapterStats } from './adapter-stats.js';
import { adapterCharts } from './adapter-charts.js';
import { readBaseInfo, type BaseInfo } from './base-info.js';
import { renderPage, type RenderedChart } from './html.js';
import { readRunMetrics, summarizeRun, type RunMetrics, type RunSummary } from './metrics.js';
import { trainingCharts, type Chart } from './training-charts.js';
import { renderSvg } from './vega.js';

export const METRICS_FILE = 'metrics.jsonl';
export const REPORT_HTML = 'report.html';
export const CHARTS_DIR = 'report-charts';

export interface ReportOptions {
  /** The run directory (holds metrics.jsonl and usually the adapter). */
  runDir: string;
  /** Adapter directory; default: the run directory, else `<runDir>/adapter`, if either has adapter.json. */
  adapterDir?: string;
  /** Base model (directory or cached hub id) for parameter shapes; default: the adapter's base, when it is local. */
  model?: string;
  /** Where report.html and report-charts/ go (default: the run directory). */
  outDir?: string;
  /** Page title (default: "sparsetune report: <run dir name>"). */
  title?: string;
}

export interface ReportResult {
  html: string;
  charts: string[];
  metrics?: { data: RunMetrics; summary: RunSummary };
  stats?: AdapterStats;
  notes: string[];
}

function findAdapterDir(runDir: string): string | undefined {
  return [runDir, path.join(runDir, 'adapter')].find((d) => existsSync(path.join(d, ADAPTER_JSON)));
}

/** Names of adapter parameters the base lacks or sizes it contradicts (empty: they fit). */
function misfits(adapter: Adapter, base: BaseInfo): string[] {
  const numel = (n: string) => base.shapes.get(n)?.reduce((a, b) => a * b, 1);
  const bad: string[] = [];
  for (const [n, d] of adapter.additive) if (numel(n) === undefined || (d.indices.length && d.indices[d.indices.length - 1] >= numel(n)!)) bad.push(n);
  for (const [n, m] of adapter.masks) if (numel(n) !== m.numel) bad.push(n);
  for (const n of [...adapter.structured.keys(), ...adapter.lowrank.keys()]) if (!base.shapes.has(n)) bad.push(n);
  return bad;
}

/**
 * The base model's geometry: the one asked for, else the adapter's base if it is on disk.
 * A base that does not fit the adapter is an error when asked for, and ignored otherwise.
 */
async function baseFor(opts: ReportOptions, adapter: Adapter | undefined, notes: string[]): Promise<{ info: BaseInfo; ref: string } | undefined> {
  const ref = opts.model ?? adapter?.meta.base.model;
  if (!ref) return undefined;
  let info: BaseInfo;
  try {
    info = await readBaseInfo(ref);
  } catch (err) {
    if (opts.model) throw err;
    notes.push(`the adapter's base model "${ref}" is not available here; pass --model DIR to show densities and totals`);
    return undefined;
  }
  const bad = adapter ? misfits(adapter, info) : [];
  if (bad.length) {
    const what = `${ref} does not fit the adapter (${bad.length} parameter(s) missing or of another size, e.g. ${bad[0]})`;
    if (opts.model) throw new SparsetuneError('BAD_ARGUMENT', `--model ${what}; pass the model the adapter was trained on`);
    notes.push(`${what}; its shapes were not used`);
    return undefined;
  }
  return { info, ref };
}

async function renderAll(charts: Chart[]): Promise<RenderedChart[]> {
  const out: RenderedChart[] = [];
  // One at a time: Vega views are cheap, and sequential rendering keeps memory flat.
  for (const c of charts) out.push({ id: c.id, title: c.title, caption: c.caption, svg: await renderSvg(c.spec) });
  return out;
}

/**
 * Build the report of a run. Needs metrics.jsonl or an adapter (or both); whatever is
 * missing is left out of the page. Returns the paths written and the numbers shown.
 */
export async function writeRunReport(opts: ReportOptions): Promise<ReportResult> {
  const runDir = path.resolve(opts.runDir);
  const stat = await fsp.stat(runDir).catch(() => null);
  if (!stat?.isDirectory()) throw new SparsetuneError('NOT_FOUND', `${runDir} is not a directory; pass the --out directory of a \`sparsetune train\` run`);
  const notes: string[] = [];

  const metricsFile = path.join(runDir, METRICS_FILE);
  let metrics: { data: RunMetrics; summary: RunSummary; file: string } | undefined;
  if (existsSync(metricsFile)) {
    const data = await readRunMetrics(metricsFile);
    metrics = { data, summary: summarizeRun(data), file: metricsFile };
    if (data.badLines) notes.push(`${data.badLines} line(s) of ${METRICS_FILE} were skipped: ${data.problems.join('; ')}`);
    if (data.unknownTypes) notes.push(`${data.unknownTypes} line(s) of ${METRICS_FILE} have a type the report does not chart`);
  }

  const adapterDir = opts.adapterDir ? path.resolve(opts.adapterDir) : findAdapterDir(runDir);
  const adapter = adapterDir ? await loadAdapter(adapterDir) : undefined;
  if (!metrics && !adapter) {
    throw new SparsetuneError('NOT_FOUND', `${runDir} has neither ${METRICS_FILE} nor an adapter (${ADAPTER_JSON}); pass the --out directory of a training run, or --adapter DIR`);
  }
  if (!metrics) notes.push(`no ${METRICS_FILE} in ${runDir}: training curves are not shown`);
  if (!adapter) notes.push(`no adapter found in ${runDir} or ${path.join(runDir, 'adapter')}: pass --adapter DIR to include adapter statistics`);

  const base = await baseFor(opts, adapter, notes);
  const stats = adapter ? adapterStats(adapter, base?.info) : undefined;
  if (stats) notes.push(...stats.notes);

  const training = metrics ? await renderAll(trainingCharts(metrics.data)) : [];
  const adapterFigs = stats ? await renderAll(adapterCharts(stats)) : [];

  const outDir = path.resolve(opts.outDir ?? runDir);
  const chartsDir = path.join(outDir, CHARTS_DIR);
  await fsp.mkdir(chartsDir, { recursive: true });
  // Charts of an earlier report of this run (maybe of another adapter kind) would mislead.
  for (const f of await fsp.readdir(chartsDir)) if (f.endsWith('.svg')) await fsp.rm(path.join(chartsDir, f), { force: true });
  const chartFiles: string[] = [];
  for (const c of [...training, ...adapterFigs]) {
    const file = path.join(chartsDir, `${c.id}.svg`);
    await writeFileAtomic(file, `<?xml version="1.0" encoding="UTF-8"?>\n${c.svg}\n`);
    chartFiles.push(file);
  }

  const html = path.join(outDir, REPORT_HTML);
  const page = renderPage({
    title: opts.title ?? `sparsetune report: ${path.basename(runDir)}`,
    runDir,
    generated: new Date().toISOString(),
    metrics,
    adapter: adapter && stats ? { meta: adapter.meta, dir: adapterDir!, stats } : undefined,
    baseModel: base?.info.dir,
    trainingCharts: training,
    adapterCharts: adapterFigs,
    notes,
  });
  await writeFileAtomic(html, page);
  return { html, charts: chartFiles, metrics: metrics && { data: metrics.data, summary: metrics.summary }, stats, notes };
}
