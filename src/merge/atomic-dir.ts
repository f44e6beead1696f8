/** Never-half-written output directories, and file checksums. */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { SparsetuneError } from '../errors.js';

/**
 * Write a directory atomically: `fill` writes every file into a fresh temp directory next
 * to `dir`, which is then renamed to `dir`. If `dir` already exists with other files in
 * it (the caller's logs, say), our files are renamed into it one by one in `order` —
 * put the manifest last, so a reader never sees a new manifest with old data.
 */
export async function writeDirAtomic(dir: string, order: string[], fill: (tmp: string) => Promise<void>): Promise<void> {
  const target = path.resolve(dir);
  const existing = await fsp.stat(target).catch(() => null);
  if (existing && !existing.isDirectory()) {
    throw new SparsetuneError('BAD_ARGUMENT', `${target} exists and is not a directory; choose another output path`);
  }
  const parent = path.dirname(target);
  await fsp.mkdir(parent, { recursive: true });
  const tmp = await fsp.mkdtemp(path.join(parent, `.${path.basename(target)}.tmp-`));
  try {
    await fill(tmp);
    try {
      await fsp.rename(tmp, target);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    }
    for (const name of order) await fsp.rename(path.join(tmp, name), path.join(target, name));
    await fsp.rm(tmp, { recursive: true, force: true });
  } catch (err) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

/** sha256 of a file's bytes, streamed ("sha256:<hex>"). */
export async function fileSha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return `sha256:${h.digest('hex')}`;
}
