/**
 * The report page: one self-contained HTML file (inline CSS and SVG, no scripts, no
 * external resources) with a summary, the charts and per-tensor tables. Every piece of
 * text that comes from a file is escaped.
 */
import type { AdapterMeta } from '../merge/types.js';
import type { AdapterStats } from './adapter-stats.js';
import type { RunMetrics, RunSummary } from './metrics.js';

export interface RenderedChart {
  id: string;
  title: string;
  caption?: string;
  svg: string;
}

export interface PageInput {
  title: string;
  runDir: string;
  generated: string;
  metrics?: { data: RunMetrics; summary: RunSummary; file: string };
  adapter?: { meta: AdapterMeta; dir: string; stats: AdapterStats };
  baseModel?: string;
  trainingCharts: RenderedChart[];
  adapterCharts: RenderedChart[];
  notes: string[];
}

/** Rows shown per table; longer tables say how many were left out. */
export const MAX_TABLE_ROWS = 400;

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** A number for people: thousands separators from 1,000 up, 4 significant digits below, exponents for tiny values. */
export function formatNumber(v: number | undefined, kind: 'num' | 'pct' | 'int' = 'num'): string {
  if (v === undefined || !Number.isFinite(v)) return '–';
  if (kind === 'pct') return `${(v * 100).toPrecision(3)}%`;
  if (kind === 'int' || Math.abs(v) >= 1000) return Math.abs(v) >= 1e15 ? v.toExponential(3) : Math.round(v).toLocaleString('en-US');
  if (v !== 0 && Math.abs(v) < 1e-3) return v.toExponential(3);
  const s = v.toPrecision(4);
  // Drop trailing zeros of the fraction only ("0.5000" -> "0.5", "120.0" -> "120").
  return s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s;
}

const CSS = `
body{font-family:Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px;margin-bottom:16px}
.cards{display:flex;flex-wrap:wrap;gap:16px}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:20px}
figure{margin:0;border:1px solid #e4e4e4;border-radius:4px;padding:8px;background:#fff;max-width:100%;overflow-x:auto}
figcaption{font-size:12px;color:#555;max-width:540px;margin-top:4px}
details{margin:8px 0}summary{cursor:pointer;font-weight:bold;font-size:14px}
pre{background:#f6f6f6;padding:8px;font-size:12px;overflow-x:auto}
.notes li{color:#8a4b00;font-size:13px}
code{font-size:12px}
`;

function table(head: string[], rows: string[][], numeric: boolean[] = []): string {
  const shown = rows.slice(0, MAX_TABLE_ROWS);
  const th = head.map((h) => `<th>${escapeHtml(h)}</th>`).join('');
  const body = shown.map((r) => `<tr>${r.map((c, i) => `<td${numeric[i] ? ' class="n"' : ''}>${c}</td>`).join('')}</tr>`).join('\n');
  const more = rows.length > shown.length ? `<p class="sub">${rows.length - shown.length} more rows not shown.</p>` : '';
  return `<table><thead><tr>${th}</tr></thead><tbody>\n${body}\n</tbody></table>${more}`;
}

