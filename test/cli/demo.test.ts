import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadAdapter } from '../../src/merge/adapter.js';

const root = join(import.meta.dirname, '..', '..');
const out = mkdtempSync(join(tmpdir(), 'sparsetune-demo-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describe('sparsetune demo', () => {
  it('runs end to end offline: trains two sparse deltas, composes them, generates, and held-out loss falls', async () => {
    const stdout = execFileSync(process.execPath, [join(root, 'bin', 'sparsetune.js'), 'demo', '--steps', '12', '--out', out], {
      cwd: root,
      encoding: 'utf8',
      env: { ...process.env, SPARSETUNE_THREADS: '1' },
      timeout: 170_000,
    });
    expect(stdout).toMatch(/held-out loss/);
    expect(stdout).toMatch(/Try next:/);
    const summary = JSON.parse(readFileSync(join(out, 'demo-summary.json'), 'utf8'));
    expect(summary.language.after).toBeLessThan(summary.language.before);
    expect(summary.task.after).toBeLessThan(summary.task.before);
    for (const dir of Object.values(summary.adapters as Record<string, string>)) {
      expect(existsSync(join(dir, 'adapter.json'))).toBe(true);
      const a = await loadAdapter(dir);
      expect(a.meta.kind).toBe('additive');
    }
    expect(Object.keys(summary.compare)).toEqual(['base', '+ language', '+ task', '+ language + task']);
    // The composition is sparse deltas added together: it moves the Spanish loss like the language delta does.
    expect(summary.compare['+ language'].spanishLoss).toBeLessThan(summary.compare.base.spanishLoss);
    expect(summary.compare['+ task'].taskLoss).toBeLessThan(summary.compare.base.taskLoss);
  }, 180_000);
});
