/**
 * sparsetune's public API: the engine, model IO, models and generation, the trainer and
 * its method registry, adapters and masks, adapter files (merge/compose), zeroth-order
 * optimizers, and the server. The `sparsetune` command is src/cli/main.ts.
 */
export { SparsetuneError, check, type ErrorCode } from './errors.js';
export * from './tensor.js';

// Engine: graph IR, autodiff, ONNX, runtime (ops and nn as namespaces).
export * from './engine/index.js';

// Files and model plumbing: safetensors, HF configs and dirs, hub cache, tokenizer, datasets.
export * from './io/index.js';

// Models and generation.
export { CausalLM, type BuiltGraph, type KvCache } from './models/causal-lm.js';
export { expectedParams, expectedParamShapes, planWeights, FLOAT_WEIGHT_DTYPES, type ParamDim, type ExpectedParam, type WeightEntry } from './models/param-shapes.js';
export { composeHooks, matchesTarget, type LinearSite, type ModelHooks, type ResidualKind } from './models/hooks.js';
export { streamGenerate, generateIds, generateText, type GenerateOptions, type GenerationEvent, type GenerationResult, type FinishReason } from './models/generate.js';
export { Sampler, StopStringMatcher, samplingOptionsSchema, type SamplingOptions } from './models/sampling.js';
export { modelCost, type ModelCost } from './models/cost.js';
export { WEIGHTS_DTYPES, parseWeightsDtype, lowerWeights, loweredBytes, type WeightsDtype, type LowPrecisionOptions, type LowPrecisionWeight } from './models/low-precision.js';
export { runsUnfusedLowRank, lowRankHooks } from './merge/unfused-lowrank.js';

// Training: the loop, methods, optimizers, runs with checkpoints/metrics/progress, evaluation.
export * from './train/trainer.js';
export * from './train/method.js';
export { trainableParameters, formatTrainableParameters, type TrainableSummary } from './train/trainable.js';
export * from './train/optim.js';
export { METHOD_NAMES, methodModule, type MethodModule } from './train/registry.js';
export { GENERIC_RECIPE, recipeTrainerConfig, resolveRecipe, recipeHelp, type MethodRecipe } from './train/recipe.js';
export * from './train/run.js';
export * from './train/checkpoint.js';
export * from './train/metrics.js';
export * from './train/progress.js';
export * from './train/early-stopping.js';
export * from './train/evaluation.js';
export { noiseFeeds, noiseSeed, noiseSpecs, type InputSpec } from './train/noise-feeds.js';
export { seededDropout, noiseInput, isNoiseInput, NOISE_PREFIX } from './engine/noise.js';
export { scoreLabels, classificationAccuracy, type ScoreOptions, type ClassificationExample, type ClassificationResult } from './train/classify.js';

// Adapters and masks (each method module's registry exports stay behind `methodModule`).
export { LoraMethod, loraConfigSchema, createLoraPairs, loraHooks, exportLoraPairs, setPairScales, targetRulesOf, type LoraConfig, type LoraPair } from './adapters/lora.js';
export { selectSites } from './adapters/common.js';
export { normalizePeftFields } from './adapters/peft-config.js';
export { SavedModules } from './adapters/modules-to-save.js';
export { isTargetModule, selectTargetNames, patternValue, layerIndexOf, ALL_LINEAR, type TargetRules } from './models/targets.js';
export { GsLoraMethod, gsLoraConfigSchema, type GsLoraConfig } from './adapters/gs-lora.js';
export { MosaMethod, mosaConfigSchema, type MosaConfig } from './adapters/mosa.js';
export { S2ftMethod, s2ftConfigSchema, type S2ftConfig } from './adapters/s2ft.js';
export { PatMethod, patConfigSchema, type PatConfig } from './adapters/pat.js';
export { MaskllmMethod, maskllmConfigSchema, type MaskllmConfig } from './masks/maskllm.js';
export { RamtMethod, ramtConfigSchema, type RamtConfig } from './masks/ramt.js';
export { LtSftMethod, ltSftConfigSchema, type LtSftConfig } from './masks/lt-sft.js';
export { oneShotMasks, oneShotAdapter, type OneShotKind, type OneShotOptions, type OneShotTensor } from './masks/oneshot.js';
export { sparseGptNM, type SparseGptOptions, type SparseGptResult } from './masks/sparsegpt.js';

// Adapter files and their algebra: save/load, fuse/unfuse, compose, PEFT interop, pruned export.
export * from './merge/index.js';
export { exportPrunedModel, savePrunedModel, prunedConfigJson } from './merge/prune-export.js';

// Zeroth-order optimizers.
export * from './zeroth-order/index.js';

// Serving (`Sequence`'s finish reason is the server's own type; see FinishReason above for generation).
export {
  createServer,
  runServe,
  parseServeFlags,
  ServeService,
  AdapterRegistry,
  Swapper,
  Scheduler,
  WeightGate,
  ServerMetrics,
  type ServerOptions,
  type SparsetuneServer,
  type ServeFlags,
  type RegistryOptions,
} from './serve/index.js';

// Training reports (HTML + SVG charts from metrics.jsonl and an adapter).
export { writeRunReport, readRunMetrics, summarizeRun, adapterStats, maskStats, countNmPatterns, type ReportOptions, type ReportResult } from './report/index.js';
