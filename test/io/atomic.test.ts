/**
 * The atomic writer and the directory lock: files and directories are replaced whole or
 * merged manifest-last, what dead writers committed is finished and what they left is
 * cleaned, and a second writer of the same directory (another process, or another task of
 * this one) fails fast naming the holder, while a dead holder's lock is taken over once.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { recoverDir, settleDir, sweepDir, writeDirAtomic, writeFileAtomic } from '../../src/io/atomic.js';
import { acquireDirLock, lockFileOf, withDirLock } from '../../src/io/dir-lock.js';

const ROOT = path.join(import.meta.dirname, '..', '..');
let tmp: string;
let n = 0;
const fresh = () => path.join(tmp, `d${n++}`);
/** A process token of a process that has exited (its pid is free). */
let deadToken: string;

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'atomic-test-'));
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  deadToken = `${r.stdout}-0`;
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

async function files(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir)).sort();
}
async function read(file: string): Promise<string> {
  return fsp.readFile(file, 'utf8');
}

/** A child process that takes the lock of `dir` and holds it until killed. */
async function holdInChild(dir: string): Promise<ChildProcess> {
  const code = `import { acquireDirLock } from './src/io/dir-lock.ts'; await acquireDirLock(process.argv[1], 'test holder'); process.stdout.write('locked\\n'); setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['--input-type=module', '--import', 'tsx', '-e', code, dir], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => d.toString().includes('locked') && resolve());
    child.on('exit', (c) => reject(new Error(`holder exited with ${c}`)));
  });
  return child;
}

describe('writeFileAtomic', () => {
  it('replaces the file whole, leaves no temp, and removes temps of dead writers', async () => {
    const dir = fresh();
    await fsp.mkdir(dir);
    const file = path.join(dir, 'a.json');
    await fsp.writeFile(path.join(dir, `.a.json.tmp-${deadToken}-abcd`), 'half');
    await fsp.writeFile(path.join(dir, `.a.json.tmp-${process.pid}-0-beef`), 'a live writer (this process)');
    await writeFileAtomic(file, 'one');
    await writeFileAtomic(file, new TextEncoder().encode('two'));
    await writeFileAtomic(file, async (fh) => void (await fh.write('three')));
    expect(await read(file)).toBe('three');
    expect(await files(dir)).toEqual([`.a.json.tmp-${process.pid}-0-beef`, 'a.json']);
  });
});

describe('writeDirAtomic', () => {
  it('replace: the directory is swapped whole; merge: new files go in manifest last and others stay', async () => {
    const dir = fresh();
    await writeDirAtomic(dir, async (t) => {
      await fsp.writeFile(path.join(t, 'x'), '1');
      await fsp.writeFile(path.join(t, 'y'), '1');
    });
    expect(await files(dir)).toEqual(['x', 'y']);
    await writeDirAtomic(dir, async (t) => fsp.writeFile(path.join(t, 'x'), '2'));
    expect(await files(dir)).toEqual(['x']);
    await fsp.writeFile(path.join(dir, 'log'), 'mine');
    await writeDirAtomic(dir, async (t) => {
      await fsp.writeFile(path.join(t, 'x'), '3');
      await fsp.writeFile(path.join(t, 'm.json'), '3');
    }, { mode: 'merge', order: ['x', 'm.json'] });
    expect(await files(dir)).toEqual(['log', 'm.json', 'x']);
    expect(await read(path.join(dir, 'x'))).toBe('3');
    expect((await files(tmp)).filter((f) => f.startsWith(`.${path.basename(dir)}.`))).toEqual([]);
  });

  it('a failing fill leaves the old directory and no leftovers', async () => {
    const dir = fresh();
    await writeDirAtomic(dir, async (t) => fsp.writeFile(path.join(t, 'x'), 'old'));
    await expect(writeDirAtomic(dir, async (t) => {
      await fsp.writeFile(path.join(t, 'x'), 'new');
      throw new Error('disk full');
    })).rejects.toThrow('disk full');
    expect(await read(path.join(dir, 'x'))).toBe('old');
    expect((await files(tmp)).filter((f) => f.startsWith(`.${path.basename(dir)}.`))).toEqual([]);
  });

  it('finishes what a dead writer committed (merge and replace) and removes its temp leftovers', async () => {
    // merge: the dead writer had moved one file of two.
    const m = fresh();
    await fsp.mkdir(m);
    await fsp.writeFile(path.join(m, 'data'), 'new');
    await fsp.writeFile(path.join(m, 'manifest'), 'old');
    await fsp.writeFile(path.join(m, 'log'), 'keep');
    const committed = path.join(tmp, `.${path.basename(m)}.new-${deadToken}-0001`);
    await fsp.mkdir(committed);
    await fsp.writeFile(path.join(committed, 'manifest'), 'new');
    await fsp.writeFile(path.join(committed, '.sparsetune-merge.json'), JSON.stringify({ order: ['data', 'manifest'] }));
    await fsp.mkdir(path.join(tmp, `.${path.basename(m)}.tmp-${deadToken}-0002`));
    await settleDir(m);
    expect(await files(m)).toEqual(['data', 'log', 'manifest']);
    expect(await read(path.join(m, 'manifest'))).toBe('new');
    expect((await files(tmp)).filter((f) => f.startsWith(`.${path.basename(m)}.`))).toEqual([]);

    // replace: the dead writer had moved the old directory aside, not yet the new one in.
    const r = fresh();
    await fsp.mkdir(path.join(tmp, `.${path.basename(r)}.old-${deadToken}-0003`));
    await fsp.writeFile(path.join(tmp, `.${path.basename(r)}.old-${deadToken}-0003`, 'x'), 'old');
    await fsp.mkdir(path.join(tmp, `.${path.basename(r)}.new-${deadToken}-0004`));
    await fsp.writeFile(path.join(tmp, `.${path.basename(r)}.new-${deadToken}-0004`, 'x'), 'new');
    await recoverDir(r);
    expect(await read(path.join(r, 'x'))).toBe('new');
    expect((await files(tmp)).filter((f) => f.startsWith(`.${path.basename(r)}.`))).toEqual([]);

    // a replace that died before its commit: the old directory goes back.
    const b = fresh();
    await fsp.mkdir(path.join(tmp, `.${path.basename(b)}.old-${deadToken}-0005`));
    await fsp.writeFile(path.join(tmp, `.${path.basename(b)}.old-${deadToken}-0005`, 'x'), 'old');
    await sweepDir(tmp);
    expect(await read(path.join(b, 'x'))).toBe('old');
  });

  it('leaves a live writer\'s commit alone', async () => {
    const dir = fresh();
    const live = path.join(tmp, `.${path.basename(dir)}.tmp-${process.pid}-0-0006`);
    await fsp.mkdir(live);
    await recoverDir(dir);
    expect(existsSync(live)).toBe(true);
    await fsp.rm(live, { recursive: true });
  });
});

describe('directory locks', () => {
  it('a second process writing the same directory fails fast, naming the holder; a killed holder\'s lock is taken over', async () => {
    const dir = fresh();
    const child = await holdInChild(dir);
    try {
      const err = await writeDirAtomic(dir, async () => undefined).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(SparsetuneError);
      expect((err as SparsetuneError).code).toBe('CONFLICT');
      expect((err as Error).message).toContain(`${dir} is in use by another sparsetune process: pid ${child.pid} on host ${os.hostname()}, since 20`);
      expect((err as Error).message).toMatch(/"test holder"|\(test holder\)/);
      expect((err as Error).message).toContain(`delete ${lockFileOf(dir)}`);
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    expect(existsSync(lockFileOf(dir))).toBe(true); // kill -9 left it behind
    await writeDirAtomic(dir, async (t) => fsp.writeFile(path.join(t, 'x'), 'after'));
    expect(await read(path.join(dir, 'x'))).toBe('after');
    expect(existsSync(lockFileOf(dir))).toBe(false);
  });

  it('nests within one task, refuses a concurrent task of the same process, and one of two takeovers of a stale lock wins', async () => {
    const dir = fresh();
    await withDirLock(dir, 'outer', async () => {
      await writeDirAtomic(dir, async (t) => fsp.writeFile(path.join(t, 'x'), 'nested'));
      await expect(acquireDirLock(dir, 'rival')).rejects.toThrow(/another task of this process/);
    });
    const stale = { pid: Number(deadToken.split('-')[0]), start: 0, host: os.hostname(), since: '2000-01-01T00:00:00.000Z', command: 'dead', purpose: 'x', nonce: 'deadbeef' };
    await fsp.writeFile(lockFileOf(dir), JSON.stringify(stale));
    const results = await Promise.allSettled([acquireDirLock(dir, 'a'), acquireDirLock(dir, 'b')]);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason.code).toBe('CONFLICT');
    await (results.find((r) => r.status === 'fulfilled') as PromiseFulfilledResult<Awaited<ReturnType<typeof acquireDirLock>>>).value.release();
    expect(existsSync(lockFileOf(dir))).toBe(false);
  });
});
