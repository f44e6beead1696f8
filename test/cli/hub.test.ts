/**
 * Hub ids on the command line: `--model org/name` and `--adapter org/name` (a PEFT adapter
 * repo) fetched from a fake hub on loopback into the HF cache, with the download progress on
 * stderr, then used again offline from the cache.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeHub, repoFromDir } from '../io/fake-hub.js';
import { cli, json, ROOT, worst } from './helpers.js';

const FIX = join(ROOT, 'test', 'fixtures', 'peft');
const ref = JSON.parse(readFileSync(join(FIX, 'reference.json'), 'utf8'))['stories260K-lora'];
const hub = new FakeHub();
let home: string;

beforeAll(async () => {
  await hub.start();
  hub.repos.set('tiny/stories', repoFromDir(join(ROOT, 'models', 'stories260K'), ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'], 'c'.repeat(40)));
  hub.repos.set('tiny/stories-peft', repoFromDir(join(FIX, 'stories260K-lora'), ['adapter_config.json', 'adapter_model.safetensors', 'README.md'], 'd'.repeat(40)));
  home = mkdtempSync(join(tmpdir(), 'sparsetune-cli-hub-'));
});
afterAll(async () => {
  await hub.stop();
  rmSync(home, { recursive: true, force: true });
});


describe('hub ids in the CLI', () => {
  it('downloads --model and --adapter into the HF cache with progress, then works offline', async () => {
    const args = ['logits', '--model', 'tiny/stories', '--adapter', 'tiny/stories-peft', '--ids', ref.input_ids[0].join(',')];
    const env = { HF_HOME: home, HF_ENDPOINT: hub.url };
    const first = await cli(args, { env });
    expect(worst(json<{ logits: number[][] }>(first).logits, ref.logits[0])).toBeLessThan(1e-4);
    expect(first.stderr).toMatch(/downloading tiny\/stories model\.safetensors +1\.04\/1\.04 MB +100%/);
    expect(first.stderr).toMatch(/downloading tiny\/stories-peft adapter_model\.safetensors .*100%/);
    const hits = hub.hits.length;
    const offline = await cli(args, { env: { ...env, HF_HUB_OFFLINE: '1' } });
    expect(json<{ logits: number[][] }>(offline).logits).toEqual(json<{ logits: number[][] }>(first).logits);
    expect(offline.stderr).not.toMatch(/downloading/);
    expect(hub.hits.length).toBe(hits);
    const missing = await cli(['logits', '--adapter', 'tiny/none', '--ids', '1'], { env: { ...env, HF_HUB_OFFLINE: '1' } });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/adapter "tiny\/none" not found.*downloading is disabled/);
  });
});
