/**
 * Method selection and `--config` validation for `sparsetune train`, done before any model
 * is loaded so mistakes surface in milliseconds: unknown method (listing the valid ones),
 * unreadable JSON, unknown keys (typos), and values the method's zod schema rejects. PEFT's
 * snake_case names are accepted (a PEFT LoraConfig / adapter_config.json works as is).
 */
import { promises as fsp } from 'node:fs';
import type { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { normalizePeftFields } from '../adapters/peft-config.js';
import { METHOD_NAMES, methodModule, type MethodModule } from '../train/registry.js';
import { closest, UsageError } from './args.js';

/** Zeroth-order methods are trained by src/zeroth-order/cli.ts, not the first-order Trainer. */
export const ZEROTH_ORDER_METHODS = ['mezo', 'sparse-mezo'] as const;

export const ALL_METHODS: readonly string[] = [...METHOD_NAMES, ...ZEROTH_ORDER_METHODS];

export function isZerothOrder(name: string): boolean {
  return (ZEROTH_ORDER_METHODS as readonly string[]).includes(name);
}

/** Check a `--method` value; unknown names are a usage error listing the choices. */
export function checkMethodName(command: string, name: string): void {
  if (ALL_METHODS.includes(name)) return;
  const hint = closest(name, ALL_METHODS);
  throw new UsageError(command, `unknown method '${name}'${hint ? ` (did you mean '${hint}'?)` : ''}; choose one of: ${ALL_METHODS.join(', ')}`);
}

/** Load a first-order method's module, turning a failed import into a clear error. */
export async function loadMethodModule(name: string): Promise<MethodModule> {
  try {
    return await methodModule(name);
  } catch (err) {
    if (err instanceof SparsetuneError) throw err;
    throw new SparsetuneError('NOT_FOUND', `method '${name}' could not be loaded (${(err as Error).message}); this build may not include it`, { cause: err });
  }
}

/** Read a JSON object from a --config file. */
export async function readConfigFile(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw new SparsetuneError('NOT_FOUND', `${file}: cannot read config file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new SparsetuneError('BAD_CONFIG', `${file}: invalid JSON (${(err as Error).message})`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new SparsetuneError('BAD_CONFIG', `${file}: expected a JSON object of config fields, e.g. {"r": 8}`);
  }
  return json as Record<string, unknown>;
}

/**
 * Validate a config against a method's schema and fill in defaults. Keys the schema does
 * not know are rejected (zod would silently drop them, hiding typos like "rank" for "r").
 */
export function validateMethodConfig(method: string, schema: z.ZodTypeAny, given: Record<string, unknown>, source: string): Record<string, unknown> {
  const shape = (schema as unknown as { shape?: Record<string, unknown> }).shape;
  let raw: Record<string, unknown>;
  try {
    raw = normalizePeftFields(method, shape, given);
  } catch (err) {
    if (err instanceof SparsetuneError) throw new SparsetuneError('BAD_CONFIG', `${source}: ${err.message}`);
    throw err;
  }
  const help = `see 'sparsetune train --method ${method} --help'`;
  if (shape) {
    const known = Object.keys(shape);
    const unknown = Object.keys(raw).filter((k) => !known.includes(k));
    if (unknown.length) {
      const hints = unknown.map((k) => {
        const c = closest(k, known);
        return c ? `'${k}' (did you mean '${c}'?)` : `'${k}'`;
      });
      throw new SparsetuneError('BAD_CONFIG', `${source}: unknown ${method} config field${unknown.length > 1 ? 's' : ''} ${hints.join(', ')}; valid fields: ${known.join(', ')} (${help})`);
    }
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.map(String).join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new SparsetuneError('BAD_CONFIG', `${source}: invalid ${method} config: ${issues} (${help})`);
  }
  return parsed.data as Record<string, unknown>;
}

/** Does the schema have a top-level field `name`? */
export function schemaHasField(schema: z.ZodTypeAny, name: string): boolean {
  const shape = (schema as unknown as { shape?: Record<string, unknown> }).shape;
  return Boolean(shape && name in shape);
}
