/**
 * The one way sparsetune writes files and directories: never half-written, whatever
 * happens (a crash, `kill -9`, a full disk).
 *
 * Files: written to a temp file in the same directory, fsynced, then renamed over the
 * target. Directories: filled in a temp sibling (`.<name>.tmp-…`); a new directory is
 * renamed into place. Over an existing directory the filled temp is first renamed to
 * `.<name>.new-…`, the commit point, and then swapped in (`replace`: the old directory
 * goes aside and is deleted) or its files moved in one by one, manifest last (`merge`:
 * other files in the directory stay). A process that dies after the commit leaves the
 * `.new-…` directory behind; the next writer, or a reader through `settleDir`, finishes
 * the move, so a reader sees the previous state or the new one, never a mix. Temp names
 * carry the writer's pid and start time, which is how leftovers of dead writers are told
 * from work in progress and cleaned up.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, createReadStream, fsyncSync, openSync, promises as fsp, renameSync, rmSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { SparsetuneError } from '../errors.js';
import { crashPoint } from './crash-point.js';
import { withDirLock } from './dir-lock.js';
import { isProcessAlive, ownProcessToken, parseProcessToken } from './process-id.js';

/** File contents: text (UTF-8), bytes, or a writer that fills the open file handle. */
export type FileContents = string | Uint8Array | ((fh: fsp.FileHandle) => Promise<void>);

type Kind = 'tmp' | 'new' | 'old';

