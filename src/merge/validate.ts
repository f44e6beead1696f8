/**
 * Structural checks on an in-memory adapter, run on load and before any weight is touched
 * (so a bad adapter can never leave the base half-patched). With `shapes` (the base
 * parameter shapes) every index is also range-checked against its parameter.
 */
import { SparsetuneError } from '../errors.js';
import { numel } from '../tensor.js';
import { packedLength, paddingIsClear } from './bits.js';
import { ADAPTER_FORMAT, ADAPTER_KINDS, biasParamOf, moduleOfWeight, type Adapter, type StructuredDelta } from './types.js';

export interface ValidateOptions {
  /** Base parameter shapes; enables name and range checks. */
  shapes?: Map<string, number[]>;
  /** What to call the adapter in messages (its directory, or a description). */
  source?: string;
  /** The fix to suggest; defaults to re-exporting. */
  fix?: string;
}

const DEFAULT_FIX = 're-export the adapter (the file is corrupted or was not written by sparsetune), or fix the code that built it';

/** Throw BAD_ADAPTER unless `a` is well-formed (and fits `shapes` when given). */
export function validateAdapter(a: Adapter, opts: ValidateOptions = {}): void {
  const source = opts.source ?? `adapter "${a.meta?.method ?? '?'}"`;
  const fix = opts.fix ?? DEFAULT_FIX;
  const fail = (what: string): never => {
    throw new SparsetuneError('BAD_ADAPTER', `${source}: ${what}; ${fix}.`);
  };
  const shapes = opts.shapes;
  const shapeOf = (name: string, role: string): number[] | undefined => {
    if (!shapes) return undefined;
    const s = shapes.get(name);
    if (!s) fail(`${role} targets "${name}", which the base model does not have (wrong base model?)`);
    return s;
  };

  if (a.meta.format !== ADAPTER_FORMAT) fail(`format is "${a.meta.format}", expected "${ADAPTER_FORMAT}"`);
  if (!ADAPTER_KINDS.includes(a.meta.kind)) fail(`kind "${a.meta.kind}" is not one of ${ADAPTER_KINDS.join(', ')}`);
  if ((a.meta.kind === 'pruned') !== (a.pruned !== undefined)) fail(`kind "${a.meta.kind}" and the pruned payload disagree (pruned data goes with kind "pruned" only)`);

  for (const [name, d] of a.additive) {
    const where = `additive delta "${name}"`;
    if (!(d.indices instanceof Int32Array) || !(d.values instanceof Float32Array)) fail(`${where} needs Int32Array indices and Float32Array values`);
    if (d.indices.length !== d.values.length) fail(`${where} has ${d.indices.length} indices but ${d.values.length} values`);
    const shape = shapeOf(name, where);
    checkIncreasing(d.indices, shape ? numel(shape) : Infinity, `${where} indices`, fail);
    checkFinite(d.values, `${where} values`, fail);
  }

  for (const [name, d] of a.structured) checkStructured(name, d, shapeOf(name, `structured delta "${name}"`), fail);

  for (const [name, m] of a.masks) {
    const where = `mask "${name}"`;
    if (!(m.bits instanceof Uint8Array)) fail(`${where} bits must be a Uint8Array`);
    if (!Number.isSafeInteger(m.numel) || m.numel < 1) fail(`${where} numel ${m.numel} must be a positive integer`);
    if (m.bits.length !== packedLength(m.numel)) fail(`${where} has ${m.bits.length} bytes, ${m.numel} bits need ${packedLength(m.numel)}`);
    if (!paddingIsClear(m.bits, m.numel)) fail(`${where} has nonzero padding bits after element ${m.numel}`);
    const shape = shapeOf(name, where);
    if (shape && numel(shape) !== m.numel) fail(`${where} covers ${m.numel} elements but the parameter [${shape}] has ${numel(shape)}`);
  }

  for (const [name, p] of a.lowrank) {
    const where = `low-rank pair "${name}"`;
    if (moduleOfWeight(name) === null) fail(`${where}: low-rank pairs are keyed by a weight parameter name ending in ".weight"`);
    if (p.A?.dtype !== 'f32' || p.B?.dtype !== 'f32') fail(`${where}: A and B must be f32 tensors`);
    if (p.A.shape.length !== 2 || p.B.shape.length !== 2) fail(`${where}: A [r, in] and B [out, r] must be 2-D, got [${p.A.shape}] and [${p.B.shape}]`);
    if (p.A.data.length !== numel(p.A.shape) || p.B.data.length !== numel(p.B.shape)) fail(`${where}: tensor data length does not match its shape`);
    const [r, inDim] = p.A.shape;
    const [outDim, rB] = p.B.shape;
    if (r < 1 || r !== rB) fail(`${where}: rank of A [${p.A.shape}] and B [${p.B.shape}] must agree and be >= 1`);
    if (!Number.isFinite(p.scale)) fail(`${where}: scale ${p.scale} is not finite`);
    checkFinite(p.A.data, `${where} A`, fail);
    checkFinite(p.B.data, `${where} B`, fail);
    const shape = shapeOf(name, where);
    if (shape && (shape.length !== 2 || shape[0] !== outDim || shape[1] !== inDim)) {
      fail(`${where}: B·A is [${outDim}, ${inDim}] but the parameter is [${shape}]`);
    }
    if (p.biasDelta !== undefined) {
      if (!(p.biasDelta instanceof Float32Array) || p.biasDelta.length !== outDim) fail(`${where}: biasDelta must be a Float32Array of length ${outDim}`);
      checkFinite(p.biasDelta, `${where} biasDelta`, fail);
      const biasShape = shapeOf(biasParamOf(name), `${where} biasDelta`);
      if (biasShape && numel(biasShape) !== outDim) fail(`${where}: bias "${biasParamOf(name)}" has ${numel(biasShape)} elements, biasDelta has ${outDim}`);
    }
  }

  if (a.pruned) {
    if (!(a.pruned.keptChannels instanceof Int32Array) || a.pruned.keptChannels.length === 0) fail('pruned payload needs a non-empty Int32Array keptChannels');
    checkIncreasing(a.pruned.keptChannels, Infinity, 'pruned keptChannels', fail);
    const cfg = a.pruned.configJson;
    if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) fail('pruned configJson must be a JSON object');
  }

  for (const [name, t] of a.extra ?? []) {
    if (!t || t.data.length !== numel(t.shape)) fail(`extra tensor "${name}" has data that does not match its shape`);
  }
}

