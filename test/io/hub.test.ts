import { existsSync, promises as fsp, readFileSync, statSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cacheRepoDir, findCachedSnapshot, hubCacheDir, isHubId, resolveModelDir, type DownloadProgress } from '../../src/io/hub.js';
import { loadModel } from '../../src/io/model-dir.js';
import { etagOf, FakeHub, repoFromDir } from './fake-hub.js';

const SHA_A = 'a'.repeat(40);
const SHA_B = 'b'.repeat(40);
const MODEL = path.resolve('models/stories260K');
let hfHome: string;
const saved = { ...process.env };

beforeAll(async () => {
  hfHome = await fsp.mkdtemp(path.join(os.tmpdir(), 'hfhome-'));
});
afterEach(() => {
  for (const k of ['HF_HOME', 'HF_HUB_CACHE', 'HF_HUB_OFFLINE', 'HF_ENDPOINT']) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
});
afterAll(async () => {
  await fsp.rm(hfHome, { recursive: true, force: true });
});

async function fakeSnapshot(repo: string, sha: string, mtime: Date): Promise<string> {
  const dir = path.join(repo, 'snapshots', sha);
  await fsp.mkdir(dir, { recursive: true });
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors']) await fsp.copyFile(path.join(MODEL, f), path.join(dir, f));
  await fsp.utimes(dir, mtime, mtime);
  return dir;
}

