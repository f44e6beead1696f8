/**
 * Errors on the wire: every failure becomes `{"error":{"message","type","param","code"}}`
 * (OpenAI's shape) with the HTTP status its cause deserves.
 */
import { SparsetuneError, type ErrorCode } from '../errors.js';

export interface ApiErrorBody {
  error: { message: string; type: string; param: string | null; code: string };
}

const STATUS: Partial<Record<ErrorCode, number>> = {
  BAD_ARGUMENT: 400,
  BAD_ADAPTER: 400,
  BAD_DATA: 400,
  FINGERPRINT_MISMATCH: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  CONFLICT: 409,
  QUEUE_FULL: 429,
  UNAVAILABLE: 503,
};

/** OpenAI error `type` for a status. */
export function errorType(status: number): string {
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 429) return 'rate_limit_error';
  if (status >= 500) return 'server_error';
  return 'invalid_request_error';
}

/** Fastify's own client errors (body parsing, limits) by their code. */
const FASTIFY_CODES: Record<string, string> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'request_too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_INVALID_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'invalid_content_length',
};

/** Status and body for any thrown value; `internal` is true for a server-side fault (log it). */
export function toApiError(err: unknown): { status: number; body: ApiErrorBody; internal: boolean } {
  const make = (status: number, message: string, code: string) => ({
    status,
    body: { error: { message, type: errorType(status), param: null, code } },
    internal: status >= 500 && status !== 503,
  });
  if (err instanceof SparsetuneError) {
    const status = STATUS[err.code] ?? 500;
    const code = err.code === 'NOT_FOUND' && /^model /.test(err.message) ? 'model_not_found' : err.code.toLowerCase();
    return make(status, err.message, code);
  }
  const e = err as { statusCode?: unknown; code?: unknown; message?: unknown } | null;
  const status = typeof e?.statusCode === 'number' ? e.statusCode : 500;
  if (status >= 400 && status < 500) {
    const fst = typeof e?.code === 'string' ? e.code : '';
    const code = FASTIFY_CODES[fst] ?? (err instanceof SyntaxError ? 'invalid_json' : 'invalid_request');
    const message = code === 'invalid_json' ? `the body is not valid JSON: ${String(e?.message)}` : String(e?.message ?? 'bad request');
    return make(status, message, code);
  }
  return make(500, 'internal server error; the server logged the details', 'internal_error');
}

/** An error body for a status with a message of our own. */
export function apiError(status: number, message: string, code: string): ApiErrorBody {
  return { error: { message, type: errorType(status), param: null, code } };
}
