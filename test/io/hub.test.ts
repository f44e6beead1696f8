import { createServer, type Server } from 'node:http';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cacheRepoDir, findCachedSnapshot, hubCacheDir, isHubId, resolveModelDir } from '../../src/io/hub.js';
import { loadModel } from '../../src/io/model-dir.js';

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

describe('downloading (local fake hub over HTTP)', () => {
  let server: Server;
  let hits: string[];
  beforeAll(async () => {
    hits = [];
    server = createServer(async (req, res) => {
      const url = req.url ?? '';
      hits.push(url);
      if (url === '/api/models/org/remote/revision/main') {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ sha: SHA_B, siblings: ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors', 'README.md'].map((rfilename) => ({ rfilename })) }));
        return;
      }
      if (url === '/api/models/org/broken/revision/main') {
        res.end(JSON.stringify({ sha: SHA_A, siblings: [{ rfilename: 'config.json' }, { rfilename: 'model.safetensors' }] }));
        return;
      }
      if (url === `/org/broken/resolve/${SHA_A}/config.json`) {
        res.end(await fsp.readFile(path.join(MODEL, 'config.json')));
        return;
      }
      const m = /^\/org\/remote\/resolve\/([0-9a-f]{40})\/(.+)$/.exec(url);
      if (m && m[1] === SHA_B) {
        try {
          res.end(await fsp.readFile(path.join(MODEL, m[2])));
        } catch {
          res.statusCode = 404;
          res.end();
        }
        return;
      }
      res.statusCode = 404;
      res.end('{}');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  });
  afterAll(async () => {
    await new Promise((r) => server.close(r));
  });

  it('downloads into the cache layout, writes refs/main, then resolves offline', async () => {
    const addr = server.address() as { port: number };
    process.env.HF_HOME = hfHome;
    process.env.HF_ENDPOINT = `http://127.0.0.1:${addr.port}`;
    const progress: string[] = [];
    const dir = await resolveModelDir('org/remote', { onProgress: (f) => progress.push(f) });
    const repo = path.join(hfHome, 'hub', 'models--org--remote');
    expect(dir).toBe(path.join(repo, 'snapshots', SHA_B));
    expect((await fsp.readFile(path.join(repo, 'refs', 'main'), 'utf8')).trim()).toBe(SHA_B);
    expect((await fsp.readdir(dir)).sort()).toEqual(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    expect(hits).not.toContain(`/org/remote/resolve/${SHA_B}/README.md`);
    expect(new Set(progress)).toContain('model.safetensors');
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'model.safetensors')), await fsp.readFile(path.join(MODEL, 'model.safetensors')))).toBe(0);
    process.env.HF_HUB_OFFLINE = '1';
    expect(await resolveModelDir('org/remote')).toBe(dir);
  });

  it('a failed download leaves no partial snapshot and says NOT_FOUND', async () => {
    const addr = server.address() as { port: number };
    process.env.HF_HOME = hfHome;
    process.env.HF_ENDPOINT = `http://127.0.0.1:${addr.port}`;
    await expect(resolveModelDir('org/absent')).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringMatching(/HTTP 404/) });
    await expect(fsp.readdir(path.join(hfHome, 'hub', 'models--org--absent', 'snapshots'))).rejects.toThrow();
    // config.json arrives, then the weights 404: nothing may be left in the cache.
    await expect(resolveModelDir('org/broken')).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringMatching(/model\.safetensors -> HTTP 404/) });
    expect(hits).toContain(`/org/broken/resolve/${SHA_A}/config.json`);
    expect(await fsp.readdir(path.join(hfHome, 'hub', 'models--org--broken', 'snapshots'))).toEqual([]);
    await expect(fsp.access(path.join(hfHome, 'hub', 'models--org--broken', 'refs', 'main'))).rejects.toThrow();
    await expect(resolveModelDir('org/absent', { download: false })).rejects.toMatchObject({ message: expect.stringMatching(/downloading is disabled/) });
  });
});