describe('hub cache resolution', () => {
  it('follows HF_HUB_CACHE / HF_HOME and recognizes hub ids', () => {
    expect(hubCacheDir({ HF_HOME: '/x' })).toBe('/x/hub');
    expect(hubCacheDir({ HF_HOME: '/x', HF_HUB_CACHE: '/y' })).toBe('/y');
    expect(hubCacheDir({ XDG_CACHE_HOME: '/c' })).toBe('/c/huggingface/hub');
    expect(isHubId('karpathy/tinyllamas')).toBe(true);
    expect(isHubId('./local')).toBe(false);
    expect(isHubId('a/b/c')).toBe(false);
    expect(isHubId('../x')).toBe(false);
  });

  it('uses refs/main when present, else the newest snapshot', async () => {
    process.env.HF_HOME = hfHome;
    process.env.HF_HUB_OFFLINE = '1';
    const repo = cacheRepoDir('org/tiny', path.join(hfHome, 'hub'));
    expect(repo).toBe(path.join(hfHome, 'hub', 'models--org--tiny'));
    const older = await fakeSnapshot(repo, SHA_A, new Date(2020, 1, 1));
    const newer = await fakeSnapshot(repo, SHA_B, new Date(2024, 1, 1));
    expect(await resolveModelDir('org/tiny')).toBe(newer);
    await fsp.mkdir(path.join(repo, 'refs'), { recursive: true });
    await fsp.writeFile(path.join(repo, 'refs', 'main'), `${SHA_A}\n`);
    expect(await resolveModelDir('org/tiny')).toBe(older);
    expect(await findCachedSnapshot('org/tiny', { cacheDir: path.join(hfHome, 'hub'), revision: SHA_B })).toBe(newer);
    const m = await loadModel('org/tiny', { weights: false });
    expect(m.dir).toBe(older);
    expect(m.config.arch).toBe('llama');
  });

  it('prefers an existing directory and reports where it looked', async () => {
    process.env.HF_HOME = hfHome;
    process.env.HF_HUB_OFFLINE = '1';
    expect(await resolveModelDir(MODEL)).toBe(MODEL);
    await expect(resolveModelDir('org/missing')).rejects.toMatchObject({
      code: 'NOT_FOUND',
      message: expect.stringContaining(path.join(hfHome, 'hub', 'models--org--missing')),
    });
    await expect(resolveModelDir('not a model')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});

describe('downloading through @huggingface/hub (a fake hub on loopback)', () => {
  const hub = new FakeHub();
  const FILES = ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'];
  beforeAll(async () => {
    await hub.start();
    hub.repos.set('org/remote', repoFromDir(MODEL, FILES, SHA_B));
    hub.repos.set('org/resume', repoFromDir(MODEL, FILES, SHA_A));
    hub.repos.set('org/broken', { sha: SHA_A, files: new Map([['config.json', readFileSync(path.join(MODEL, 'config.json'))]]) });
  });
  afterAll(() => hub.stop());
  const env = (home: string) => {
    process.env.HF_HOME = home;
    process.env.HF_ENDPOINT = hub.url;
  };

  it('fills the standard cache (blobs, snapshot symlinks, refs/main) with progress, then resolves offline', async () => {
    env(await fsp.mkdtemp(path.join(os.tmpdir(), 'hfhome-dl-')));
    const events: DownloadProgress[] = [];
    const dir = await resolveModelDir('org/remote', { progressCallback: (p) => events.push(p) });
    const repo = cacheRepoDir('org/remote');
    expect(repo).toBe(path.join(process.env.HF_HOME!, 'hub', 'models--org--remote'));
    expect(dir).toBe(path.join(repo, 'snapshots', SHA_B));
    expect((await fsp.readFile(path.join(repo, 'refs', 'main'), 'utf8')).trim()).toBe(SHA_B);
    expect((await fsp.readdir(dir)).sort()).toEqual([...FILES].sort());
    for (const f of FILES) {
      // huggingface_hub's layout: a relative symlink to blobs/<etag> (sha256 for LFS files, the git blob id otherwise).
      const data = readFileSync(path.join(MODEL, f));
      expect(await fsp.readlink(path.join(dir, f))).toBe(path.join('..', '..', 'blobs', etagOf(f, data)));
      expect(Buffer.compare(await fsp.readFile(path.join(dir, f)), data)).toBe(0);
    }
    expect(hub.hits.some((h) => h.url.endsWith('/README.md'))).toBe(false);
    const weights = events.filter((e) => e.file === 'model.safetensors');
    const size = statSync(path.join(MODEL, 'model.safetensors')).size;
    expect(weights.at(-1)).toEqual({ repo: 'org/remote', file: 'model.safetensors', loaded: size, total: size, status: 'done' });
    expect(weights.map((e) => e.loaded)).toEqual([...weights.map((e) => e.loaded)].sort((a, b) => a - b));
    process.env.HF_HUB_OFFLINE = '1';
    const before = hub.hits.length;
    expect(await resolveModelDir('org/remote')).toBe(dir);
    expect((await loadModel('org/remote', { weights: false })).config.arch).toBe('llama');
    expect(hub.hits.length).toBe(before); // offline: no request at all
  });

  it('resumes an interrupted download from the bytes already in blobs/<etag>.incomplete', async () => {
    env(await fsp.mkdtemp(path.join(os.tmpdir(), 'hfhome-resume-')));
    const data = readFileSync(path.join(MODEL, 'model.safetensors'));
    hub.cutNext.set('model.safetensors', 300_000);
    await expect(resolveModelDir('org/resume')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    const incomplete = path.join(cacheRepoDir('org/resume'), 'blobs', `${etagOf('model.safetensors', data)}.incomplete`);
    const partial = statSync(incomplete).size;
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThan(data.length);
    // No usable snapshot yet: offline, it says what is missing.
    process.env.HF_HUB_OFFLINE = '1';
    await expect(resolveModelDir('org/resume')).rejects.toMatchObject({ message: expect.stringMatching(/lacks model\.safetensors.*downloading is disabled/) });
    delete process.env.HF_HUB_OFFLINE;
    const dir = await resolveModelDir('org/resume');
    expect(hub.hits.filter((h) => h.url.endsWith('/model.safetensors')).map((h) => h.range)).toContain(`bytes=${partial}-${data.length - 1}`);
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'model.safetensors')), data)).toBe(0);
    expect(existsSync(incomplete)).toBe(false);
  });

  it('a failed download says NOT_FOUND with the hub\'s answer and leaves no usable snapshot', async () => {
    env(await fsp.mkdtemp(path.join(os.tmpdir(), 'hfhome-fail-')));
    await expect(resolveModelDir('org/absent')).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringMatching(/HTTP 404/) });
    await expect(resolveModelDir('org/broken')).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringMatching(/no model\.safetensors/) });
    await expect(resolveModelDir('org/absent', { download: false })).rejects.toMatchObject({ message: expect.stringMatching(/downloading is disabled/) });
  });
});
