import { existsSync, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath, loadModel, writeModelDir } from '../../src/io/model-dir.js';
import { readSafetensorsHeader } from '../../src/io/safetensors.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'modeldir-test-'));
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

describe('bundled model', () => {
  it('resolves <package root>/models/stories260K with its license', () => {
    const p = bundledModelPath();
    expect(p).toBe(path.resolve('models/stories260K'));
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'LICENSE']) {
      expect(existsSync(path.join(p, f))).toBe(true);
    }
  });
});

describe('loadModel', () => {
  it('loads config, f32 weights, tokenizer and generation defaults', async () => {
    const m = await loadModel(bundledModelPath());
    expect(m.dir).toBe(bundledModelPath());
    expect(m.config).toMatchObject({ arch: 'llama', numLayers: 5, vocabSize: 512 });
    expect(m.weights.size).toBe(47);
    let params = 0;
    for (const t of m.weights.values()) {
      expect(t.dtype).toBe('f32');
      params += t.data.length;
    }
    expect(params).toBe(260032);
    expect(m.weights.get('model.layers.0.self_attn.k_proj.weight')!.shape).toEqual([32, 64]);
    expect(m.tokenizer!.encode('Once upon a time')).toEqual([1, 403, 407, 261, 378]);
    expect(m.generation).toEqual({ bosTokenId: 1, eosTokenId: [2] });
  });

  it('skips weights on request and errors clearly on broken dirs', async () => {
    expect((await loadModel(bundledModelPath(), { weights: false })).weights.size).toBe(0);
    const empty = path.join(tmp, 'empty');
    await fsp.mkdir(empty);
    await expect(loadModel(empty)).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringMatching(/config\.json/) });
    await fsp.writeFile(path.join(empty, 'config.json'), '{"model_type":"llama"');
    await expect(loadModel(empty)).rejects.toMatchObject({ code: 'BAD_CONFIG' });
    await fsp.copyFile(path.join(bundledModelPath(), 'config.json'), path.join(empty, 'config.json'));
    await expect(loadModel(empty)).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringMatching(/model\.safetensors/) });
    const m = await loadModel(empty, { weights: false });
    expect(m.tokenizer).toBeNull();
    expect(m.generation.eosTokenId).toEqual([2]); // from config.json
  });
});

describe('writeModelDir', () => {
  it('writes a loadable HF dir, copies tokenizer files, and refuses to clobber', async () => {
    const src = await loadModel(bundledModelPath());
    const weights = new Map(src.weights);
    const norm = weights.get('model.norm.weight')!;
    weights.set('model.norm.weight', { ...norm, data: norm.data.map((v) => v * 2) });
    const out = path.join(tmp, 'out', 'model');
    await writeModelDir(out, { configJson: src.config.raw, weights, tokenizerFrom: src.dir });
    const files = (await fsp.readdir(out)).sort();
    expect(files).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer.model', 'tokenizer_config.json']);
    expect((await fsp.readdir(path.dirname(out))).filter((n) => n.includes('.tmp-'))).toEqual([]);
    const back = await loadModel(out);
    expect(back.weights.get('model.norm.weight')!.data[0]).toBe(norm.data[0] * 2);
    expect(Array.from(back.weights.get('model.embed_tokens.weight')!.data)).toEqual(Array.from(src.weights.get('model.embed_tokens.weight')!.data));
    expect(back.tokenizer!.decode([1, 403, 407])).toBe('Once upon');

    await expect(writeModelDir(out, { configJson: src.config.raw, weights })).rejects.toMatchObject({ code: 'BAD_ARGUMENT' });
    await writeModelDir(out, { configJson: { ...src.config.raw, note: 'v2' }, weights }, { overwrite: true, dtypes: { 'model.norm.weight': 'BF16' } });
    expect(JSON.parse(await fsp.readFile(path.join(out, 'config.json'), 'utf8')).note).toBe('v2');
    expect(existsSync(path.join(out, 'tokenizer.json'))).toBe(false); // old contents replaced, not merged
    const { entries } = await readSafetensorsHeader(path.join(out, 'model.safetensors'));
    expect(entries.find((e) => e.name === 'model.norm.weight')!.dtype).toBe('BF16');
    expect((await fsp.readdir(path.dirname(out))).sort()).toEqual(['model']);
  });
});
