/**
 * Model and adapter references: a local directory, or a Hugging Face hub id (`org/name`)
 * resolved through the standard hub cache, shared with Python's huggingface_hub and
 * transformers: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, laid out
 * as `models--org--name/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>,
 * refs/<revision>}`. Missing files are downloaded with `@huggingface/hub` from `$HF_ENDPOINT`
 * (default https://huggingface.co) unless `HF_HUB_OFFLINE` is set: each blob is written as
 * `<etag>.incomplete` and renamed when complete, and an interrupted download resumes from the
 * bytes already there (HTTP Range), as huggingface_hub does. A snapshot is used only once
 * every file it needs is present.
 */
import { createWriteStream, existsSync, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { downloadFile, getRepoFolderName, modelInfo, pathsInfo } from '@huggingface/hub';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { writeFileAtomic } from './atomic.js';
import { withFileLock } from './hub-lock.js';

const HUB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;
const COMMIT = /^[0-9a-f]{40}$/;

/** Files fetched for a model (those the repo has; shards follow the index). */
const MODEL_FILES = [
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
/** Files fetched for an adapter: sparsetune's or PEFT's layout. */
const ADAPTER_FILES = ['adapter.json', 'adapter.safetensors', 'adapter_config.json', 'adapter_model.safetensors'];

/** Progress of one file while downloading (`loaded` of `total` bytes). */
export interface DownloadProgress {
  /** Repo id and file, e.g. `org/name` and `model.safetensors`. */
  repo: string;
  file: string;
  loaded: number;
  total: number;
  /** `download` while bytes arrive, `done` when the file is in the cache (also for files already there). */
  status: 'download' | 'done';
}

export interface ResolveOptions {
  /** Allow downloading when the files are not cached (default: true unless HF_HUB_OFFLINE). */
  download?: boolean;
  /** Branch, tag or commit to download (default "main"). */
  revision?: string;
  /** Called as files download (and once per file already cached). */
  progressCallback?: (p: DownloadProgress) => void;
  /** Older form of progressCallback: (file, bytesDone, bytesTotal). */
  onProgress?: (file: string, done: number, total: number | undefined) => void;
}

/** The hub cache directory, honouring HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME and XDG_CACHE_HOME like huggingface_hub. */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HUGGINGFACE_HUB_CACHE) return env.HUGGINGFACE_HUB_CACHE;
  return path.join(hfHome(env), 'hub');
}

function hfHome(env: NodeJS.ProcessEnv): string {
  return env.HF_HOME ?? path.join(env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'huggingface');
}

