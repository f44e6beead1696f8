/**
 * Vega-Lite specs for an adapter's statistics: where a sparse delta's entries sit (layer ×
 * module), which rows/columns a structured delta trains, how much of each weight a mask
 * keeps and with which N:M patterns, the low-rank update per block (GS-LoRA's surviving
 * blocks) and the hidden channels a pruned model keeps. Only charts with data are made.
 */
import type { AdapterStats, StructuredStat } from './adapter-stats.js';
import { CHART_WIDTH, type Chart } from './training-charts.js';
import type { ChartSpec } from './vega.js';

/** Most bins a row/column/channel strip is drawn with (wider dimensions are binned). */
export const MAX_BINS = 128;

const layerLabel = (layer: number | null): string => (layer === null ? 'other' : String(layer));

/** Modules in the order data flows through a block; unknown names follow, alphabetically. */
const MODULE_ORDER = ['embed_tokens', 'wte', 'wpe', 'input_layernorm', 'ln_1', 'q_proj', 'k_proj', 'v_proj', 'c_attn', 'o_proj', 'post_attention_layernorm', 'ln_2', 'gate_proj', 'up_proj', 'c_fc', 'down_proj', 'c_proj', 'norm', 'ln_f', 'lm_head'];

function sortModules(modules: Iterable<string>): string[] {
  const rank = (m: string) => {
    const i = MODULE_ORDER.indexOf(m);
    return i < 0 ? MODULE_ORDER.length : i;
  };
  return [...new Set(modules)].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
}

/** Largest element (a loop: spreading a long array into Math.max can overflow the stack). */
function maxOf(xs: ArrayLike<number>, empty = 0): number {
  let m = -Infinity;
  for (let i = 0; i < xs.length; i++) if (xs[i] > m) m = xs[i];
  return xs.length ? m : empty;
}

/** Layer × module heatmap of one number per parameter, with the number written in each cell. */
function layerModuleHeatmap(
  id: string,
  title: string,
  caption: string,
  cells: { layer: number | null; module: string; value: number }[],
  legend: string,
  format: string,
  domain?: [number, number],
): Chart {
  const layers = [...new Set(cells.map((c) => c.layer))].sort((a, b) => (a ?? Infinity) - (b ?? Infinity));
  const max = domain ? domain[1] : Math.max(0, maxOf(cells.map((c) => c.value)));
  // Dark cells get white labels; decided here so the spec needs no expressions.
  const values = cells.map((c) => ({ layer: layerLabel(c.layer), module: c.module, value: c.value, dark: max > 0 && c.value > 0.6 * max }));
  const cellSize = Math.max(14, Math.min(28, Math.floor(360 / Math.max(1, layers.length))));
  const y = { field: 'layer', type: 'ordinal', title: 'block', sort: layers.map(layerLabel) } as const;
  const x = { field: 'module', type: 'nominal', title: 'module', sort: sortModules(cells.map((c) => c.module)), axis: { labelAngle: -30 } } as const;
  return {
    id,
    title,
    caption,
    spec: {
      title,
      width: { step: 72 },
      height: { step: cellSize },
      data: { values },
      encoding: { x, y },
      layer: [
        { mark: 'rect', encoding: { color: { field: 'value', type: 'quantitative', title: legend, scale: { scheme: 'blues', zero: true, ...(domain ? { domain } : {}) }, legend: { format } } } },
        {
          mark: { type: 'text', fontSize: 10 },
          encoding: {
            text: { field: 'value', type: 'quantitative', format },
            color: { condition: { test: 'datum.dark', value: 'white' }, value: 'black' },
          },
        },
      ],
    },
  };
}

/** Bins of a 0/1 selection over [0, dim): the fraction selected in each bin. */
export function binSelection(indices: Int32Array | null, dim: number, maxBins = MAX_BINS): { start: number; end: number; fraction: number }[] {
  const bins = Math.max(1, Math.min(dim, maxBins));
  const width = dim / bins;
  const counts = new Array<number>(bins).fill(0);
  if (indices === null) counts.fill(width);
  else for (const i of indices) if (i >= 0 && i < dim) counts[Math.min(bins - 1, Math.floor(i / width))]++;
  return counts.map((c, b) => {
    const start = Math.round(b * width);
    const end = Math.round((b + 1) * width);
    return { start, end, fraction: c / Math.max(1, end - start) };
  });
}