/** Rows/cols strictly increasing and in range, value count consistent with the block. */
function checkStructured(name: string, d: StructuredDelta, shape: number[] | undefined, fail: (w: string) => never): void {
  const where = `structured delta "${name}"`;
  if (!(d.values instanceof Float32Array)) fail(`${where} values must be a Float32Array`);
  if (d.rows !== undefined && !(d.rows instanceof Int32Array)) fail(`${where} rows must be an Int32Array`);
  if (d.cols !== undefined && !(d.cols instanceof Int32Array)) fail(`${where} cols must be an Int32Array`);
  if (shape && shape.length !== 2) fail(`${where} targets a parameter of shape [${shape}]; structured deltas need 2-D parameters`);
  if (d.shape !== undefined) {
    if (d.shape.length !== 2 || !d.shape.every((x) => Number.isSafeInteger(x) && x > 0)) fail(`${where} shape [${d.shape}] must be two positive integers`);
    if (shape && (shape[0] !== d.shape[0] || shape[1] !== d.shape[1])) fail(`${where} says shape [${d.shape}] but the parameter is [${shape}]`);
  }
  const full = shape ?? d.shape;
  if (d.rows) checkIncreasing(d.rows, full ? full[0] : Infinity, `${where} rows`, fail);
  if (d.cols) checkIncreasing(d.cols, full ? full[1] : Infinity, `${where} cols`, fail);
  if (d.rows?.length === 0 || d.cols?.length === 0) fail(`${where} has an empty rows or cols list`);
  const rowCount = d.rows?.length ?? full?.[0];
  const colCount = d.cols?.length ?? full?.[1];
  if (rowCount !== undefined && colCount !== undefined) {
    if (d.values.length !== rowCount * colCount) fail(`${where} has ${d.values.length} values, the ${rowCount} x ${colCount} block needs ${rowCount * colCount}`);
  } else {
    const known = rowCount ?? colCount;
    if (known !== undefined && d.values.length % known !== 0) fail(`${where} has ${d.values.length} values, not a multiple of its ${known} rows/cols`);
  }
  checkFinite(d.values, `${where} values`, fail);
}

function checkIncreasing(a: Int32Array, bound: number, what: string, fail: (w: string) => never): void {
  let prev = -1;
  for (let i = 0; i < a.length; i++) {
    const v = a[i];
    if (v <= prev) fail(`${what} must be strictly increasing and >= 0, but entry ${i} is ${v} after ${prev}`);
    prev = v;
  }
  if (a.length > 0 && a[a.length - 1] >= bound) fail(`${what} entry ${a[a.length - 1]} is out of range (size ${bound})`);
}

function checkFinite(a: Float32Array, what: string, fail: (w: string) => never): void {
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) fail(`${what}: entry ${i} is ${a[i]} (values must be finite)`);
  }
}
