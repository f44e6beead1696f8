/**
 * A small Hugging Face Hub on loopback for tests: it answers the endpoints @huggingface/hub
 * calls (model info with sha and siblings, paths-info, resolve with Range support) for repos
 * made of local files, records every request, and can cut a download short to test resuming.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import * as path from 'node:path';

export interface FakeRepo {
  sha: string;
  /** File name in the repo -> its bytes. */
  files: Map<string, Buffer>;
}

/** Git's blob id of `data` (the etag the hub gives non-LFS files). */
export function gitBlobSha1(data: Buffer): string {
  return createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Files stored with LFS on the real hub (their etag is the sha256 of the content). */
export const isLfs = (file: string): boolean => /\.(safetensors|bin|model)$/.test(file);

export function etagOf(file: string, data: Buffer): string {
  return isLfs(file) ? sha256(data) : gitBlobSha1(data);
}

/** A repo from files of a local directory. */
export function repoFromDir(dir: string, names: string[], sha: string): FakeRepo {
  return { sha, files: new Map(names.map((n) => [n, readFileSync(path.join(dir, n))])) };
}

export class FakeHub {
  readonly repos = new Map<string, FakeRepo>();
  readonly hits: { method: string; url: string; range?: string }[] = [];
  /** Cut the body of the next download of this file after this many bytes (then serve normally). */
  cutNext = new Map<string, number>();
  private server: Server | null = null;
  url = '';

  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      void this.handle(req, res).catch((err) => {
        res.statusCode = 500;
        res.end(String(err));
      });
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
    return this.url;
  }

  async stop(): Promise<void> {
    if (this.server) await new Promise((r) => this.server!.close(r));
  }

  private async handle(req: IncomingMessage, res: import('node:http').ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    this.hits.push({ method: req.method ?? '', url: url.pathname, ...(req.headers.range ? { range: req.headers.range } : {}) });
    const json = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(body));
    };
    let m = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    if (m && req.method === 'GET') {
      const repo = this.repos.get(m[1]);
      if (!repo) return json(404, { error: 'Repository not found' }, { 'x-error-code': 'RepoNotFound' });
      return json(200, { _id: 'x', id: m[1], sha: repo.sha, private: false, gated: false, downloads: 0, likes: 0, lastModified: '2024-01-01T00:00:00.000Z', siblings: [...repo.files.keys(), 'README.md'].map((rfilename) => ({ rfilename })) });
    }
    m = /^\/api\/models\/([^/]+\/[^/]+)\/paths-info\/([^/]+)$/.exec(url.pathname);
    if (m && req.method === 'POST') {
      const repo = this.repos.get(m[1]);
      if (!repo || m[2] !== repo.sha) return json(404, { error: 'not found' });
      let body = '';
      for await (const chunk of req) body += chunk;
      const { paths } = JSON.parse(body) as { paths: string[] };
      return json(
        200,
        paths.filter((p) => repo.files.has(p)).map((p) => {
          const data = repo.files.get(p)!;
          return { type: 'file', path: p, oid: gitBlobSha1(data), size: data.length, ...(isLfs(p) ? { lfs: { oid: sha256(data), size: data.length, pointerSize: 130 } } : {}) };
        }),
      );
    }
    m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (m && req.method === 'GET') {
      const repo = this.repos.get(m[1]);
      const file = decodeURIComponent(m[3]);
      const data = repo && (m[2] === repo.sha || m[2] === 'main') ? repo.files.get(file) : undefined;
      if (!data) return json(404, { error: 'Entry not found' }, { 'x-error-code': 'EntryNotFound' });
      const headers: Record<string, string> = { etag: `"${etagOf(file, data)}"`, 'accept-ranges': 'bytes', 'x-repo-commit': repo!.sha, 'content-type': 'application/octet-stream' };
      const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      let [start, end] = [0, data.length - 1];
      if (range) {
        start = Number(range[1]);
        end = range[2] ? Math.min(Number(range[2]), data.length - 1) : data.length - 1;
        headers['content-range'] = `bytes ${start}-${end}/${data.length}`;
      }
      const body = data.subarray(start, end + 1);
      headers['content-length'] = String(body.length);
      res.writeHead(range ? 206 : 200, headers);
      const cut = this.cutNext.get(file);
      if (cut !== undefined && body.length > 1) {
        this.cutNext.delete(file);
        res.write(body.subarray(0, cut));
        // Let the bytes reach the client, then drop the connection mid-body.
        setTimeout(() => res.socket?.destroy(), 50);
        return;
      }
      res.end(body);
      return;
    }
    json(404, { error: `no route ${req.method} ${url.pathname}` });
  }
}
