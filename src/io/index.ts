/** File formats and model plumbing: safetensors, HF configs and directories, hub cache, tokenizer, datasets. */
export * from './half.js';
export * from './atomic.js';
export * from './dir-lock.js';
export { crashPoint } from './crash-point.js';
export * from './safetensors.js';
export * from './safetensors-index.js';
export * from './config.js';
export * from './hub.js';
export * from './tokenizer.js';
export * from './model-dir.js';
export * from './datasets.js';
