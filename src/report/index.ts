/** Run reports: metrics.jsonl and adapter statistics rendered as an HTML page with SVG charts. */
export { writeRunReport, METRICS_FILE, REPORT_HTML, CHARTS_DIR, type ReportOptions, type ReportResult } from './run-report.js';
export { parseMetrics, readRunMetrics, summarizeRun, type RunMetrics, type RunSummary, type StepPoint, type EvalPoint } from './metrics.js';
export { adapterStats, lowRankNorm, type AdapterStats, type AdditiveStat, type StructuredStat, type LowRankStat, type BlockStat, type PrunedStat } from './adapter-stats.js';
export { maskStats, countNmPatterns, nmPatterns, type MaskStat, type NmStat } from './mask-stats.js';
export { locateParam, compareParams, type ParamLocation } from './params.js';
export { readBaseInfo, type BaseInfo } from './base-info.js';
export { renderSvg, type ChartSpec } from './vega.js';
export { trainingCharts, type Chart } from './training-charts.js';
export { adapterCharts } from './adapter-charts.js';
