/**
 * Every error sparsetune raises on purpose is a SparsetuneError with a stable `code`,
 * so callers (CLI, server) can map it to exit codes or HTTP statuses, and a message
 * that says what went wrong and what to do about it.
 */
export type ErrorCode =
  | 'SHAPE_MISMATCH'
  | 'DTYPE_MISMATCH'
  | 'BAD_GRAPH'
  | 'BAD_FEED'
  | 'BAD_SAFETENSORS'
  | 'BAD_CONFIG'
  | 'UNSUPPORTED_MODEL'
  | 'NOT_FOUND'
  | 'BAD_DATA'
  | 'BAD_ADAPTER'
  | 'FINGERPRINT_MISMATCH'
  | 'BAD_ARGUMENT'
  | 'TRAINING_DIVERGED'
  | 'RUNTIME'
  // Serving (src/serve): mapped to HTTP 429, 403, 409, 401, 503.
  | 'QUEUE_FULL'
  | 'FORBIDDEN'
  | 'CONFLICT'
  | 'UNAUTHORIZED'
  | 'UNAVAILABLE';

export class SparsetuneError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SparsetuneError';
    this.code = code;
  }
}

/** Throw a SparsetuneError with `code` when `cond` is false. */
export function check(cond: unknown, code: ErrorCode, message: () => string): asserts cond {
  if (!cond) throw new SparsetuneError(code, message());
}
