/**
 * Vega-Lite specs for the training curves of a run: train/eval loss, learning rate,
 * throughput and gradient norm over optimizer steps. A chart with no data is left out.
 */
import type { RunMetrics, StepPoint } from './metrics.js';
import type { ChartSpec } from './vega.js';

/** A chart for the page: `id` names its SVG file, `title` heads it. */
export interface Chart {
  id: string;
  title: string;
  /** One sentence under the chart saying how to read it. */
  caption?: string;
  spec: ChartSpec;
}

export const CHART_WIDTH = 440;
const HEIGHT = 200;

const stepAxis = { field: 'step', type: 'quantitative', title: 'step', axis: { tickMinStep: 1 } } as const;

/** A line over steps of one StepPoint field, or null when no step has it. */
function stepLine(
  m: RunMetrics,
  pick: (s: StepPoint) => number | undefined,
  c: { id: string; title: string; yTitle: string; caption?: string; logScale?: boolean; format?: string },
): Chart | null {
  const values = m.steps.flatMap((s) => {
    const v = pick(s);
    return v === undefined || (c.logScale && v <= 0) ? [] : [{ step: s.step, value: v }];
  });
  if (!values.length) return null;
  return {
    id: c.id,
    title: c.title,
    caption: c.caption,
    spec: {
      title: c.title,
      width: CHART_WIDTH,
      height: HEIGHT,
      data: { values },
      mark: { type: 'line', point: values.length <= 40, interpolate: 'linear' },
      encoding: {
        x: stepAxis,
        y: {
          field: 'value',
          type: 'quantitative',
          title: c.yTitle,
          scale: c.logScale ? { type: 'log' } : { zero: false },
          ...(c.format ? { axis: { format: c.format } } : {}),
        },
      },
    },
  };
}

/** Train loss per step and eval loss per evaluation on one chart (one line each, coloured). */
export function lossChart(m: RunMetrics): Chart | null {
  const multiPhase = new Set(m.steps.map((s) => s.phase)).size > 1;
  const values: { step: number; loss: number; series: string }[] = [];
  for (const s of m.steps) {
    if (s.loss !== undefined) values.push({ step: s.step, loss: s.loss, series: multiPhase ? `train (phase ${s.phase + 1})` : 'train' });
  }
  for (const e of m.evals) if (e.loss !== undefined) values.push({ step: e.step, loss: e.loss, series: 'eval' });
  if (!values.length) return null;
  return {
    id: 'loss',
    title: 'Loss',
    caption: 'Training loss of every optimizer step and held-out (eval) loss at each evaluation; step 0 is the base model before training.',
    spec: {
      title: 'Loss',
      width: CHART_WIDTH,
      height: HEIGHT,
      data: { values },
      encoding: {
        x: stepAxis,
        y: { field: 'loss', type: 'quantitative', title: 'loss (nats/token)', scale: { zero: false } },
        color: { field: 'series', type: 'nominal', title: null, sort: null, legend: { orient: 'top', direction: 'horizontal' } },
      },
      layer: [
        { mark: { type: 'line', strokeWidth: 1.5 } },
        // Train steps are many: points only when few; eval points always, and larger.
        { mark: { type: 'point', filled: true, size: 45 }, transform: [{ filter: "datum.series === 'eval'" }] },
        ...(values.length <= 60 ? [{ mark: { type: 'point' as const, filled: true, size: 14 }, transform: [{ filter: "datum.series !== 'eval'" }] }] : []),
      ],
    },
  };
}

/** Every training chart that has data, in page order. */
export function trainingCharts(m: RunMetrics): Chart[] {
  const charts = [
    lossChart(m),
    stepLine(m, (s) => s.lr, { id: 'learning-rate', title: 'Learning rate', yTitle: 'learning rate', format: '.1e', caption: 'The scheduled learning rate of each step (warm-up and decay).' }),
    stepLine(m, (s) => s.tokensPerSecond, { id: 'tokens-per-second', title: 'Throughput', yTitle: 'tokens / s', format: '~s', caption: 'Training tokens processed per second (forward, backward and optimizer).' }),
    stepLine(m, (s) => s.gradNorm, { id: 'grad-norm', title: 'Gradient norm', yTitle: 'norm before clipping', caption: 'Global L2 norm of the gradient of each step, before clipping (log scale).', logScale: true }),
  ];
  return charts.filter((c): c is Chart => c !== null);
}
