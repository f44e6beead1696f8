/**
 * `npm run bench -- outcomes`: each method's defining claim, tested at our scale. Every part is
 * a standalone script `bench/outcomes/<part>.ts` (run alone with `node --import tsx
 * bench/outcomes/<part>.ts`) that writes `bench/results/outcomes-<part>.{json,md}`; this runner
 * runs the parts one after another, each in its own process (they time and measure memory),
 * and joins their markdown into `bench/results/outcomes.md`.
 *
 * `OUTCOMES_PARTS=gs-lora,mosa npm run bench -- outcomes` runs only the named parts.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { RESULTS, writeResults } from './util.js';

const dir = join(import.meta.dirname, 'outcomes');
const all = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && !f.startsWith('_'))
  .map((f) => f.slice(0, -3))
  .sort();
const only = (process.env.OUTCOMES_PARTS ?? '').split(',').map((s) => s.trim()).filter(Boolean);
const parts = only.length ? all.filter((p) => only.includes(p)) : all;
const failed: string[] = [];
for (const part of parts) {
  console.log(`\n--- bench/outcomes/${part}.ts ---`);
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(dir, `${part}.ts`)], { stdio: 'inherit', cwd: join(import.meta.dirname, '..') });
  if (r.status !== 0) failed.push(part);
}
const sections = ['## Outcomes: each method\'s defining claim at our scale', ''];
for (const part of all) {
  const md = join(RESULTS, `outcomes-${part}.md`);
  if (existsSync(md)) sections.push(readFileSync(md, 'utf8').trim(), '');
}
writeResults('outcomes', { parts: all, ran: parts, failed }, sections.join('\n'));
if (failed.length) {
  console.error(`outcome parts failed: ${failed.join(', ')}`);
  process.exit(1);
}
