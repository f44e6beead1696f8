/**
 * Deterministic crash injection for crash-safety tests, off unless an environment variable
 * asks for it. Writers call `crashPoint(name, subject)` at the steps of a write where a
 * crash must leave a recoverable state; with `SPARSETUNE_CRASH_AT=<name>` (or
 * `<name>#<n>` for the n-th time, counting from 1) the process kills itself with SIGKILL
 * there, exactly like `kill -9` arriving at that instant. `SPARSETUNE_CRASH_PATH=<text>`
 * limits it to subjects (file or directory paths) containing that text.
 *
 * Points: `file:partial` (half of a file written), `file:written` (temp file complete,
 * not yet renamed), `safetensors:header` (header written, tensors not), `dir:filled`
 * (temp directory complete, not committed), `dir:committed` (committed, not yet in place),
 * `dir:moving` (first file moved into an existing directory), `checkpoint:pruning` (new
 * checkpoint saved, old ones not yet removed).
 */
import { writeSync } from 'node:fs';

let hits = 0;

/** Kill the process here if SPARSETUNE_CRASH_AT names this point (tests only). */
export function crashPoint(name: string, subject: string): void {
  const spec = process.env.SPARSETUNE_CRASH_AT;
  if (!spec) return;
  const [point, nth] = spec.split('#');
  if (point !== name) return;
  const filter = process.env.SPARSETUNE_CRASH_PATH;
  if (filter && !subject.includes(filter)) return;
  hits++;
  if (hits !== (nth ? Number(nth) : 1)) return;
  writeSync(2, `sparsetune: SPARSETUNE_CRASH_AT=${spec}: killing the process at ${name} (${subject})\n`);
  process.kill(process.pid, 'SIGKILL');
}
