/**
 * Chart rendering: Vega-Lite specs compiled to Vega and rendered to SVG strings in Node
 * (Vega's SVG renderer needs no canvas and no browser). The packages load on first use so
 * the rest of sparsetune never pays for them, and the Vega loader refuses every URL and
 * file: the report embeds its data, and rendering must never reach the network.
 */
import type { Loader } from 'vega';
import type { TopLevelSpec } from 'vega-lite';
import { SparsetuneError } from '../errors.js';

export type ChartSpec = TopLevelSpec;

type VegaModule = typeof import('vega');
type VegaLiteModule = typeof import('vega-lite');

let modules: Promise<{ vega: VegaModule; vl: VegaLiteModule }> | null = null;

const INSTALL_HINT = 'npm install vega@~6.4.0 vega-lite@~6.4.3';

async function loadModules(): Promise<{ vega: VegaModule; vl: VegaLiteModule }> {
  try {
    const [vega, vl] = await Promise.all([import('vega'), import('vega-lite')]);
    return { vega, vl };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') {
      throw new SparsetuneError('NOT_FOUND', `the report's charts need the packages vega and vega-lite, which are not installed; run: ${INSTALL_HINT}`, { cause: err });
    }
    throw err;
  }
}

function vegaModules(): Promise<{ vega: VegaModule; vl: VegaLiteModule }> {
  modules ??= loadModules().catch((err: unknown) => {
    modules = null; // let a later call retry (e.g. after installing the packages)
    throw err;
  });
  return modules;
}

/** A Vega loader that refuses to load anything: every chart's data is inline. */
function offlineLoader(vega: VegaModule): Loader {
  const refuse = (what: unknown): Promise<never> =>
    Promise.reject(new SparsetuneError('BAD_ARGUMENT', `report charts embed their data; refusing to load ${JSON.stringify(what)}`));
  return { ...vega.loader(), load: refuse, sanitize: refuse, http: refuse, file: refuse } as Loader;
}

/** Shared look of every chart (fonts, grid, padding). */
export const CHART_CONFIG: NonNullable<TopLevelSpec['config']> = {
  font: 'Helvetica, Arial, sans-serif',
  background: 'white',
  padding: 8,
  view: { stroke: '#ddd' },
  title: { fontSize: 14, anchor: 'start', offset: 8 },
  axis: { labelFontSize: 11, titleFontSize: 12, gridColor: '#eee' },
  legend: { labelFontSize: 11, titleFontSize: 11 },
};

/** Render one Vega-Lite spec to a standalone SVG document string. */
export async function renderSvg(spec: ChartSpec): Promise<string> {
  const { vega, vl } = await vegaModules();
  const compiled = vl.compile({ config: CHART_CONFIG, ...spec }).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none', loader: offlineLoader(vega), logLevel: vega.Warn });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