function structuredStrips(s: StructuredStat): { label: string; start: number; end: number; fraction: number }[] {
  const out: { label: string; start: number; end: number; fraction: number }[] = [];
  const name = `${s.layer === null ? '' : `L${s.layer} `}${s.module}`;
  const add = (axis: 'rows' | 'cols', idx: Int32Array | null, dim: number | undefined) => {
    if (idx === null) return; // "all rows/cols" is not a selection
    const extent = dim ?? (idx.length ? maxOf(idx) + 1 : 1);
    for (const b of binSelection(idx, extent)) out.push({ label: `${name} ${axis}`, ...b });
  };
  add('rows', s.rows, s.shape?.[0]);
  add('cols', s.cols, s.shape?.[1]);
  return out;
}

function selectionStrip(id: string, title: string, caption: string, values: { label: string; start: number; end: number; fraction: number }[], xTitle: string, legend: string): Chart {
  const labels = [...new Set(values.map((v) => v.label))];
  return {
    id,
    title,
    caption,
    spec: {
      title,
      width: CHART_WIDTH,
      height: { step: labels.length > 40 ? 10 : 16 },
      data: { values },
      mark: { type: 'rect' },
      encoding: {
        x: { field: 'start', type: 'quantitative', title: xTitle, scale: { nice: false } },
        x2: { field: 'end' },
        y: { field: 'label', type: 'nominal', title: null, sort: labels },
        color: { field: 'fraction', type: 'quantitative', title: legend, scale: { scheme: 'blues', domain: [0, 1] } },
      },
    },
  };
}

/** Encoding channels of a single-view chart (x, y, color, tooltip, ...). */
type Encoding = NonNullable<Extract<ChartSpec, { mark: unknown }>['encoding']>;

/** A bar chart of `values` at the page's width and the usual height. */
function barChart(id: string, title: string, caption: string, values: object[], encoding: Encoding): Chart {
  return { id, title, caption, spec: { title, width: CHART_WIDTH, height: 200, data: { values }, mark: { type: 'bar' }, encoding } };
}

/** The x channel of a chart with one bar per transformer block. */
const BLOCK_AXIS = { field: 'block', type: 'ordinal', title: 'block', axis: { labelAngle: 0 } } as const;

function additiveCharts(s: AdapterStats): Chart[] {
  if (!s.additive.length) return [];
  const known = s.additive.every((a) => a.density !== undefined);
  return [
    layerModuleHeatmap(
      'additive-density',
      known ? 'Density of the sparse delta' : 'Entries of the sparse delta',
      known
        ? 'Fraction of each weight matrix the additive delta changes (stored entries / elements), per block and module.'
        : 'Stored entries of the additive delta per block and module (pass --model to see them as fractions of each weight).',
      s.additive.map((a) => ({ layer: a.layer, module: a.module, value: known ? a.density! : a.nnz })),
      known ? 'density' : 'entries',
      known ? '.1%' : '~s',
    ),
  ];
}

function structuredCharts(s: AdapterStats): Chart[] {
  const values = s.structured.flatMap(structuredStrips);
  if (!values.length) return [];
  return [
    selectionStrip(
      'structured-selection',
      'Selected rows and columns',
      'Each strip is one weight: shaded where its rows (outputs) or columns (inputs) are trained, binned when the dimension is wide.',
      values,
      'row / column index',
      'selected',
    ),
  ];
}

