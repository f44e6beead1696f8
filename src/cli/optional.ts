/**
 * Modules the CLI hands work to that live elsewhere in the package (server, zeroth-order
 * training, pruned export, demo, report). They load lazily, and a build that lacks one
 * gets a clear error instead of a crash.
 */
import { SparsetuneError } from '../errors.js';

/** The module itself is missing (as opposed to one of its own imports failing). */
function isMissing(err: unknown, file: string): boolean {
  const e = err as { code?: string; message?: string };
  const stem = file.replace(/\.js$/, '');
  return (e.code === 'ERR_MODULE_NOT_FOUND' || e.code === 'MODULE_NOT_FOUND') && typeof e.message === 'string' && e.message.includes(stem);
}

/**
 * Import an optional module and pick one export; `what` names the feature in the error
 * (`sparsetune serve`). `file` is the module path relative to src/, for the message.
 */
export async function loadOptional<T>(load: () => Promise<unknown>, file: string, exportName: string, what: string): Promise<T> {
  let mod: Record<string, unknown>;
  try {
    mod = (await load()) as Record<string, unknown>;
  } catch (err) {
    if (isMissing(err, file)) {
      throw new SparsetuneError('NOT_FOUND', `${what} is not available in this build of sparsetune (${file} is missing)`);
    }
    throw err;
  }
  const fn = mod[exportName];
  if (typeof fn !== 'function') throw new SparsetuneError('NOT_FOUND', `${what}: ${file} does not export ${exportName}()`);
  return fn as T;
}

// Literal specifiers so bundlers include these modules. Those marked @ts-ignore are written
// by other parts of the package and may not exist yet in a given checkout.
export const optionalModules = {
  serve: () => import('../serve/cli.js') as Promise<unknown>,
  // @ts-ignore -- optional module (src/zeroth-order/cli.ts)
  zerothOrder: () => import('../zeroth-order/cli.js') as Promise<unknown>,
  pruneExport: () => import('../merge/prune-export.js') as Promise<unknown>,
  demo: () => import('./demo.js') as Promise<unknown>,
  report: () => import('./report.js') as Promise<unknown>,
  classify: () => import('../train/classify.js') as Promise<unknown>,
};