/** A fresh hidden sibling name of `target` for a temp, committed or retired copy. */
function sibling(target: string, kind: Kind): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.${kind}-${ownProcessToken()}-${randomBytes(4).toString('hex')}`);
}

/** Siblings of `target` of one kind, with whether their writer is still alive. */
async function siblings(target: string, kind: Kind): Promise<{ path: string; alive: boolean; mine: boolean }[]> {
  const dir = path.dirname(target);
  const prefix = `.${path.basename(target)}.${kind}-`;
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch {
    return [];
  }
  const out: { path: string; alive: boolean; mine: boolean }[] = [];
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    const m = /^(\d+-\d+)-[0-9a-f]+$/.exec(n.slice(prefix.length));
    const tok = m ? parseProcessToken(m[1]) : null;
    if (!tok) continue;
    out.push({ path: path.join(dir, n), alive: isProcessAlive(tok.pid, tok.start), mine: m![1] === ownProcessToken() });
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : 1));
}

/** fsync a file or directory; platforms that cannot fsync a directory are let off. */
async function fsyncPath(p: string): Promise<void> {
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(p, 'r');
    await fh.sync();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EISDIR' && code !== 'EPERM' && code !== 'EINVAL' && code !== 'EBADF') throw err;
  } finally {
    await fh?.close();
  }
}

async function removeQuietly(p: string): Promise<void> {
  await fsp.rm(p, { recursive: true, force: true }).catch(() => undefined);
}

/** Remove temp files of `file` left by writers that died. */
async function cleanDeadTemps(target: string): Promise<void> {
  for (const t of await siblings(target, 'tmp')) if (!t.alive) await removeQuietly(t.path);
}

/**
 * Write `file` atomically: a temp file in the same directory, fsync, rename. Readers see
 * the old contents or the new, never a part. Temp files of dead writers are removed.
 */
export async function writeFileAtomic(file: string, contents: FileContents): Promise<void> {
  const target = path.resolve(file);
  await cleanDeadTemps(target);
  const tmp = sibling(target, 'tmp');
  const fh = await fsp.open(tmp, 'wx');
  try {
    if (typeof contents === 'function') await contents(fh);
    else {
      const bytes = typeof contents === 'string' ? Buffer.from(contents, 'utf8') : contents;
      const half = bytes.length >> 1;
      await fh.write(bytes, 0, half, null);
      crashPoint('file:partial', target);
      let done = half;
      while (done < bytes.length) done += (await fh.write(bytes, done, bytes.length - done, null)).bytesWritten;
    }
    await fh.sync();
    await fh.close();
    crashPoint('file:written', target);
    await fsp.rename(tmp, target);
  } catch (err) {
    await fh.close().catch(() => undefined);
    await removeQuietly(tmp);
    throw err;
  }
  await fsyncPath(path.dirname(target));
}

/** Synchronous `writeFileAtomic` for text or bytes (scripts and CLI summaries). */
export function writeFileAtomicSync(file: string, contents: string | Uint8Array): void {
  const target = path.resolve(file);
  const tmp = sibling(target, 'tmp');
  const fd = openSync(tmp, 'wx');
  try {
    const bytes = typeof contents === 'string' ? Buffer.from(contents, 'utf8') : contents;
    let done = 0;
    while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done);
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, target);
  } catch (err) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
    rmSync(tmp, { force: true });
    throw err;
  }
}

/** Name of the marker in a committed merge: which files to move, manifest last. */
const MERGE_MARKER = '.sparsetune-merge.json';

/**
 * Finish a committed directory write (`.<name>.new-…`): swap it in (replace) or move its
 * files in, in the recorded order (merge). Every step tolerates having been done already,
 * so the writer and a recovering process can both run it.
 */
async function rollForward(committed: string, target: string): Promise<void> {
  let order: string[] | null = null;
  try {
    const marker = JSON.parse(await fsp.readFile(path.join(committed, MERGE_MARKER), 'utf8')) as { order?: unknown };
    order = Array.isArray(marker.order) ? marker.order.filter((x): x is string => typeof x === 'string') : [];
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && !(await exists(committed))) return; // finished by someone else
    if (code !== 'ENOENT') order = [];
  }
  if (order === null) {
    // Replace: the old directory goes aside, the committed one takes its name.
    if (await exists(target)) await fsp.rename(target, sibling(target, 'old'));
    await fsp.rename(committed, target).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    for (const old of await siblings(target, 'old')) await removeQuietly(old.path);
    return;
  }
  await fsp.mkdir(target, { recursive: true });
  const names = (await fsp.readdir(committed)).filter((n) => n !== MERGE_MARKER);
  const ordered = [...names.filter((n) => !order.includes(n)).sort(), ...order.filter((n) => names.includes(n))];
  let moved = 0;
  for (const n of ordered) {
    await fsp.rename(path.join(committed, n), path.join(target, n)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    if (++moved === 1) crashPoint('dir:moving', target);
  }
  await fsyncPath(target);
  await removeQuietly(committed);
}

async function exists(p: string): Promise<boolean> {
  return fsp.lstat(p).then(
    () => true,
    () => false,
  );
}

/** `recoverDir` for a caller that holds the directory's lock. */
async function recoverLocked(target: string): Promise<void> {
  for (const c of await siblings(target, 'new')) if (!c.alive) await rollForward(c.path, target);
  for (const old of await siblings(target, 'old')) {
    if (old.alive) continue;
    if (await exists(target)) await removeQuietly(old.path);
    else await fsp.rename(old.path, target).catch(() => undefined);
  }
  for (const t of await siblings(target, 'tmp')) if (!t.alive) await removeQuietly(t.path);
}

/**
 * Bring `dir` to a complete state after writers died: finish their committed writes
 * (roll forward), put back a directory a dead replace had moved aside before its commit
 * landed, and delete their temp leftovers. Work of live writers is left alone. Takes the
 * directory's lock (CONFLICT while a live process holds it).
 */
export async function recoverDir(dir: string): Promise<void> {
  const target = path.resolve(dir);
  await withDirLock(target, 'recover', () => recoverLocked(target));
}

/**
 * Make `dir` safe to read: wait (up to `timeoutMs`, default 5 s) while a live writer is
 * between its commit and the end of its move, and finish what dead writers committed.
 * Cheap when there is nothing to do (one directory listing). Readers of multi-file
 * directories (adapters, checkpoints) call it first.
 */
export async function settleDir(dir: string, opts: { timeoutMs?: number } = {}): Promise<void> {
  const target = path.resolve(dir);
  const deadline = Date.now() + (opts.timeoutMs ?? 5000);
  for (;;) {
    const pending = [...(await siblings(target, 'new')), ...(await siblings(target, 'old'))];
    if (pending.length === 0) return;
    if (!pending.some((p) => p.alive)) {
      try {
        await recoverDir(target);
        return;
      } catch (err) {
        // CONFLICT: a live writer holds the lock and finishes the move itself, so wait. Anything
        // else (a read-only place, say): read what is there.
        if (!(err instanceof SparsetuneError && err.code === 'CONFLICT')) return;
      }
    }
    if (Date.now() >= deadline) return;
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Clean a directory of what dead writers left in it: for every hidden temp, committed or
 * retired sibling name found, recover the directory it belongs to (e.g. a checkpoints
 * root after a crash while saving or pruning).
 */
export async function sweepDir(parent: string): Promise<void> {
  let names: string[];
  try {
    names = await fsp.readdir(parent);
  } catch {
    return;
  }
  const targets = new Set<string>();
  for (const n of names) {
    const m = /^\.(.+)\.(tmp|new|old)-(\d+-\d+)-[0-9a-f]+$/.exec(n);
    if (!m) continue;
    const tok = parseProcessToken(m[3]);
    if (tok && !isProcessAlive(tok.pid, tok.start)) targets.add(m[1]);
  }
  for (const t of targets) await recoverDir(path.join(parent, t)).catch(() => undefined);
}

export interface WriteDirOptions {
  /**
   * Over an existing directory: `replace` (default) swaps the whole directory; `merge`
   * moves the new files in and keeps the others (logs, checkpoints of the same run).
   */
  mode?: 'replace' | 'merge';
  /** Merge only: names to move last, in this order (the manifest last). */
  order?: string[];
  /** Hold the directory's lock (see dir-lock.ts) while writing (default true). */
  lock?: boolean;
}

/**
 * Write directory `dir` atomically: `fill` writes every file into a fresh temp directory
 * beside it (plain files only), which then becomes `dir` as described in this module's
 * comment. Holds `dir`'s lock, so two processes writing the same directory fail fast.
 */
export async function writeDirAtomic(dir: string, fill: (tmp: string) => Promise<void>, opts: WriteDirOptions = {}): Promise<void> {
  const target = path.resolve(dir);
  const existing = await fsp.stat(target).catch(() => null);
  if (existing && !existing.isDirectory()) {
    throw new SparsetuneError('BAD_ARGUMENT', `${target} exists and is not a directory; choose another output path`);
  }
  await fsp.mkdir(path.dirname(target), { recursive: true });
  const write = async () => {
    await recoverLocked(target);
    const tmp = sibling(target, 'tmp');
    await fsp.mkdir(tmp);
    try {
      await fill(tmp);
      for (const n of await fsp.readdir(tmp)) await fsyncPath(path.join(tmp, n));
      if (opts.mode === 'merge') await fsp.writeFile(path.join(tmp, MERGE_MARKER), JSON.stringify({ order: opts.order ?? [] }));
      await fsyncPath(tmp);
      crashPoint('dir:filled', target);
      if (!(await exists(target))) {
        if (opts.mode === 'merge') await fsp.rm(path.join(tmp, MERGE_MARKER));
        await fsp.rename(tmp, target);
        await fsyncPath(path.dirname(target));
        return;
      }
      const committed = sibling(target, 'new');
      await fsp.rename(tmp, committed);
      await fsyncPath(path.dirname(target));
      crashPoint('dir:committed', target);
      await rollForward(committed, target);
      await fsyncPath(path.dirname(target));
    } catch (err) {
      await removeQuietly(tmp);
      throw err;
    }
  };
  if (opts.lock === false) return write();
  return withDirLock(target, 'write', write);
}

/**
 * Delete a directory so that it is either all there or gone: it is renamed aside first
 * (a crash leaves a hidden leftover that `sweepDir` of the parent cleans), then removed.
 */
export async function removeDirAtomic(dir: string): Promise<void> {
  const target = path.resolve(dir);
  if (!(await exists(target))) return;
  const aside = sibling(target, 'tmp');
  await fsp.rename(target, aside);
  await removeQuietly(aside);
}

/** sha256 of a file's bytes, streamed ("sha256:<hex>"). */
export async function fileSha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return `sha256:${h.digest('hex')}`;
}