function maskCharts(s: AdapterStats): Chart[] {
  if (!s.masks.length) return [];
  const charts: Chart[] = [
    layerModuleHeatmap(
      'mask-kept',
      'Fraction of weights kept by the mask',
      'Share of each weight matrix the mask keeps (1 = untouched), per block and module.',
      s.masks.map((m) => ({ layer: m.layer, module: m.module, value: m.fractionKept })),
      'kept',
      '.0%',
      [0, 1],
    ),
  ];
  const withNm = s.masks.filter((m) => m.nm);
  if (withNm.length) {
    const { n, m } = withNm[0].nm!;
    const totals = new Map<string, number>();
    for (const t of withNm) for (const p of t.nm!.patterns) totals.set(p.pattern, (totals.get(p.pattern) ?? 0) + p.count);
    const other = withNm.reduce((acc, t) => acc + t.nm!.other, 0);
    const values = [...totals].map(([pattern, count]) => ({ pattern, count }));
    if (other > 0) values.push({ pattern: `not ${n}:${m}`, count: other });
    charts.push(
      barChart('nm-patterns', `${n}:${m} patterns used`, `How many groups of ${m} consecutive inputs use each pattern (1 = kept), over all masked weights.`, values, {
        x: { field: 'pattern', type: 'nominal', title: 'pattern', sort: null, axis: { labelAngle: 0, labelFont: 'monospace' } },
        y: { field: 'count', type: 'quantitative', title: 'groups' },
        tooltip: [{ field: 'pattern' }, { field: 'count' }],
      }),
    );
  }
  return charts;
}

function lowrankCharts(s: AdapterStats): Chart[] {
  if (!s.blocks.length) return [];
  const values = s.blocks.map((b) => ({ block: b.layer, norm: b.deltaNorm, state: b.alive ? 'changed' : 'untouched' }));
  const alive = s.blocks.filter((b) => b.alive).length;
  const charts: Chart[] = [
    barChart(
      'lowrank-blocks',
      `Low-rank update per block (${alive} of ${s.blocks.length} blocks changed)`,
      'Frobenius norm of scale·B·A summed over each block’s pairs; a block with no surviving pair (GS-LoRA’s group lasso) is untouched.',
      values,
      {
        x: BLOCK_AXIS,
        y: { field: 'norm', type: 'quantitative', title: '‖ΔW‖ (Frobenius)' },
        color: { field: 'state', type: 'nominal', title: null, scale: { domain: ['changed', 'untouched'], range: ['#4c78a8', '#bbbbbb'] } },
      },
    ),
  ];
  if (new Set(s.lowrank.map((p) => p.module)).size > 1) {
    charts.push(
      layerModuleHeatmap(
        'lowrank-modules',
        'Low-rank update per module',
        'Frobenius norm of each pair’s update scale·B·A, per block and module.',
        s.lowrank.map((p) => ({ layer: p.layer, module: p.module, value: p.deltaNorm })),
        '‖ΔW‖',
        '.2~g',
      ),
    );
  }
  return charts;
}

function prunedCharts(s: AdapterStats): Chart[] {
  const p = s.pruned;
  if (!p) return [];
  const total = p.total ?? (p.kept ? maxOf(p.keptChannels) + 1 : 1);
  const values = binSelection(p.keptChannels, total).map((b) => ({ label: 'hidden channels', ...b }));
  const title = p.total ? `Hidden channels kept: ${p.kept} of ${p.total}` : `Hidden channels kept: ${p.kept}`;
  return [
    selectionStrip('pruned-channels', title, 'Channels of the residual stream that survive pruning (shaded); the others are cut from every weight.', values, 'channel', 'kept'),
  ];
}

/** Per-block norm of auxiliary tensors (MoSA's unfused adapters, PAT's LoRA/HSM parts). */
function extraCharts(s: AdapterStats): Chart[] {
  const perBlock = new Map<number, number>();
  for (const e of s.extra) if (e.layer !== null) perBlock.set(e.layer, Math.hypot(perBlock.get(e.layer) ?? 0, e.norm));
  if (!perBlock.size) return [];
  const values = [...perBlock].sort(([a], [b]) => a - b).map(([block, norm]) => ({ block, norm }));
  return [
    barChart(
      'extra-blocks',
      'Auxiliary tensors per block',
      'Frobenius norm of the tensors the adapter carries beside the base weights (e.g. MoSA’s unfused branch), per block.',
      values,
      { x: BLOCK_AXIS, y: { field: 'norm', type: 'quantitative', title: '‖tensors‖ (Frobenius)' } },
    ),
  ];
}

/** Every adapter chart that has data, in page order. */
export function adapterCharts(s: AdapterStats): Chart[] {
  return [...additiveCharts(s), ...structuredCharts(s), ...maskCharts(s), ...lowrankCharts(s), ...prunedCharts(s), ...extraCharts(s)];
}
