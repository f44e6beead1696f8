/**
 * A lock on an output directory, so two runs writing the same `--out` fail fast instead of
 * interleaving their files. The lock is a file beside the directory (`.<name>.lock`, so it
 * also covers a directory that does not exist yet or is replaced whole) holding the
 * holder's pid, process start time, host, start time and command. It is created with an
 * atomic link, so it is never seen half-written.
 *
 * A lock whose holder died (same host, pid gone or reused) is stale and is taken over:
 * it is renamed aside and checked to be the very file judged stale before it is removed,
 * so two processes taking over at once cannot both win. A holder on another host cannot be
 * checked; the error says how to remove its lock by hand.
 *
 * Within one process, nested `withDirLock` calls on the same directory (a training run that
 * saves its adapter, a save that writes through `writeDirAtomic`) share the lock; another
 * concurrent task of the same process is refused like another process.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes } from 'node:crypto';
import { promises as fsp, readFileSync, unlinkSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { isProcessAlive, processStartTime } from './process-id.js';

const holderSchema = z.object({
  pid: z.number().int(),
  start: z.number().int().nonnegative(),
  host: z.string(),
  since: z.string(),
  command: z.string(),
  purpose: z.string(),
  nonce: z.string(),
});
/** Who holds a directory lock. */
export type LockHolder = z.infer<typeof holderSchema>;

/** Path of the lock file of `dir`. */
export function lockFileOf(dir: string): string {
  const target = path.resolve(dir);
  return path.join(path.dirname(target), `.${path.basename(target)}.lock`);
}

/** Lock files this process holds (path -> holder), removed on exit if still held. */
const held = new Map<string, LockHolder>();
const context = new AsyncLocalStorage<ReadonlySet<string>>();
let exitHook = false;

function releaseAllOnExit(): void {
  if (exitHook) return;
  exitHook = true;
  process.once('exit', () => {
    for (const [file, h] of held) {
      try {
        if ((JSON.parse(readFileSync(file, 'utf8')) as LockHolder).nonce === h.nonce) unlinkSync(file);
      } catch {
        // gone already
      }
    }
  });
}

async function readHolder(file: string): Promise<LockHolder | null | 'absent'> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'absent';
    throw err;
  }
  try {
    const r = holderSchema.safeParse(JSON.parse(text));
    return r.success ? r.data : null;
  } catch {
    return null;
  }
}

function describe(h: LockHolder): string {
  return `pid ${h.pid} on host ${h.host}, since ${h.since}, running "${h.command}" (${h.purpose})`;
}

/** Create the lock file with our holder record, atomically; false if it exists. */
async function tryCreate(file: string, me: LockHolder): Promise<boolean> {
  const tmp = `${file}.${me.nonce}`;
  await fsp.writeFile(tmp, `${JSON.stringify(me)}\n`, { flag: 'wx' });
  try {
    await fsp.link(tmp, file);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw err;
    // No hard links on this file system: exclusive create (the record is tiny).
    try {
      await fsp.writeFile(file, `${JSON.stringify(me)}\n`, { flag: 'wx' });
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw e;
    }
  } finally {
    await fsp.rm(tmp, { force: true });
  }
}

/** Remove a lock judged stale, unless another process replaced it meanwhile. */
async function takeOver(file: string, stale: LockHolder | null): Promise<void> {
  const aside = `${file}.stale-${randomBytes(4).toString('hex')}`;
  try {
    await fsp.rename(file, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const moved = await readHolder(aside);
  const same = stale === null ? moved === null : moved !== null && moved !== 'absent' && moved.nonce === stale.nonce;
  if (!same) {
    // A live holder took it over between our read and our rename: give it back.
    await fsp.link(aside, file).catch(() => undefined);
  }
  await fsp.rm(aside, { force: true });
}

/** A held directory lock; `release` is idempotent. */
export interface DirLock {
  readonly file: string;
  readonly holder: LockHolder;
  release(): Promise<void>;
}

/**
 * Take the lock of `dir` or throw CONFLICT naming its holder (pid, host, start time,
 * command). A stale lock of a dead process on this host is taken over. `purpose` is
 * recorded for whoever finds the lock (e.g. "train", "write").
 */
export async function acquireDirLock(dir: string, purpose: string): Promise<DirLock> {
  const file = lockFileOf(dir);
  const target = path.resolve(dir);
  const mine = held.get(file);
  if (mine) {
    throw new SparsetuneError('CONFLICT', `${target} is being written by another task of this process (${describe(mine)}); wait for it to finish or choose another output directory`);
  }
  await fsp.mkdir(path.dirname(file), { recursive: true });
  const me: LockHolder = {
    pid: process.pid,
    start: processStartTime(process.pid),
    host: os.hostname(),
    since: new Date().toISOString(),
    command: [path.basename(process.argv[1] ?? 'node'), ...process.argv.slice(2)].join(' ').slice(0, 300),
    purpose,
    nonce: randomBytes(8).toString('hex'),
  };
  for (let attempt = 0; attempt < 5; attempt++) {
    if (await tryCreate(file, me)) {
      held.set(file, me);
      releaseAllOnExit();
      let released = false;
      return {
        file,
        holder: me,
        release: async () => {
          if (released) return;
          released = true;
          held.delete(file);
          const now = await readHolder(file).catch(() => null);
          if (now && now !== 'absent' && now.nonce === me.nonce) await fsp.rm(file, { force: true });
        },
      };
    }
    const h = await readHolder(file);
    if (h === 'absent') continue; // released meanwhile
    if (h === null && Date.now() - (await fsp.stat(file).then((st) => st.mtimeMs, () => 0)) < 5000) {
      // Unreadable and fresh: maybe being written where links are unsupported; look again.
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    const stale = h === null || (h.host === me.host && !isProcessAlive(h.pid, h.start));
    if (!stale) {
      throw new SparsetuneError(
        'CONFLICT',
        `${target} is in use by another sparsetune process: ${describe(h)}. Wait for it to finish or choose another output directory; if that process is gone (e.g. it ran on another machine), delete ${file}`,
      );
    }
    await takeOver(file, h);
  }
  throw new SparsetuneError('CONFLICT', `${target}: could not take its lock ${file} (other processes keep taking it); try again`);
}

/**
 * Run `fn` holding the lock of `dir`. Nested calls for the same directory inside `fn`
 * (same async context) reuse the lock; see the module comment.
 */
export async function withDirLock<T>(dir: string, purpose: string, fn: () => Promise<T>): Promise<T> {
  const file = lockFileOf(dir);
  const outer = context.getStore();
  if (outer?.has(file)) return fn();
  const lock = await acquireDirLock(dir, purpose);
  try {
    return await context.run(new Set([...(outer ?? []), file]), fn);
  } finally {
    await lock.release();
  }
}
