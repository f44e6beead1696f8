/**
 * Crash safety of `sparsetune train`, with `kill -9` delivered at precise instants inside
 * the writes (SPARSETUNE_CRASH_AT makes the child SIGKILL itself there, so nothing depends
 * on timing): a crash while a checkpoint is written keeps the previous checkpoints, a crash
 * while the adapter is saved leaves the previous adapter or the new one (never a mix), and
 * `--resume` then ends with the very adapter bits of an uninterrupted run.
 */
import { execFile } from 'node:child_process';
import { existsSync, promises as fsp, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireDirLock } from '../../src/io/dir-lock.js';
import { loadAdapter } from '../../src/merge/adapter.js';
import { CheckpointManager, loadCheckpoint } from '../../src/train/checkpoint.js';
import { readMetrics } from '../../src/train/metrics.js';
import { BIN, ROOT, SHARED_DATA } from '../cli/helpers.js';

let tmp: string;
let dataFile: string;
let reference: Buffer;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

/** `sparsetune train` (LoRA, 4 steps, a checkpoint every 2) into `out`, with `env` (crash points). */
function train(out: string, extra: string[] = [], env: Record<string, string> = {}): Promise<Run> {
  const args = ['train', '--method', 'lora', '--data', dataFile, '--out', out, '--steps', '4', '--batch-size', '2', '--seq-len', '24', '--holdout', '0', '--checkpoint-every', '2', '--quiet', ...extra];
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [BIN, ...args], { cwd: ROOT, env: { ...process.env, SPARSETUNE_THREADS: '1', ...env } }, (err, _stdout, stderr) => {
      resolve({ code: child.exitCode, signal: child.signalCode, stderr });
      void err;
    });
  });
}

const adapterBytes = (dir: string) => readFileSync(path.join(dir, 'adapter.safetensors'));
const leftovers = async (dir: string) => (await fsp.readdir(dir)).filter((n) => n.startsWith('.'));

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'sparsetune-crash-'));
  dataFile = path.join(tmp, 'train.txt');
  const lines = readFileSync(path.join(SHARED_DATA, 'ud-pud', 'pud_es.txt'), 'utf8').split('\n').filter(Boolean);
  await fsp.writeFile(dataFile, lines.slice(0, 16).join('\n'));
  const ref = await train(path.join(tmp, 'reference'));
  expect(ref.code, ref.stderr).toBe(0);
  reference = adapterBytes(path.join(tmp, 'reference'));
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

describe('kill -9 during train', () => {
  it('while a checkpoint is written: the previous checkpoint stays complete and --resume ends bit-exact', async () => {
    const out = path.join(tmp, 'ckpt');
    const crashed = await train(out, [], { SPARSETUNE_CRASH_AT: 'safetensors:header', SPARSETUNE_CRASH_PATH: 'step-00000004' });
    expect(crashed.signal, crashed.stderr).toBe('SIGKILL');
    expect(crashed.stderr).toMatch(/killing the process at safetensors:header/);
    const ckpts = new CheckpointManager(path.join(out, 'checkpoints'));
    expect((await ckpts.list()).map((c) => c.step)).toEqual([2]);
    expect((await loadCheckpoint(path.join(out, 'checkpoints', 'step-00000002'))).state.step).toBe(2);
    expect(existsSync(path.join(out, 'adapter.json'))).toBe(false);

    const resumed = await train(out, ['--resume']);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(adapterBytes(out).equals(reference)).toBe(true);
    expect((await readMetrics(path.join(out, 'metrics.jsonl'))).filter((l) => l.type === 'train').map((l) => l.step)).toEqual([1, 2, 3, 4]);
    expect(await leftovers(path.join(out, 'checkpoints'))).toEqual([]);
  });

  it('while the adapter is saved: the previous adapter, or after the commit the new one, never a mix; --resume ends bit-exact', async () => {
    const out = path.join(tmp, 'save');
    const first = await train(out, ['--steps', '2']);
    expect(first.code, first.stderr).toBe(0);
    const previous = adapterBytes(out);
    expect(previous.equals(reference)).toBe(false);

    // Before the commit (the 3rd directory write: checkpoints 2 and 4, then the adapter).
    const beforeCommit = await train(out, ['--overwrite'], { SPARSETUNE_CRASH_AT: 'dir:filled#3' });
    expect(beforeCommit.signal, beforeCommit.stderr).toBe('SIGKILL');
    expect(adapterBytes(out).equals(previous)).toBe(true);
    await loadAdapter(out); // complete and consistent (checksum, tensors)
    expect((await new CheckpointManager(path.join(out, 'checkpoints')).list()).map((c) => c.step)).toEqual([2, 4]);

    // After the commit, halfway through moving the files in: readers get the new adapter whole.
    const midMove = await train(out, ['--resume'], { SPARSETUNE_CRASH_AT: 'dir:moving' });
    expect(midMove.signal, midMove.stderr).toBe('SIGKILL');
    const loaded = await loadAdapter(out);
    expect(loaded.meta.method).toBe('lora');
    expect(adapterBytes(out).equals(reference)).toBe(true);

    const resumed = await train(out, ['--resume']);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(adapterBytes(out).equals(reference)).toBe(true);
    expect(await leftovers(tmp)).toEqual([]);
  });

  it('a train on an --out another run holds fails fast naming the holder, and leaves its files alone', async () => {
    const out = path.join(tmp, 'busy');
    const lock = await acquireDirLock(out, 'sparsetune train (the first run)');
    try {
      const second = await train(out);
      expect(second.code).toBe(1);
      expect(second.stderr).toContain(`${out} is in use by another sparsetune process: pid ${process.pid} on host ${os.hostname()}, since ${lock.holder.since}`);
      expect(second.stderr).toMatch(/\(sparsetune train \(the first run\)\)\. Wait for it to finish or choose another output directory/);
      expect(existsSync(out)).toBe(false);
    } finally {
      await lock.release();
    }
  });
});
