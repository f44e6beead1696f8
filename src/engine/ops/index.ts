export * from './elementwise.js';
export * from './shape.js';
export * from './reduce.js';
export * from './linalg.js';
export * from './contrib.js';
export { scalar, i64Vector, constTensor, shapeOf, dimsTensor, sumToShape } from './helpers.js';
