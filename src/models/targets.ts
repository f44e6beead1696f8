/**
 * Which modules a method adapts, by Hugging Face PEFT's rules, so that a PEFT config means
 * the same modules here as in Python. Written from PEFT's `check_target_module_exists`,
 * `_maybe_include_all_linear_layers` (peft/tuners/tuners_utils.py), `get_pattern_key` and
 * `_set_trainable` (peft/utils/other.py). `key` is a module's full name in the base model
 * (`model.layers.3.mlp.down_proj`, `lm_head`).
 *
 * - `targetModules` as one string: a regex that must match the whole name (Python's
 *   `re.fullmatch`); `"all-linear"` (any case) means every Linear except the output head.
 * - as a list: a name matches when it is in the list or ends with `"." + entry`.
 * - `layersToTransform` (list targets matched by suffix): the module's layer index must be one
 *   of them; the index is the first number that follows `.<layersPattern>.` in the name (any
 *   path segment when no pattern is given). As in PEFT it does not filter full names, nor
 *   "all-linear" (which PEFT expands to the list of full names).
 * - `excludeModules`: matched like `targetModules`; an excluded name is never a target.
 * - `modulesToSave`: a module at or inside a saved module is never a target.
 * - `rankPattern` / `alphaPattern`: the first key, in order, such that `(.*\.)?(key)$`
 *   matches the name from its start.
 * - `modulesToSave` selects every module whose name ends with an entry (plain text).
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';

/** PEFT's targeting fields (camelCase; `normalizePeftFields` maps PEFT's snake_case names). */
export interface TargetRules {
  targetModules: string[] | string;
  excludeModules?: string[] | string | null;
  layersToTransform?: number[] | number | null;
  layersPattern?: string[] | string | null;
  modulesToSave?: string[] | null;
}

/** PEFT's shorthand for "every Linear layer but the output head". */
export const ALL_LINEAR = 'all-linear';

const stringOrList = z.union([z.array(z.string().min(1)).min(1), z.string().min(1)]);

/** Zod fields for the targeting options beyond `targetModules` (shared by the LoRA-style methods). */
export const peftTargetingFields = {
  /** Never adapt these modules (same matching as targetModules). */
  excludeModules: stringOrList.nullable().optional(),
  /** Adapt only these block indices (PEFT `layers_to_transform`). */
  layersToTransform: z.union([z.array(z.number().int().nonnegative()), z.number().int().nonnegative()]).nullable().optional(),
  /** Name of the block list the layer index follows (`layers`, `h`); default: any. */
  layersPattern: stringOrList.nullable().optional(),
  /** Per-module rank overrides: `{ "down_proj": 16 }` (keys are regexes, first match wins). */
  rankPattern: z.record(z.string(), z.number().int().positive()).default({}),
  /** Per-module alpha overrides, matched like rankPattern. */
  alphaPattern: z.record(z.string(), z.number().positive()).default({}),
  /** Modules trained in full and saved beside the low-rank pairs (PEFT `modules_to_save`). */
  modulesToSave: z.array(z.string().min(1)).nullable().optional(),
};

/** A PEFT regex as a JS RegExp anchored at both ends (fullmatch) or at the start only. */
function pyRegex(pattern: string, anchor: 'full' | 'start', what: string): RegExp {
  try {
    return new RegExp(anchor === 'full' ? `^(?:${pattern})$` : `^(?:${pattern})`);
  } catch (err) {
    throw new SparsetuneError('BAD_CONFIG', `${what} "${pattern}" is not a valid regular expression (${(err as Error).message})`);
  }
}

/** PEFT's name rule for target/exclude lists: a regex string must match all of `key`; list entries match it exactly or as a dotted suffix. */
function nameMatches(spec: string[] | string, key: string, what: string): boolean {
  if (typeof spec === 'string') return pyRegex(spec, 'full', what).test(key);
  return spec.includes(key) || spec.some((t) => key.endsWith(`.${t}`));
}

