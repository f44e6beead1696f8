/**
 * Model references: a local directory, or a Hugging Face hub id (`org/name`) looked up in
 * the local HF cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub) in
 * the layout huggingface_hub uses: models--org--name/{refs/main, snapshots/<commit>/}.
 * Missing models are downloaded from $HF_ENDPOINT (default https://huggingface.co) unless
 * HF_HUB_OFFLINE is set; a snapshot appears in the cache only once it is complete.
 */
import { createWriteStream, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { writeFileAtomic } from './atomic.js';

const HUB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Files fetched when downloading a model (those the repo has). */
const WANTED_FILES = [
  'config.json',
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'tokenizer.model',
  'chat_template.jinja',
  'model.safetensors',
  'model.safetensors.index.json',
];

export interface ResolveOptions {
  /** Allow downloading when the model is not cached (default: true unless HF_HUB_OFFLINE). */
  download?: boolean;
  /** Branch, tag or commit to download (default "main"). */
  revision?: string;
  /** Called with (file, bytesDone, bytesTotal|undefined) while downloading. */
  onProgress?: (file: string, done: number, total: number | undefined) => void;
}

/** The hub cache directory, honouring HF_HUB_CACHE and HF_HOME like huggingface_hub does. */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  const home = env.HF_HOME ?? path.join(env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'huggingface');
  return path.join(home, 'hub');
}

/** True when `ref` has the shape of a hub id (`org/name`). */
export function isHubId(ref: string): boolean {
  return HUB_ID.test(ref) && !ref.split('/').some((p) => p === '.' || p === '..');
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await fsp.stat(p)).isDirectory();
  } catch {
    return false;
  }
}

/** Repo folder name in the cache: `models--org--name`. */
export function cacheRepoDir(hubId: string, cacheDir = hubCacheDir()): string {
  return path.join(cacheDir, `models--${hubId.split('/').join('--')}`);
}

/**
 * Snapshot directory of a cached hub model: the commit in refs/<revision> when present,
 * else the most recently modified snapshot. Returns undefined when nothing usable is cached.
 */
export async function findCachedSnapshot(hubId: string, opts: { cacheDir?: string; revision?: string } = {}): Promise<string | undefined> {
  const repo = cacheRepoDir(hubId, opts.cacheDir);
  const snapshots = path.join(repo, 'snapshots');
  const revision = opts.revision ?? 'main';
  let commit = /^[0-9a-f]{40}$/.test(revision) ? revision : undefined;
  if (!commit) {
    try {
      commit = (await fsp.readFile(path.join(repo, 'refs', revision), 'utf8')).trim();
    } catch {
      commit = undefined;
    }
  }
  if (commit && (await isDir(path.join(snapshots, commit)))) return path.join(snapshots, commit);
  let names: string[];
  try {
    names = await fsp.readdir(snapshots);
  } catch {
    return undefined;
  }
  let best: { dir: string; mtime: number } | undefined;
  for (const name of names) {
    if (name.startsWith('.')) continue; // partial downloads
    const dir = path.join(snapshots, name);
    try {
      const st = await fsp.stat(dir);
      if (st.isDirectory() && (!best || st.mtimeMs > best.mtime)) best = { dir, mtime: st.mtimeMs };
    } catch {
      // vanished while listing
    }
  }
  return best?.dir;
}

function endpoint(): string {
  return (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
}

function authHeaders(): Record<string, string> {
  const token = process.env.HF_TOKEN ?? process.env.HUGGING_FACE_HUB_TOKEN;
  return token ? { authorization: `Bearer ${token}` } : {};
}

const revisionInfoSchema = z.object({
  sha: z.string().regex(/^[0-9a-f]{40}$/),
  siblings: z.array(z.object({ rfilename: z.string() })).default([]),
});

const indexSchema = z.object({ weight_map: z.record(z.string(), z.string()) });

async function downloadFile(url: string, dest: string, file: string, onProgress: ResolveOptions['onProgress']): Promise<void> {
  const res = await fetch(url, { headers: authHeaders(), redirect: 'follow' });
  if (!res.ok || !res.body) throw new Error(`GET ${url} -> HTTP ${res.status}`);
  // With content-encoding, content-length counts compressed bytes; fetch hands us decoded ones.
  const encoded = (res.headers.get('content-encoding') ?? 'identity') !== 'identity';
  const total = encoded ? undefined : Number(res.headers.get('content-length')) || undefined;
  let done = 0;
  const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>);
  const count = async function* (src: AsyncIterable<Buffer>) {
    for await (const chunk of src) {
      done += chunk.length;
      onProgress?.(file, done, total);
      yield chunk;
    }
  };
  await fsp.mkdir(path.dirname(dest), { recursive: true });
  await pipeline(body, count, createWriteStream(dest));
  if (total !== undefined && done !== total) throw new Error(`GET ${url}: got ${done} of ${total} bytes`);
}

