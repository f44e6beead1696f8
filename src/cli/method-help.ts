/**
 * `sparsetune train --method NAME --help`: the method's summary and its config fields
 * with types and defaults, read off its zod schema (defaults by parsing `{}`).
 */
import type { z } from 'zod';

interface ZodLike {
  _zod?: { def: { type: string; innerType?: ZodLike; options?: ZodLike[]; element?: ZodLike; entries?: Record<string, unknown>; values?: unknown[] } };
  description?: string;
  shape?: Record<string, ZodLike>;
}

/** A short type name (`number`, `string[] | string`, `'a' | 'b'`). */
export function zodTypeName(t: ZodLike | undefined): string {
  const def = t?._zod?.def;
  if (!def) return 'value';
  switch (def.type) {
    case 'default':
    case 'optional':
    case 'nullable':
    case 'prefault':
    case 'readonly':
      return zodTypeName(def.innerType);
    case 'union':
      return (def.options ?? []).map(zodTypeName).join(' | ');
    case 'array':
      return `${zodTypeName(def.element)}[]`;
    case 'enum':
      return Object.values(def.entries ?? {})
        .map((v) => JSON.stringify(v))
        .join(' | ');
    case 'literal':
      return (def.values ?? []).map((v) => JSON.stringify(v)).join(' | ');
    default:
      return def.type;
  }
}

function describeOf(t: ZodLike | undefined): string | undefined {
  for (let cur = t; cur; cur = cur._zod?.def.innerType) if (cur.description) return cur.description;
  return undefined;
}

export interface ConfigField {
  name: string;
  type: string;
  /** JSON of the default; absent for required and optional-without-default fields. */
  default?: string;
  required: boolean;
  description?: string;
}

/** The object fields of a schema (each field parsed from `undefined` tells its default). */
export function configFields(schema: z.ZodTypeAny): ConfigField[] {
  const shape = (schema as unknown as ZodLike).shape;
  if (!shape) return [];
  return Object.entries(shape).map(([name, t]) => {
    const r = (t as unknown as z.ZodTypeAny).safeParse(undefined);
    return {
      name,
      type: zodTypeName(t),
      default: r.success && r.data !== undefined ? JSON.stringify(r.data) : undefined,
      required: !r.success,
      description: describeOf(t),
    };
  });
}

/** The help block for one method. */
export function methodHelp(name: string, summary: string, schema: z.ZodTypeAny | undefined): string {
  const lines = [`Method ${name}: ${summary}`, ''];
  const fields = schema ? configFields(schema) : [];
  if (fields.length) {
    lines.push('Config fields (JSON file for --config; camelCase keys):');
    const w = Math.max(...fields.map((f) => f.name.length)) + 2;
    for (const f of fields) {
      const dflt = f.default !== undefined ? `default ${f.default}` : f.required ? 'required' : 'optional';
      lines.push(`  ${f.name.padEnd(w)}${f.type}; ${dflt}${f.description ? ` — ${f.description}` : ''}`);
    }
  } else {
    lines.push('This method takes no config fields.');
  }
  return `${lines.join('\n')}\n`;
}
