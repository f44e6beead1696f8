/**
 * Telling a live process from a dead one by name: a token `<pid>-<start>` where `start` is
 * the process start time from /proc (clock ticks since boot), so a pid reused by another
 * process after a crash does not look alive. Where /proc is missing, `start` is 0 and only
 * the pid is checked. Used by temp-file cleanup and run-directory locks.
 */
import { readFileSync } from 'node:fs';

/** Start time of `pid` in clock ticks since boot (Linux /proc), or 0 when unknown. */
export function processStartTime(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22 (starttime); the command name (field 2) may contain spaces, so count from ")".
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const start = Number(fields[19]);
    return Number.isFinite(start) ? start : 0;
  } catch {
    return 0;
  }
}

let own: string | undefined;

/** This process's token (`<pid>-<start>`). */
export function ownProcessToken(): string {
  own ??= `${process.pid}-${processStartTime(process.pid)}`;
  return own;
}

/** Whether the process `pid` (started at `start`, 0 = unknown) still runs on this host. */
export function isProcessAlive(pid: number, start = 0): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (pid === process.pid) return start === 0 || start === processStartTime(pid);
  try {
    process.kill(pid, 0);
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  if (start === 0) return true;
  const now = processStartTime(pid);
  return now === 0 || now === start;
}

/** Parse a `<pid>-<start>` token; null when malformed. */
export function parseProcessToken(token: string): { pid: number; start: number } | null {
  const m = /^(\d+)-(\d+)$/.exec(token);
  return m ? { pid: Number(m[1]), start: Number(m[2]) } : null;
}
