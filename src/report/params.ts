/** Naming helpers shared by the report's statistics: which block and module a parameter belongs to. */

/** Where a parameter sits: its block (null outside the blocks) and its module's short name. */
export interface ParamLocation {
  layer: number | null;
  module: string;
}

/** `model.layers.3.mlp.down_proj.weight` -> layer 3, module `down_proj`; `lm_head.weight` -> null, `lm_head`. */
export function locateParam(name: string): ParamLocation {
  const m = /(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\./.exec(name);
  const parts = name.split('.');
  const last = parts[parts.length - 1];
  const module = (last === 'weight' || last === 'bias') && parts.length > 1 ? parts[parts.length - 2] : last;
  return { layer: m ? Number(m[1]) : null, module };
}

/** Order for tables and charts: by block, then outside-block params, then name. */
export function compareParams(a: string, b: string): number {
  const la = locateParam(a).layer ?? Infinity;
  const lb = locateParam(b).layer ?? Infinity;
  if (la !== lb) return la < lb ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}
