/**
 * The in-memory adapter model (DESIGN.md §5). An adapter holds per-parameter payloads
 * keyed by Hugging Face parameter name (`model.layers.3.mlp.down_proj.weight`); base
 * weights are row-major [out, in].
 *
 * Semantics (implemented by reduce.ts, used by apply.ts and compose.ts):
 * - Within one adapter, every element's contributions (additive value, structured value,
 *   scale·(B·A) of a low-rank pair computed in float64) are summed in float64 in a
 *   canonical order and rounded once to float32: the adapter's delta d for that element.
 * - Applying a set of adapters: D = float32(canonical float64 sum of their deltas d),
 *   w = float32(w0 + D); then masks apply last: an element any applied mask clears is 0.
 *   The result depends only on the set, never on the order.
 */
import type { HostTensor } from '../tensor.js';

export const ADAPTER_FORMAT = 'sparsetune.adapter/1';

export type AdapterKind = 'additive' | 'structured' | 'mask' | 'lowrank' | 'pruned';
export const ADAPTER_KINDS: readonly AdapterKind[] = ['additive', 'structured', 'mask', 'lowrank', 'pruned'];

/** adapter.json minus the per-payload bookkeeping the file format adds. */
export interface AdapterMeta {
  format: typeof ADAPTER_FORMAT;
  method: string;
  kind: AdapterKind;
  /** `fingerprint` '' means unknown (e.g. an imported PEFT adapter): it is then never checked. */
  base: { model: string; fingerprint: string };
  config: Record<string, unknown>;
  /** ISO 8601 time of export. */
  created: string;
  metrics: Record<string, unknown>;
}

/** Sparse delta: w[indices[k]] += values[k]; indices are flat, strictly increasing. */
export interface AdditiveDelta {
  indices: Int32Array;
  values: Float32Array;
}

/**
 * Dense delta on a sub-block: rows x cols of a 2-D parameter. `rows`/`cols` are strictly
 * increasing; absent means "all rows" / "all columns". `values` is row-major
 * [rows.length or all rows, cols.length or all cols]. `shape` is the full parameter shape
 * [out, in]; set it when building the delta (saveAdapter and composeAdapters need it when
 * `cols` is given or both are absent, unless shapes are passed to them).
 */
export interface StructuredDelta {
  rows?: Int32Array;
  cols?: Int32Array;
  values: Float32Array;
  shape?: [number, number];
}

/** Bit-packed 0/1 mask (bits.ts layout); 1 = keep the weight, 0 = set it to zero. */
export interface MaskPayload {
  bits: Uint8Array;
  numel: number;
}

/**
 * LoRA-style pair for a 2-D weight keyed by its parameter name (must end in `.weight`):
 * W += scale · B · A with A [r, in], B [out, r]. `biasDelta` is PEFT's `lora_B.bias`
 * (length out): the module's `.bias` parameter gets += scale · biasDelta.
 */
export interface LowRankPair {
  A: HostTensor<'f32'>;
  B: HostTensor<'f32'>;
  scale: number;
  biasDelta?: Float32Array;
}

/**
 * Structural pruning (PAT): the hidden channels that survive and the HF config of the
 * smaller model. It cannot be fused in place (shapes change); `sparsetune merge` exports
 * it. Any tensors a pruned export needs besides these go in `Adapter.extra`.
 */
export interface PrunedPayload {
  keptChannels: Int32Array;
  configJson: Record<string, unknown>;
}

export interface Adapter {
  meta: AdapterMeta;
  additive: Map<string, AdditiveDelta>;
  structured: Map<string, StructuredDelta>;
  masks: Map<string, MaskPayload>;
  lowrank: Map<string, LowRankPair>;
  pruned?: PrunedPayload;
  /** Auxiliary tensors carried with the adapter (saved as `extra.<name>`); never applied to the base. */
  extra?: Map<string, HostTensor>;
}

/** An empty adapter with `format` and `created` filled in. */
export function newAdapter(meta: Omit<AdapterMeta, 'format' | 'created' | 'config' | 'metrics'> & Partial<AdapterMeta>): Adapter {
  return {
    meta: {
      format: ADAPTER_FORMAT,
      config: {},
      metrics: {},
      created: new Date().toISOString(),
      ...meta,
    },
    additive: new Map(),
    structured: new Map(),
    masks: new Map(),
    lowrank: new Map(),
  };
}

/** The module path of a weight parameter (`x.q_proj.weight` -> `x.q_proj`), or null if not a `.weight`. */
export function moduleOfWeight(paramName: string): string | null {
  return paramName.endsWith('.weight') ? paramName.slice(0, -'.weight'.length) : null;
}

/** The bias parameter that a low-rank pair on `weightName` touches through `biasDelta`. */
export function biasParamOf(weightName: string): string {
  return `${moduleOfWeight(weightName) ?? weightName}.bias`;
}
