/** The engine: graph IR, ops with gradient rules, autodiff, ONNX writer and runtime. */
export { Graph, Value, Node, defineOp, type Dim, type Shape } from './ir.js';
export { grad } from './autodiff.js';
export { toOnnx, toOnnxModel, OPSET } from './onnx.js';
export { quantizeBlockwise, dequantizeBlockwise, quantizedBytes, matmulNBits, type BlockQuantized } from './quant.js';
export { Runtime, CompiledGraph, defaultRuntime, type RuntimeOptions } from './runtime.js';
export { SessionCache, CachedSession, type SessionCacheOptions, type SessionCacheStats } from './session-cache.js';
export * as ops from './ops/index.js';
export * as nn from './nn.js';
