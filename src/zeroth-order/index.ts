/** Zeroth-order (forward-only) optimizers: MeZO and Sparse-MeZO, their generator and trajectories. */
export { fillNormal, normalAt, uniform01, randomUint32, philox4x32, DOMAIN_NORMAL, DOMAIN_SEED, DOMAIN_UNIFORM } from './rng.js';
export type { TrainableTensor, NoiseGenerator } from './rng.js';
export { DEFAULT_NOISE_GENERATOR, NOISE_GENERATORS } from './rng.js';
export { zoConfigSchema, resolveZoConfig, DEFAULT_CHUNK } from './config.js';
export type { ZoConfig, ResolvedZoConfig } from './config.js';
export { ZerothOrderOptimizer, replayTrajectory, deriveStepSeed } from './mezo.js';
export type { ZoStepRecord, ZoStepResult } from './mezo.js';
export { kthSmallestMagnitude, sparseMezoThreshold } from './thresholds.js';
export { saveTrajectory, loadTrajectory, zoTrajectoryFileSchema, ZO_TRAJECTORY_FORMAT, ZO_TRAJECTORY_FORMAT_V1 } from './trajectory.js';
export type { ZoTrajectoryFile } from './trajectory.js';
export * from './train.js';
export * from './run.js';
export { replayOnBase } from './replay.js';
export { restoreBase, BaseWeightsOnDisk } from './base-weights.js';