/**
 * Download the model files of `hubId` into the cache. Files land in a hidden partial
 * snapshot that is renamed into place when complete, then refs/<revision> is written.
 */
export async function downloadToCache(hubId: string, opts: ResolveOptions & { cacheDir?: string } = {}): Promise<string> {
  const revision = opts.revision ?? 'main';
  const base = endpoint();
  const infoUrl = `${base}/api/models/${hubId}/revision/${encodeURIComponent(revision)}`;
  const res = await fetch(infoUrl, { headers: authHeaders(), signal: AbortSignal.timeout(20_000) });
  if (!res.ok) throw new Error(`GET ${infoUrl} -> HTTP ${res.status}`);
  const info = revisionInfoSchema.parse(await res.json());
  const available = new Set(info.siblings.map((s) => s.rfilename));
  const files = WANTED_FILES.filter((f) => available.has(f));
  if (!available.has('config.json')) throw new Error(`${hubId} has no config.json`);

  const repo = cacheRepoDir(hubId, opts.cacheDir);
  const final = path.join(repo, 'snapshots', info.sha);
  const partial = path.join(repo, 'snapshots', `.partial-${info.sha}-${randomBytes(4).toString('hex')}`);
  try {
    const fileUrl = (f: string) => `${base}/${hubId}/resolve/${info.sha}/${f}`;
    for (const f of files) await downloadFile(fileUrl(f), path.join(partial, f), f, opts.onProgress);
    if (files.includes('model.safetensors.index.json') && !files.includes('model.safetensors')) {
      const index = indexSchema.parse(JSON.parse(await fsp.readFile(path.join(partial, 'model.safetensors.index.json'), 'utf8')));
      for (const shard of new Set(Object.values(index.weight_map))) {
        if (path.isAbsolute(shard) || shard.includes('..')) throw new Error(`suspicious shard name ${shard}`);
        await downloadFile(fileUrl(shard), path.join(partial, shard), shard, opts.onProgress);
      }
    } else if (!files.includes('model.safetensors')) {
      throw new Error(`${hubId} has no model.safetensors or model.safetensors.index.json (only safetensors weights are supported)`);
    }
    if (await isDir(final)) {
      await fsp.rm(partial, { recursive: true, force: true }); // someone else finished first
    } else {
      await fsp.rename(partial, final);
    }
  } catch (err) {
    await fsp.rm(partial, { recursive: true, force: true });
    throw err;
  }
  if (!/^[0-9a-f]{40}$/.test(revision)) {
    const refFile = path.join(repo, 'refs', revision);
    await fsp.mkdir(path.dirname(refFile), { recursive: true });
    await writeFileAtomic(refFile, info.sha);
  }
  return final;
}

/**
 * Resolve a model reference to a local directory: an existing directory as is, else a hub
 * id from the cache, else a download (when allowed). Throws NOT_FOUND naming where it looked.
 */
export async function resolveModelDir(ref: string, opts: ResolveOptions = {}): Promise<string> {
  if (await isDir(ref)) return path.resolve(ref);
  if (!isHubId(ref)) {
    throw new SparsetuneError('NOT_FOUND', `model "${ref}": no such directory, and not a hub id of the form org/name`);
  }
  const cacheDir = hubCacheDir();
  const cached = await findCachedSnapshot(ref, { cacheDir, revision: opts.revision });
  if (cached) return cached;
  const offline = ['1', 'true', 'yes', 'on'].includes((process.env.HF_HUB_OFFLINE ?? '').toLowerCase());
  const where = `looked for a directory "${path.resolve(ref)}" and the cache "${cacheRepoDir(ref, cacheDir)}"`;
  if (opts.download === false || (opts.download === undefined && offline)) {
    throw new SparsetuneError('NOT_FOUND', `model "${ref}" not found: ${where}; downloading is disabled (HF_HUB_OFFLINE or download: false). Pass a local model directory or download it first.`);
  }
  try {
    return await downloadToCache(ref, { ...opts, cacheDir });
  } catch (err) {
    throw new SparsetuneError(
      'NOT_FOUND',
      `model "${ref}" not found: ${where}; download from ${endpoint()} failed (${(err as Error).message}). Check the id and your network, or pass a local model directory.`,
      { cause: err },
    );
  }
}
