/**
 * A lock file for one download at a time per cache blob across processes (huggingface_hub
 * locks the same way with its own files): created exclusively with the owner's pid; a lock
 * whose owner process is gone is taken over; otherwise we wait for it.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Locks held (or waited for) by this process, so two calls here queue instead of racing. */
const held = new Map<string, Promise<unknown>>();

/** Run `fn` holding the lock `file` (waits, polling, while another live process holds it). */
export function withFileLock<T>(file: string, fn: () => Promise<T>, pollMs = 100): Promise<T> {
  const prev = held.get(file) ?? Promise.resolve();
  const run = prev.catch(() => undefined).then(() => lockAndRun(file, fn, pollMs));
  held.set(file, run);
  void run.finally(() => {
    if (held.get(file) === run) held.delete(file);
  }).catch(() => undefined);
  return run;
}

async function lockAndRun<T>(file: string, fn: () => Promise<T>, pollMs: number): Promise<T> {
  await fsp.mkdir(path.dirname(file), { recursive: true });
  for (;;) {
    try {
      await fsp.writeFile(file, String(process.pid), { flag: 'wx' });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = Number((await fsp.readFile(file, 'utf8').catch(() => '')).trim());
      if (!Number.isInteger(owner) || owner <= 0 || owner === process.pid || !alive(owner)) {
        // Stale (its process died; our own pid can only be a leftover, since this process queues above) or unreadable.
        await fsp.rm(file, { force: true });
        continue;
      }
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }
  try {
    return await fn();
  } finally {
    await fsp.rm(file, { force: true });
  }
}
