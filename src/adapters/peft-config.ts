/**
 * PEFT's config names in method configs: a `LoraConfig` written for Hugging Face PEFT (or its
 * saved `adapter_config.json`) can be passed as a sparsetune method config. Its snake_case
 * fields map to the method's camelCase ones (`target_modules` -> `targetModules`,
 * `lora_alpha` -> `alpha` / `loraAlpha`, `lora_dropout` -> `dropout`, ...); PEFT's
 * bookkeeping fields (`peft_type`, `task_type`, `base_model_name_or_path`, ...) are dropped;
 * PEFT features sparsetune does not implement are accepted only at their inactive value
 * (null, false, {}, []), otherwise refused with a message naming the field.
 */
import { SparsetuneError } from '../errors.js';

/** PEFT names whose sparsetune field is not just the camelCase spelling. */
const SPECIAL: Record<string, string[]> = {
  lora_alpha: ['alpha', 'loraAlpha'],
  lora_dropout: ['dropout'],
};

/** Bookkeeping PEFT writes into adapter_config.json; meaningless for training here. */
const BOOKKEEPING = new Set([
  'task_type',
  'peft_type',
  'auto_mapping',
  'peft_version',
  'base_model_name_or_path',
  'revision',
  'inference_mode',
  // The weight layout of each site is known (GPT-2's Conv1D is [in, out]); PEFT sets it per layer too.
  'fan_in_fan_out',
  'megatron_core',
  'runtime_config',
  'qalora_group_size',
]);

/** PEFT features sparsetune does not implement: fine at these values, refused otherwise. */
const INACTIVE: Record<string, { ok: (v: unknown) => boolean; what: string }> = {
  bias: { ok: (v) => v === 'none' || v == null, what: 'training the base biases ("none" only)' },
  use_dora: { ok: (v) => v === false || v == null, what: 'DoRA' },
  lora_bias: { ok: (v) => v === false || v == null, what: 'a bias on lora_B' },
  init_lora_weights: { ok: (v) => v === true || v == null, what: 'initializations other than PEFT\'s default (true: A Kaiming-uniform, B zero)' },
};
const OFF_WHEN_EMPTY = [
  'trainable_token_indices',
  'loftq_config',
  'eva_config',
  'corda_config',
  'lora_ga_config',
  'megatron_config',
  'velora_config',
  'alora_invocation_tokens',
  'use_qalora',
  'monteclora_config',
  'layer_replication',
  'target_parameters',
  'use_bdlora',
  'arrow_config',
  'kasa_config',
  'ensure_weight_tying',
];

function isEmpty(v: unknown): boolean {
  if (v === null || v === undefined || v === false) return true;
  if (Array.isArray(v)) return v.length === 0;
  return typeof v === 'object' && Object.keys(v as object).length === 0;
}

function camel(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/**
 * `raw` with PEFT's snake_case names mapped onto the fields of `shape` (a method's zod
 * object shape). Keys that are neither PEFT names nor fields are left for the caller's
 * unknown-field check. Bookkeeping and inactive PEFT fields are dropped only for LoRA-style
 * methods (a schema with `r` and `targetModules`).
 */
export function normalizePeftFields(method: string, shape: Record<string, unknown> | undefined, raw: Record<string, unknown>): Record<string, unknown> {
  if (!shape || raw === null || typeof raw !== 'object' || Array.isArray(raw)) return raw;
  const loraLike = 'r' in shape && 'targetModules' in shape;
  const out: Record<string, unknown> = {};
  const from = new Map<string, string>();
  for (const [key, value] of Object.entries(raw)) {
    const peftOnly = loraLike && (BOOKKEEPING.has(key) || key in INACTIVE || OFF_WHEN_EMPTY.includes(key));
    if (key in shape || (!peftOnly && !key.includes('_'))) {
      if (from.has(key)) throw new SparsetuneError('BAD_CONFIG', `${method} config: '${from.get(key)}' and '${key}' are the same field; give one`);
      out[key] = value;
      from.set(key, key);
      continue;
    }
    if (loraLike && BOOKKEEPING.has(key)) {
      if (key === 'peft_type' && value !== 'LORA' && value != null) {
        throw new SparsetuneError('BAD_CONFIG', `${method} config: peft_type "${String(value)}" is not a LoRA config; ${method} takes LoRA fields (peft_type "LORA")`);
      }
      continue;
    }
    if (loraLike && key in INACTIVE) {
      if (!INACTIVE[key].ok(value)) throw new SparsetuneError('BAD_CONFIG', `${method} config: ${key} ${JSON.stringify(value)} asks for ${INACTIVE[key].what}, which sparsetune's ${method} does not implement; remove the field or set it to its default`);
      continue;
    }
    if (loraLike && OFF_WHEN_EMPTY.includes(key)) {
      if (!isEmpty(value)) throw new SparsetuneError('BAD_CONFIG', `${method} config: PEFT's ${key} is not implemented here; remove it (or set it to null)`);
      continue;
    }
    const target = (SPECIAL[key] ?? [camel(key)]).find((f) => f in shape);
    if (!target) {
      out[key] = value; // not a field: the unknown-field check names it
      continue;
    }
    if (from.has(target)) throw new SparsetuneError('BAD_CONFIG', `${method} config: '${from.get(target)}' and '${key}' are the same field; give one`);
    out[target] = value;
    from.set(target, key);
  }
  return out;
}
