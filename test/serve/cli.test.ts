/**
 * `sparsetune serve` as a process: flags are validated, the server answers on loopback, and
 * SIGTERM lets a running streamed request finish, then the process exits with code 0.
 */
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseServeFlags } from '../../src/serve/cli.js';
import { tempDir } from './helpers.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');

describe('serve flags', () => {
  it('validates flags with messages that name them', () => {
    expect(() => parseServeFlags([])).toThrow(/--adapters/);
    expect(() => parseServeFlags(['--adapters', 'x', '--port', 'abc'])).toThrow(/--port/);
    expect(() => parseServeFlags(['--adapters', 'x', '--bogus'])).toThrow(/bogus/);
    expect(() => parseServeFlags(['--adapters', 'x', '--max-queue', '0'])).toThrow(/--max-queue/);
    expect(parseServeFlags(['--adapters', 'x'])).toMatchObject({ help: false, adapters: 'x', port: 8080, host: '127.0.0.1', 'max-queue': 64 });
    expect(parseServeFlags(['--help'])).toEqual({ help: true });
  });
});

describe('serve process', () => {
  it('finishes in-flight work on SIGTERM and exits 0', async () => {
    const dir = await tempDir('sparsetune-cli-');
    const script = path.join(dir, 'serve.mts');
    await writeFile(script, `import { runServe } from ${JSON.stringify(path.join(ROOT, 'src/serve/cli.ts'))};\nawait runServe(process.argv.slice(2));\n`);
    const adapters = path.join(dir, 'adapters');
    await (await import('node:fs/promises')).mkdir(adapters);
    const child = spawn(process.execPath, ['--import', 'tsx', script, '--adapters', adapters, '--port', '0'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
        if (m) resolve(m[1]);
      });
      child.on('exit', () => reject(new Error(`server exited early: ${stderr}`)));
    });
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'base', prompt: 'Once upon a time', max_tokens: 60, temperature: 0, stream: true }),
    });
    const reader = res.body!.getReader();
    const first = await reader.read(); // generation is running
    expect(new TextDecoder().decode(first.value)).toMatch(/^data: /);
    child.kill('SIGTERM');
    let rest = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += new TextDecoder().decode(value);
    }
    expect(rest.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(rest).toMatch(/"finish_reason":"(length|stop)"/);
    expect(await exited).toBe(0);
    expect(stderr).toMatch(/SIGTERM/);
  });
});