/** The layer index PEFT reads off a module name (first number after `.<pattern>.`), or null. */
export function layerIndexOf(key: string, layersPattern?: string[] | string | null): number | null {
  const patterns = layersPattern === undefined || layersPattern === null || layersPattern.length === 0 ? null : ([] as string[]).concat(layersPattern);
  const candidates = patterns ? patterns.map((p) => `.*?\\.${p}\\.(\\d+)\\.`) : ['.*?\\.[^.]*\\.(\\d+)\\.'];
  for (const c of candidates) {
    const m = pyRegex(c, 'start', 'layersPattern').exec(key);
    if (m) return Number(m[1]);
  }
  return null;
}

/** Whether `key` lies at or inside a module named in modulesToSave (PEFT never adapts those). */
export function insideSavedModule(key: string, modulesToSave: readonly string[] | null | undefined): boolean {
  return (modulesToSave ?? []).some((m) => pyRegex(`(^|.*\\.)${m}($|\\..*)`, 'start', 'modulesToSave').test(key));
}

/**
 * PEFT's `check_target_module_exists` for one module name, with `targetModules` already a
 * list or a regex (resolve "all-linear" first with `selectTargetNames`).
 */
export function isTargetModule(key: string, rules: TargetRules): boolean {
  if (rules.excludeModules && nameMatches(rules.excludeModules, key, 'excludeModules')) return false;
  if (insideSavedModule(key, rules.modulesToSave)) return false;
  const targets = rules.targetModules;
  if (typeof targets === 'string') return pyRegex(targets, 'full', 'targetModules').test(key);
  if (targets.includes(key)) return true;
  if (!targets.some((t) => key.endsWith(`.${t}`))) return false;
  const layers = rules.layersToTransform;
  const usesLayers = layers !== undefined && layers !== null && (!Array.isArray(layers) || layers.length > 0);
  if (!usesLayers) return true;
  const index = layerIndexOf(key, rules.layersPattern);
  if (index === null) return false;
  return Array.isArray(layers) ? layers.includes(index) : layers === index;
}

/** Whether `targets` is PEFT's "all-linear" shorthand. */
export function isAllLinear(targets: string[] | string): targets is string {
  return typeof targets === 'string' && targets.toLowerCase() === ALL_LINEAR;
}

/**
 * The module names among `linearNames` (every Linear of the model, in model order) that
 * `rules` select. `outputHead` is the output projection's name, left out by "all-linear".
 */
export function selectTargetNames(linearNames: readonly string[], rules: TargetRules, outputHead?: string): string[] {
  const resolved: TargetRules = isAllLinear(rules.targetModules) ? { ...rules, targetModules: linearNames.filter((n) => n !== outputHead) } : rules;
  return linearNames.filter((n) => isTargetModule(n, resolved));
}

/** PEFT's `get_pattern_key`: the first key of `pattern` (in order) whose regex `(.*\.)?(key)$` matches `module` from its start. */
export function patternKeyFor(pattern: Record<string, number> | null | undefined, module: string): string | undefined {
  for (const key of Object.keys(pattern ?? {})) {
    let re: RegExp;
    try {
      re = new RegExp(`^(.*\\.)?(${key})$`);
    } catch {
      // Not a valid JS regex: only an exact name can match it.
      if (key === module) return key;
      continue;
    }
    if (re.test(module)) return key;
  }
  return undefined;
}

/** The value `pattern` gives `module` (rank_pattern / alpha_pattern), or undefined. */
export function patternValue(pattern: Record<string, number> | null | undefined, module: string): number | undefined {
  const key = patternKeyFor(pattern, module);
  return key === undefined ? undefined : pattern![key];
}

/** Module names (from `moduleNames`, every module of the model) that PEFT's modules_to_save selects: names ending with an entry. */
export function savedModuleNames(moduleNames: readonly string[], modulesToSave: readonly string[] | null | undefined): string[] {
  if (!modulesToSave || modulesToSave.length === 0) return [];
  return moduleNames.filter((k) => modulesToSave.some((m) => k.endsWith(m)));
}
