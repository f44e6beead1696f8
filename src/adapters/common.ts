/** Helpers the adapter modules share: site selection, initializers, param declaration. */
import type { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { Graph, Value } from '../engine/ir.js';
import type { CausalLM } from '../models/causal-lm.js';
import { matchesTarget, type LinearSite } from '../models/hooks.js';
import type { TargetRules } from '../models/targets.js';
import { normalizePeftFields } from './peft-config.js';
import type { TrainableParam } from '../train/method.js';
import { xorshift32, type Rng } from '../util/random.js';

/**
 * Sites selected by target modules with PEFT's rules (models/targets.ts: names or dotted
 * suffixes, one whole-name regex, "all-linear", plus excludeModules / layersToTransform /
 * modulesToSave); an empty selection is an error listing valid names.
 */
export function selectSites(model: CausalLM, targets: string[] | string | TargetRules, opts: { excludeLmHead?: boolean } = {}): LinearSite[] {
  const all = model.sites().filter((s) => !(opts.excludeLmHead ?? true) || s.kind !== 'lm_head');
  const chosen = all.filter((s) => matchesTarget(s, targets));
  if (chosen.length === 0) {
    const kinds = [...new Set(all.map((s) => s.kind))].join(', ');
    const shown = typeof targets === 'string' || Array.isArray(targets) ? targets : targets.targetModules;
    throw new SparsetuneError(
      'BAD_CONFIG',
      `target modules ${JSON.stringify(shown)} match no layer of this ${model.config.modelType} model; valid module names: ${kinds} (or a full path, a regex matching a whole path such as ".*\\.(q|v)_proj", or "all-linear")`,
    );
  }
  return chosen;
}

/**
 * The seeded uniforms in [0, 1) that adapter init, selection and per-step noise draw from
 * (xorshift32 on a mixed seed; its sequence fixes every method's initial params).
 */
export function initRng(seed: number): Rng {
  return xorshift32(seed ^ 0x2545f491);
}

/** Kaiming-uniform with a = sqrt(5) (PyTorch's Linear default): U(-1/sqrt(fanIn), 1/sqrt(fanIn)). */
export function kaimingUniform(n: number, fanIn: number, rand: () => number): Float32Array {
  const bound = 1 / Math.sqrt(fanIn);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (rand() * 2 - 1) * bound;
  return out;
}

/** Standard normal samples (Box-Muller) scaled by std. */
export function normalInit(n: number, std: number, rand: () => number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(rand(), 1e-12);
    const v = rand();
    const r = Math.sqrt(-2 * Math.log(u)) * std;
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** Declare (once per graph) the graph input for a trainable param. */
export function paramValue(g: Graph, p: TrainableParam): Value {
  return g.inputs.find((v) => v.name === p.name) ?? g.input(p.name, 'f32', p.shape);
}

/**
 * A method's config validated by its zod schema (defaults filled in); a bad one is a
 * BAD_CONFIG error listing every problem. PEFT's snake_case names (`target_modules`,
 * `lora_alpha`, ...) are accepted for the matching fields (adapters/peft-config.ts).
 */
export function parseMethodConfig<S extends z.ZodType>(method: string, schema: S, config: unknown): z.output<S> {
  const shape = (schema as unknown as { shape?: Record<string, unknown> }).shape;
  const input = config && typeof config === 'object' && !Array.isArray(config) ? normalizePeftFields(method, shape, config as Record<string, unknown>) : config;
  const parsed = schema.safeParse(input);
  if (!parsed.success) throw new SparsetuneError('BAD_CONFIG', zodMessage(method, parsed.error.issues));
  return parsed.data;
}

/** Format zod issues as one line. */
export function zodMessage(method: string, issues: { path: PropertyKey[]; message: string }[]): string {
  return `${method} config: ${issues.map((i) => `${i.path.map(String).join('.') || '(root)'}: ${i.message}`).join('; ')}`;
}