/** True when HF_HUB_OFFLINE asks for no network. */
export function hubOffline(env: NodeJS.ProcessEnv = process.env): boolean {
  return ['1', 'true', 'yes', 'on'].includes((env.HF_HUB_OFFLINE ?? '').toLowerCase());
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

/** Repo folder in the cache: `models--org--name`. */
export function cacheRepoDir(hubId: string, cacheDir = hubCacheDir()): string {
  return path.join(cacheDir, getRepoFolderName({ type: 'model', name: hubId }));
}

/**
 * Snapshot directory of a cached hub repo: the commit in refs/<revision> when present, else
 * the most recently modified snapshot. Returns undefined when nothing is cached.
 */
export async function findCachedSnapshot(hubId: string, opts: { cacheDir?: string; revision?: string } = {}): Promise<string | undefined> {
  const repo = cacheRepoDir(hubId, opts.cacheDir);
  const snapshots = path.join(repo, 'snapshots');
  const revision = opts.revision ?? 'main';
  let commit = COMMIT.test(revision) ? revision : undefined;
  if (!commit) commit = (await fsp.readFile(path.join(repo, 'refs', revision), 'utf8').catch(() => '')).trim() || undefined;
  if (commit && (await isDir(path.join(snapshots, commit)))) return path.join(snapshots, commit);
  let names: string[];
  try {
    names = await fsp.readdir(snapshots);
  } catch {
    return undefined;
  }
  let best: { dir: string; mtime: number } | undefined;
  for (const name of names) {
    if (name.startsWith('.')) continue;
    const dir = path.join(snapshots, name);
    const st = await fsp.stat(dir).catch(() => null);
    if (st?.isDirectory() && (!best || st.mtimeMs > best.mtime)) best = { dir, mtime: st.mtimeMs };
  }
  return best?.dir;
}

function endpoint(): string {
  return (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
}

/** HF_TOKEN, else HUGGING_FACE_HUB_TOKEN, else the token file huggingface_hub's login writes. */
async function accessToken(): Promise<string | undefined> {
  const env = process.env.HF_TOKEN ?? process.env.HUGGING_FACE_HUB_TOKEN;
  if (env) return env;
  const file = process.env.HF_TOKEN_PATH ?? path.join(hfHome(process.env), 'token');
  const text = await fsp.readFile(file, 'utf8').catch(() => '');
  return text.trim() || undefined;
}

const indexSchema = z.object({ weight_map: z.record(z.string(), z.string()) });

/** What a snapshot needs before it is usable: the missing files, or [] when complete. */
async function missingFiles(dir: string, kind: 'model' | 'adapter'): Promise<string[]> {
  const has = (f: string) => existsSync(path.join(dir, f));
  if (kind === 'adapter') {
    if ((has('adapter.json') && has('adapter.safetensors')) || (has('adapter_config.json') && has('adapter_model.safetensors'))) return [];
    return ['adapter.json + adapter.safetensors, or adapter_config.json + adapter_model.safetensors'];
  }
  if (!has('config.json')) return ['config.json'];
  if (has('model.safetensors')) return [];
  if (!has('model.safetensors.index.json')) return ['model.safetensors'];
  const index = indexSchema.safeParse(JSON.parse(await fsp.readFile(path.join(dir, 'model.safetensors.index.json'), 'utf8').catch(() => '{}')));
  if (!index.success) return ['a valid model.safetensors.index.json'];
  return [...new Set(Object.values(index.data.weight_map))].filter((s) => !has(s));
}

function checkRelative(file: string): void {
  if (path.isAbsolute(file) || file.split(/[\\/]/).some((p) => p === '..' || p === '')) throw new Error(`suspicious file name "${file}" in the repo`);
}

/**
 * Download the files of `hubId` needed for a model (or an adapter) into the cache and return
 * the snapshot directory. Files already cached are not fetched again; a partial blob left by an
 * interrupted download is resumed.
 */
export async function downloadToCache(hubId: string, opts: ResolveOptions & { cacheDir?: string; kind?: 'model' | 'adapter' } = {}): Promise<string> {
  const revision = opts.revision ?? 'main';
  const kind = opts.kind ?? 'model';
  const hubUrl = endpoint();
  const token = await accessToken();
  const creds = token ? { accessToken: token } : {};
  const repo = { type: 'model' as const, name: hubId };
  const info = await modelInfo({ name: hubId, revision, hubUrl, additionalFields: ['sha', 'filePaths'], ...creds });
  const sha = info.sha;
  if (!sha || !COMMIT.test(sha)) throw new Error(`${hubUrl} gave no commit for ${hubId}@${revision}`);
  const available = new Set(info.filePaths);
  let files = (kind === 'model' ? MODEL_FILES : ADAPTER_FILES).filter((f) => available.has(f));
  if (kind === 'model') {
    if (!available.has('config.json')) throw new Error(`${hubId} has no config.json (is it a model repo?)`);
    if (!available.has('model.safetensors') && !available.has('model.safetensors.index.json')) {
      throw new Error(`${hubId} has no model.safetensors or model.safetensors.index.json (only safetensors weights are supported)`);
    }
    if (available.has('model.safetensors')) files = files.filter((f) => f !== 'model.safetensors.index.json');
  } else if (!files.length) {
    throw new Error(`${hubId} holds no adapter files (${ADAPTER_FILES.join(', ')})`);
  }

  const storage = cacheRepoDir(hubId, opts.cacheDir);
  const snapshot = path.join(storage, 'snapshots', sha);
  const fetchAll = async (names: string[]) => {
    names.forEach(checkRelative);
    const infos = await pathsInfo({ repo, paths: names, revision: sha, hubUrl, ...creds });
    for (const name of names) {
      const p = infos.find((x) => x.path === name);
      const etag = p?.lfs?.oid ?? p?.oid;
      if (!p || !etag || !/^[0-9a-f]{40,64}$/.test(etag)) throw new Error(`${hubId}: no file information for ${name}`);
      await cacheFile({ hubId, repo, file: name, sha, etag, size: p.lfs?.size ?? p.size, storage, hubUrl, creds, opts });
    }
  };
  await fetchAll(files);
  if (kind === 'model' && !files.includes('model.safetensors')) {
    const index = indexSchema.parse(JSON.parse(await fsp.readFile(path.join(snapshot, 'model.safetensors.index.json'), 'utf8')));
    await fetchAll([...new Set(Object.values(index.weight_map))]);
  }
  if (!COMMIT.test(revision)) {
    const refFile = path.join(storage, 'refs', revision);
    await fsp.mkdir(path.dirname(refFile), { recursive: true });
    await writeFileAtomic(refFile, sha);
  }
  return snapshot;
}

/** One file into blobs/<etag> (resuming a partial one) and its snapshot symlink. */
async function cacheFile(a: {
  hubId: string;
  repo: { type: 'model'; name: string };
  file: string;
  sha: string;
  etag: string;
  size: number;
  storage: string;
  hubUrl: string;
  creds: { accessToken?: string };
  opts: ResolveOptions;
}): Promise<void> {
  const pointer = path.join(a.storage, 'snapshots', a.sha, a.file);
  const blob = path.join(a.storage, 'blobs', a.etag);
  const report = (loaded: number, status: DownloadProgress['status']) => {
    a.opts.progressCallback?.({ repo: a.hubId, file: a.file, loaded, total: a.size, status });
    a.opts.onProgress?.(a.file, loaded, a.size);
  };
  if (existsSync(pointer)) return report(a.size, 'done');
  await fsp.mkdir(path.dirname(blob), { recursive: true });
  await fsp.mkdir(path.dirname(pointer), { recursive: true });
  await withFileLock(path.join(a.storage, '..', '.locks', path.basename(a.storage), `${a.etag}.sparsetune.lock`), async () => {
    if (!existsSync(blob)) await fetchBlob(a, blob, report);
  });
  // Relative, like huggingface_hub: the cache can move as a whole.
  const tmpLink = `${pointer}.tmp-${randomBytes(4).toString('hex')}`;
  await fsp.symlink(path.relative(path.dirname(pointer), blob), tmpLink);
  await fsp.rename(tmpLink, pointer);
  report(a.size, 'done');
}

async function fetchBlob(a: Parameters<typeof cacheFile>[0], blob: string, report: (loaded: number, status: 'download') => void): Promise<void> {
  const incomplete = `${blob}.incomplete`;
  let have = (await fsp.stat(incomplete).catch(() => null))?.size ?? 0;
  if (have > a.size) {
    await fsp.rm(incomplete, { force: true });
    have = 0;
  }
  if (have < a.size) {
    const remote = await downloadFile({ repo: a.repo, path: a.file, revision: a.sha, hubUrl: a.hubUrl, ...a.creds });
    if (!remote) throw new Error(`${a.file} -> HTTP 404 (the file is not in ${a.hubId}@${a.sha.slice(0, 8)})`);
    if (remote.size !== a.size) throw new Error(`${a.file}: the hub reports ${remote.size} bytes but the file list says ${a.size}`);
    let loaded = have;
    report(loaded, 'download');
    const source = Readable.fromWeb((have > 0 ? remote.slice(have) : remote).stream() as import('node:stream/web').ReadableStream<Uint8Array>);
    const count = async function* (src: AsyncIterable<Uint8Array>) {
      for await (const chunk of src) {
        loaded += chunk.length;
        report(loaded, 'download');
        yield chunk;
      }
    };
    await pipeline(source, count, createWriteStream(incomplete, { flags: have > 0 ? 'a' : 'w' }));
  }
  const got = (await fsp.stat(incomplete)).size;
  if (got !== a.size) throw new Error(`${a.file}: got ${got} of ${a.size} bytes (run again to resume)`);
  await fsp.rename(incomplete, blob);
}

/** Resolve a reference of `kind` to a local directory; shared by resolveModelDir and resolveAdapterDir. */
async function resolveDir(ref: string, kind: 'model' | 'adapter', opts: ResolveOptions): Promise<string> {
  if (await isDir(ref)) return path.resolve(ref);
  if (!isHubId(ref)) throw new SparsetuneError('NOT_FOUND', `${kind} "${ref}": no such directory, and not a hub id of the form org/name`);
  const cacheDir = hubCacheDir();
  const cached = await findCachedSnapshot(ref, { cacheDir, revision: opts.revision });
  const missing = cached ? await missingFiles(cached, kind) : null;
  if (cached && missing!.length === 0) return cached;
  const where = `looked for a directory "${path.resolve(ref)}" and the cache "${cacheRepoDir(ref, cacheDir)}"${cached ? ` (snapshot ${path.basename(cached)} lacks ${missing!.join(', ')})` : ''}`;
  if (opts.download === false || (opts.download === undefined && hubOffline())) {
    throw new SparsetuneError('NOT_FOUND', `${kind} "${ref}" not found: ${where}; downloading is disabled (HF_HUB_OFFLINE or download: false). Pass a local directory or download it first.`);
  }
  try {
    return await downloadToCache(ref, { ...opts, cacheDir, kind });
  } catch (err) {
    const status = (err as { statusCode?: number }).statusCode;
    const detail = status ? `HTTP ${status}: ${(err as Error).message}` : (err as Error).message;
    throw new SparsetuneError('NOT_FOUND', `${kind} "${ref}" not found: ${where}; download from ${endpoint()} failed (${detail}). Check the id and your network, or pass a local directory.`, { cause: err });
  }
}

/**
 * Resolve a model reference to a local directory: an existing directory as is, else a hub id
 * from the cache, else a download (when allowed). Throws NOT_FOUND naming where it looked.
 */
export function resolveModelDir(ref: string, opts: ResolveOptions = {}): Promise<string> {
  return resolveDir(ref, 'model', opts);
}

/** Resolve an adapter reference (directory, or hub id of a sparsetune or PEFT adapter repo) to a local directory. */
export function resolveAdapterDir(ref: string, opts: ResolveOptions = {}): Promise<string> {
  return resolveDir(ref, 'adapter', opts);
}
