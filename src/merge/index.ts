/** Adapter files and their algebra: format, fingerprints, fuse/unfuse, compose, PEFT interop, ONNX export for transformers.js. */
export * from './adapter.js';
export * from './bits.js';
export * from './validate.js';
export * from './fingerprint.js';
export * from './apply.js';
export * from './compose.js';
export * from './scale.js';
export * from './peft.js';
export { canonicalSum, lowRankProduct, reduceAdapter, type ParamEdit } from './reduce.js';
export { adapterJsonSchema, type AdapterJson } from './codec.js';
export * from './onnx-export.js';