function keyValues(pairs: [string, string][]): string {
  return `<table><tbody>${pairs.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${v}</td></tr>`).join('')}</tbody></table>`;
}

function figures(charts: RenderedChart[]): string {
  return `<div class="grid">${charts
    .map((c) => `<figure id="chart-${escapeHtml(c.id)}">${c.svg}${c.caption ? `<figcaption>${escapeHtml(c.caption)}</figcaption>` : ''}</figure>`)
    .join('\n')}</div>`;
}

function runSummary(m: NonNullable<PageInput['metrics']>): string {
  const s = m.summary;
  const ev = (label: string, e: typeof s.initialEval) =>
    [label, e ? `loss ${formatNumber(e.loss)} · ppl ${formatNumber(e.ppl)} (step ${e.step})` : '–'] as [string, string];
  return keyValues([
    ['metrics', `<code>${escapeHtml(m.file)}</code>`],
    ['optimizer steps', formatNumber(s.steps, 'int') + (s.phases > 1 ? ` in ${s.phases} phases` : '')],
    ['train loss (first → last)', `${formatNumber(s.firstLoss)} → ${formatNumber(s.lastLoss)}`],
    ev('eval before training', s.initialEval),
    ev('eval after training', s.finalEval),
    ['training tokens', formatNumber(s.tokens, 'int')],
    ['mean throughput', s.meanTokensPerSecond === undefined ? '–' : `${formatNumber(s.meanTokensPerSecond)} tokens/s`],
  ]);
}

function adapterSummary(a: NonNullable<PageInput['adapter']>, baseModel?: string): string {
  const { meta, stats } = a;
  const t = stats.totals;
  const pairs: [string, string][] = [
    ['adapter', `<code>${escapeHtml(a.dir)}</code>`],
    ['method · kind', `${escapeHtml(meta.method)} · ${escapeHtml(meta.kind)}`],
    ['base model', `${escapeHtml(meta.base.model || '(unknown)')}${meta.base.fingerprint ? ` <code>${escapeHtml(meta.base.fingerprint.slice(0, 24))}</code>` : ''}`],
    ['created', escapeHtml(meta.created)],
  ];
  if (baseModel) pairs.push(['shapes read from', `<code>${escapeHtml(baseModel)}</code>`]);
  if (t.deltaEntries) pairs.push(['delta entries', `${formatNumber(t.deltaEntries, 'int')}${t.deltaNumel ? ` of ${formatNumber(t.deltaNumel, 'int')} (${formatNumber(t.deltaEntries / t.deltaNumel, 'pct')} of the touched tensors)` : ''}`]);
  if (stats.masks.length) {
    const kept = stats.masks.reduce((n, m) => n + m.kept, 0);
    const numel = stats.masks.reduce((n, m) => n + m.numel, 0);
    pairs.push(['masked weights', `${stats.masks.length} tensor${stats.masks.length === 1 ? '' : 's'}, ${formatNumber(kept / numel, 'pct')} kept`]);
  }
  if (stats.lowrank.length) pairs.push(['low-rank pairs', `${stats.lowrank.length} (rank ${[...new Set(stats.lowrank.map((p) => p.rank))].join(', ')})`]);
  if (stats.blocks.length) pairs.push(['blocks changed', `${stats.blocks.filter((b) => b.alive).length} of ${stats.blocks.length}`]);
  if (stats.pruned) pairs.push(['hidden channels kept', `${stats.pruned.kept}${stats.pruned.total ? ` of ${stats.pruned.total}` : ''}`]);
  for (const [k, v] of Object.entries(meta.metrics)) pairs.push([`metric: ${k}`, escapeHtml(typeof v === 'number' ? formatNumber(v) : JSON.stringify(v))]);
  return keyValues(pairs);
}

function tensorTables(s: AdapterStats): string {
  const code = (n: string) => `<code>${escapeHtml(n)}</code>`;
  const parts: string[] = [];
  const section = (title: string, count: number, body: string) => parts.push(`<details><summary>${escapeHtml(title)} (${count})</summary>${body}</details>`);
  if (s.additive.length) {
    section('Additive deltas', s.additive.length, table(['parameter', 'entries', 'elements', 'density', 'mean |Δ|', 'max |Δ|'],
      s.additive.map((a) => [code(a.name), formatNumber(a.nnz, 'int'), formatNumber(a.numel, 'int'), formatNumber(a.density, 'pct'), formatNumber(a.meanAbs), formatNumber(a.maxAbs)]), [false, true, true, true, true, true]));
  }
  if (s.structured.length) {
    const list = (idx: Int32Array | null) => (idx === null ? 'all' : `${idx.length}: ${escapeHtml([...idx.slice(0, 12)].join(', '))}${idx.length > 12 ? ', …' : ''}`);
    section('Structured deltas', s.structured.length, table(['parameter', 'shape', 'rows', 'columns', 'entries', 'density', 'mean |Δ|'],
      s.structured.map((t) => [code(t.name), t.shape ? `${t.shape[0]}×${t.shape[1]}` : '–', list(t.rows), list(t.cols), formatNumber(t.entries, 'int'), formatNumber(t.density, 'pct'), formatNumber(t.meanAbs)]), [false, false, false, false, true, true, true]));
  }
  if (s.masks.length) {
    section('Masks', s.masks.length, table(['parameter', 'elements', 'kept', 'fraction kept', 'groups not N:M'],
      s.masks.map((m) => [code(m.name), formatNumber(m.numel, 'int'), formatNumber(m.kept, 'int'), formatNumber(m.fractionKept, 'pct'), m.nm ? formatNumber(m.nm.other, 'int') : '–']), [false, true, true, true, true]));
  }
  if (s.lowrank.length) {
    section('Low-rank pairs', s.lowrank.length, table(['parameter', 'rank', 'scale', '‖scale·B·A‖'],
      s.lowrank.map((p) => [code(p.name), String(p.rank), formatNumber(p.scale), formatNumber(p.deltaNorm)]), [false, true, true, true]));
  }
  if (s.blocks.length) {
    section('Blocks', s.blocks.length, table(['block', 'pairs', '‖ΔW‖', 'changed'],
      s.blocks.map((b) => [String(b.layer), String(b.pairs), formatNumber(b.deltaNorm), b.alive ? 'yes' : 'no']), [true, true, true, false]));
  }
  if (s.extra.length) {
    section('Auxiliary tensors', s.extra.length, table(['tensor', 'shape', 'norm'], s.extra.map((e) => [code(e.name), e.shape.join('×'), formatNumber(e.norm)]), [false, false, true]));
  }
  if (s.pruned) {
    const p = s.pruned;
    section('Kept hidden channels', p.kept, `<pre>${escapeHtml([...p.keptChannels].join(', '))}</pre>`);
  }
  return parts.join('\n');
}

/** The whole page. */
export function renderPage(p: PageInput): string {
  const body: string[] = [];
  body.push(`<h1>${escapeHtml(p.title)}</h1><div class="sub">Run <code>${escapeHtml(p.runDir)}</code> · generated ${escapeHtml(p.generated)} by sparsetune</div>`);
  body.push('<div class="cards">');
  if (p.metrics) body.push(`<section><h2>Training</h2>${runSummary(p.metrics)}</section>`);
  if (p.adapter) body.push(`<section><h2>Adapter</h2>${adapterSummary(p.adapter, p.baseModel)}</section>`);
  body.push('</div>');
  if (p.trainingCharts.length) body.push(`<h2>Training curves</h2>${figures(p.trainingCharts)}`);
  if (p.adapter) {
    body.push(`<h2>Adapter statistics (${escapeHtml(p.adapter.meta.kind)})</h2>`);
    body.push(p.adapterCharts.length ? figures(p.adapterCharts) : '<p class="sub">This adapter has no payload to chart.</p>');
    body.push(tensorTables(p.adapter.stats));
    body.push(`<details><summary>Method config</summary><pre>${escapeHtml(JSON.stringify(p.adapter.meta.config, null, 2))}</pre></details>`);
  }
  if (p.notes.length) body.push(`<h2>Notes</h2><ul class="notes">${p.notes.map((n) => `<li>${escapeHtml(n)}</li>`).join('')}</ul>`);
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>${escapeHtml(p.title)}</title><style>${CSS}</style></head>
<body>
${body.join('\n')}
</body></html>
`;
}
