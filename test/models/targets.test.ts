/**
 * PEFT's module-matching rules (check_target_module_exists, _maybe_include_all_linear_layers,
 * get_pattern_key, _set_trainable), case by case as PEFT's source decides them, and PEFT's
 * snake_case config names in method configs.
 */
import { describe, expect, it } from 'vitest';
import { normalizePeftFields } from '../../src/adapters/peft-config.js';
import { loraConfigSchema } from '../../src/adapters/lora.js';
import { validateMethodConfig } from '../../src/cli/method-config.js';
import { insideSavedModule, isTargetModule, layerIndexOf, patternValue, savedModuleNames, selectTargetNames } from '../../src/models/targets.js';

const LLAMA = [0, 1, 2].flatMap((i) => ['self_attn.q_proj', 'self_attn.v_proj', 'mlp.down_proj'].map((m) => `model.layers.${i}.${m}`)).concat('lm_head');
const GPT2 = [0, 1].flatMap((i) => ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'].map((m) => `transformer.h.${i}.${m}`)).concat('lm_head');

describe('PEFT target matching', () => {
  it('lists match a full name or a dotted suffix; one string is a regex over the whole name', () => {
    expect(selectTargetNames(LLAMA, { targetModules: ['q_proj'] })).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.2.self_attn.q_proj']);
    expect(isTargetModule('model.layers.0.self_attn.q_proj', { targetModules: ['self_attn.q_proj'] })).toBe(true);
    expect(isTargetModule('model.layers.0.self_attn.q_proj', { targetModules: ['_proj'] })).toBe(false); // suffix after a dot only
    expect(isTargetModule('lm_head', { targetModules: ['lm_head'] })).toBe(true);
    // fullmatch: a regex that only finds a substring matches nothing.
    expect(isTargetModule('model.layers.0.self_attn.q_proj', { targetModules: 'q_proj' })).toBe(false);
    expect(selectTargetNames(LLAMA, { targetModules: '.*\\.(q|v)_proj' })).toHaveLength(6);
    expect(selectTargetNames(GPT2, { targetModules: ['c_proj'] })).toEqual(['transformer.h.0.attn.c_proj', 'transformer.h.0.mlp.c_proj', 'transformer.h.1.attn.c_proj', 'transformer.h.1.mlp.c_proj']);
  });

  it('layers_to_transform filters suffix matches by the first index after the pattern, never full names', () => {
    expect(selectTargetNames(LLAMA, { targetModules: ['down_proj'], layersToTransform: [0, 2] })).toEqual(['model.layers.0.mlp.down_proj', 'model.layers.2.mlp.down_proj']);
    expect(selectTargetNames(LLAMA, { targetModules: ['down_proj'], layersToTransform: 1 })).toEqual(['model.layers.1.mlp.down_proj']);
    expect(selectTargetNames(GPT2, { targetModules: ['c_fc'], layersToTransform: [1], layersPattern: ['layers', 'h'] })).toEqual(['transformer.h.1.mlp.c_fc']);
    expect(selectTargetNames(GPT2, { targetModules: ['c_fc'], layersToTransform: [1], layersPattern: 'layers' })).toEqual([]);
    expect(isTargetModule('model.layers.1.mlp.down_proj', { targetModules: ['model.layers.1.mlp.down_proj'], layersToTransform: [0] })).toBe(true);
    expect(isTargetModule('lm_head', { targetModules: ['head'], layersToTransform: [0] })).toBe(false);
    expect(layerIndexOf('model.layers.12.experts.3.w1')).toBe(12); // lazy: the first numbered segment
    expect(layerIndexOf('layers.3.x')).toBeNull(); // PEFT needs a dot before the list name
  });

  it('"all-linear" is every Linear but the output head, and ignores layers_to_transform (as PEFT does)', () => {
    expect(selectTargetNames(LLAMA, { targetModules: 'ALL-LINEAR' }, 'lm_head')).toEqual(LLAMA.slice(0, -1));
    expect(selectTargetNames(LLAMA, { targetModules: 'all-linear', layersToTransform: [0] }, 'lm_head')).toHaveLength(9);
  });

  it('exclude_modules and modules_to_save take modules out of the targets', () => {
    expect(selectTargetNames(LLAMA, { targetModules: 'all-linear', excludeModules: ['v_proj'] }, 'lm_head')).toHaveLength(6);
    expect(selectTargetNames(LLAMA, { targetModules: 'all-linear', excludeModules: 'model\\.layers\\.[01]\\..*' }, 'lm_head')).toEqual(LLAMA.slice(6, 9));
    expect(selectTargetNames(LLAMA, { targetModules: ['q_proj', 'lm_head'], modulesToSave: ['lm_head', 'model.layers.1'] })).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.2.self_attn.q_proj']);
    expect(insideSavedModule('model.layers.10.mlp', ['model.layers.1'])).toBe(false);
    // modules_to_save itself selects by plain endswith: "norm" catches every *norm module.
    expect(savedModuleNames(['model.norm', 'model.layers.0.input_layernorm', 'model.layers.0', 'lm_head'], ['norm'])).toEqual(['model.norm', 'model.layers.0.input_layernorm']);
  });

  it('rank_pattern / alpha_pattern: the first key in order whose regex matches a dotted suffix', () => {
    const pattern = { 'layers\\.1\\..*': 16, down_proj: 2, 'model.layers.2.mlp.down_proj': 7 };
    expect(patternValue(pattern, 'model.layers.1.mlp.down_proj')).toBe(16);
    expect(patternValue(pattern, 'model.layers.2.mlp.down_proj')).toBe(2); // earlier key wins
    expect(patternValue(pattern, 'model.layers.0.mlp.up_proj')).toBeUndefined();
    expect(patternValue({ proj: 3 }, 'model.layers.0.mlp.down_proj')).toBeUndefined(); // whole dotted component
  });
});

describe('PEFT names in method configs', () => {
  const shape = loraConfigSchema.shape;
  it('maps snake_case onto the fields, drops PEFT bookkeeping, and takes a whole adapter_config.json', () => {
    const cfg = validateMethodConfig('lora', loraConfigSchema, { peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, lora_alpha: 16, lora_dropout: 0.1, target_modules: 'all-linear', use_rslora: true, rank_pattern: { down_proj: 2 }, layers_to_transform: null, bias: 'none', use_dora: false, loftq_config: {}, init_lora_weights: true }, 'cfg.json');
    expect(cfg).toMatchObject({ r: 4, alpha: 16, dropout: 0.1, targetModules: 'all-linear', useRslora: true, rankPattern: { down_proj: 2 }, layersToTransform: null });
    expect(normalizePeftFields('gs-lora', { r: 1, targetModules: 1, loraAlpha: 1 }, { lora_alpha: 2 })).toEqual({ loraAlpha: 2 });
  });

  it('refuses PEFT features it does not implement, duplicates, and unknown names', () => {
    expect(() => validateMethodConfig('lora', loraConfigSchema, { use_dora: true }, 'c')).toThrow(/use_dora true asks for DoRA/);
    expect(() => validateMethodConfig('lora', loraConfigSchema, { bias: 'all' }, 'c')).toThrow(/bias "all"/);
    expect(() => validateMethodConfig('lora', loraConfigSchema, { peft_type: 'IA3' }, 'c')).toThrow(/peft_type "IA3" is not a LoRA config/);
    expect(() => validateMethodConfig('lora', loraConfigSchema, { trainable_token_indices: [3] }, 'c')).toThrow(/trainable_token_indices is not implemented/);
    expect(() => validateMethodConfig('lora', loraConfigSchema, { alpha: 4, lora_alpha: 8 }, 'c')).toThrow(/'alpha' and 'lora_alpha' are the same field/);
    expect(() => validateMethodConfig('lora', loraConfigSchema, { target_modulez: ['q_proj'] }, 'c')).toThrow(/unknown lora config field 'target_modulez'/);
    // Methods without PEFT's LoRA fields keep their own names: rank_pattern means nothing to them.
    expect(normalizePeftFields('maskllm', { targetModules: 1, n: 1 }, { target_modules: ['q_proj'], rank_pattern: {} })).toEqual({ targetModules: ['q_proj'], rank_pattern: {} });
    expect(shape).toHaveProperty('modulesToSave');
  });
});
