/**
 * Sites and hooks: how adapters and masks reach into a model graph. Every Linear is a
 * site named by its HF module path; hooks can wrap a site's matmul, transform a parameter
 * as it enters the graph, or touch the residual stream.
 */
import type { Graph, Value } from '../engine/ir.js';
import { isAllLinear, isTargetModule, type TargetRules } from './targets.js';

/** One Linear layer of the model, named like PEFT's target modules. */
export interface LinearSite {
  /** HF module path, e.g. `model.layers.3.mlp.down_proj`. */
  name: string;
  /** Last path component: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head, c_attn, c_proj, c_fc. */
  kind: string;
  /** Block index; null for layers outside the blocks (lm_head). */
  layer: number | null;
  inFeatures: number;
  outFeatures: number;
  weightName: string;
  biasName?: string;
  /** HF Linear stores [out, in]; GPT-2's Conv1D stores [in, out]. */
  layout: 'out_in' | 'in_out';
}

export type ResidualKind = 'embed' | 'attn' | 'mlp';

export interface ModelHooks {
  /** Transform a parameter as it enters the graph (e.g. W ⊙ mask). */
  param?(name: string, value: Value, g: Graph): Value;
  /** Wrap a linear layer; `base(x)` is the frozen layer (after param transforms). */
  linear?(site: LinearSite, x: Value, base: (x: Value) => Value, g: Graph): Value;
  /** Transform a write into the residual stream (embedding output, attention output, MLP output). */
  residual?(kind: ResidualKind, layer: number, h: Value, g: Graph): Value;
  /** Parallel branch beside a block's MLP: gets the block input (pre-norm) and the MLP output. */
  mlp?(layer: number, blockInput: Value, mlpOut: Value, g: Graph): Value;
}

/** Chain several hook sets; earlier sets sit closer to the base model. */
export function composeHooks(list: ModelHooks[]): ModelHooks {
  const hs = list.filter(Boolean);
  if (hs.length <= 1) return hs[0] ?? {};
  return {
    param: (name, v, g) => hs.reduce((acc, h) => (h.param ? h.param(name, acc, g) : acc), v),
    linear: (site, x, base, g) => {
      let f = base;
      for (const h of hs) {
        if (!h.linear) continue;
        const inner = f;
        f = (xx) => h.linear!(site, xx, inner, g);
      }
      return f(x);
    },
    residual: (kind, layer, v, g) => hs.reduce((acc, h) => (h.residual ? h.residual(kind, layer, acc, g) : acc), v),
    mlp: (layer, x, out, g) => hs.reduce((acc, h) => (h.mlp ? h.mlp(layer, x, acc, g) : acc), out),
  };
}

/**
 * Whether a site matches target modules by PEFT's rules (models/targets.ts): list entries
 * match the full module path or a dotted suffix of it (`q_proj`, `self_attn.q_proj`), one
 * string is a regex over the whole path, `"all-linear"` is every site but the output head.
 */
export function matchesTarget(site: LinearSite, targets: string[] | string | TargetRules): boolean {
  const rules: TargetRules = typeof targets === 'string' || Array.isArray(targets) ? { targetModules: targets } : targets;
  if (isAllLinear(rules.targetModules)) {
    if (site.kind === 'lm_head') return false;
    // PEFT turns "all-linear" into the list of full names, which match exactly: layersToTransform does not apply.
    return isTargetModule(site.name, { ...rules, targetModules: [site.name] });
  }
  return isTargetModule(site.name, rules);
}

