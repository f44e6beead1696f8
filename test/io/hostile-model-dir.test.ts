/**
 * Hostile model directories: configs that contradict their weights, absurd sizes, integer
 * weights, unknown tokenizer models. Each is refused before any tensor is allocated, with a
 * SparsetuneError naming the tensor or field and the fix. The first block pins the five
 * failures a fuzz of main found (issue #16); the last is a seeded fuzz of whole directories.
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { expectedParamShapes } from '../../src/models/param-shapes.js';
import type { HostTensor } from '../../src/tensor.js';
import { mulberry32 } from '../../src/util/random.js';
import { mutateBytes, mutateJsonTimes, okOrSparsetuneError, pick } from '../fuzz.js';

const FIXTURES = path.join(import.meta.dirname, '..', 'fixtures', 'models');
const LLAMA = path.join(FIXTURES, 'llama-gqa');
const GPT2 = path.join(FIXTURES, 'gpt2');
const STORIES = bundledModelPath();

let tmp: string;
let n = 0;
beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'hostile-model-'));
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

async function readJson(file: string): Promise<Record<string, unknown>> {
  return JSON.parse(await fsp.readFile(file, 'utf8')) as Record<string, unknown>;
}

/** A copy of model dir `src` with an edited config.json (and optionally other files replaced). */
async function variant(src: string, edit: { config?: Record<string, unknown>; files?: Record<string, string | Uint8Array> } = {}): Promise<string> {
  const dir = path.join(tmp, `m${n++}`);
  await fsp.mkdir(dir);
  for (const f of await fsp.readdir(src)) await fsp.copyFile(path.join(src, f), path.join(dir, f));
  if (edit.config) {
    const cfg = { ...(await readJson(path.join(src, 'config.json'))), ...edit.config };
    await fsp.writeFile(path.join(dir, 'config.json'), JSON.stringify(cfg));
  }
  for (const [f, body] of Object.entries(edit.files ?? {})) await fsp.writeFile(path.join(dir, f), body);
  return dir;
}

async function loadError(dir: string): Promise<SparsetuneError> {
  const err = await CausalLM.load(dir).then(() => null, (e: unknown) => e);
  expect(err, 'the load should fail').toBeInstanceOf(SparsetuneError);
  return err as SparsetuneError;
}

describe('regressions: the five failures of issue #16', () => {
  it('integer-typed weights are refused, naming the tensor and its dtype (llama and gpt2)', async () => {
    for (const [src, name] of [[LLAMA, 'model.layers.1.mlp.up_proj.weight'], [GPT2, 'transformer.h.0.mlp.c_fc.weight']] as const) {
      const { tensors } = await readSafetensors(path.join(src, 'model.safetensors'));
      const t = tensors.get(name)! as HostTensor<'f32'>;
      tensors.set(name, { dtype: 'i32', shape: t.shape, data: Int32Array.from(t.data, (v) => Math.round(v * 1000)) });
      const dir = await variant(src);
      await writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
      const err = await loadError(dir);
      expect(err.code).toBe('BAD_CONFIG');
      expect(err.message).toContain(`"${name}"`);
      expect(err.message).toMatch(/stored as I32.*must be floats \(F32, F16, BF16, F64\).*convert/);
    }
  });

  it('vocab_size 1e12 fails at parse time with the limit, and a wrong in-range vocab_size names the embedding', async () => {
    const huge = await loadError(await variant(LLAMA, { config: { vocab_size: 1e12 } }));
    expect(huge.code).toBe('BAD_CONFIG');
    expect(huge.message).toMatch(/vocab_size: must be at most 16777216/);
    const wrong = await loadError(await variant(LLAMA, { config: { vocab_size: 1000 } }));
    expect(wrong.message).toMatch(/tensor "model\.embed_tokens\.weight" .* has shape \[97, 48\] but config\.json implies \[1000, 48\] \(vocab_size = 1000 but the weights have 97\); fix config\.json/);
    const gpt = await loadError(await variant(GPT2, { config: { vocab_size: 71 } }));
    expect(gpt.message).toMatch(/"wte\.weight"|"transformer\.wte\.weight"/);
    expect(gpt.message).toMatch(/vocab_size = 71 but the weights have 70/);
  });

  it('intermediate_size 2^40 fails at parse time, and a wrong in-range one names the MLP weight', async () => {
    const huge = await loadError(await variant(LLAMA, { config: { intermediate_size: 2 ** 40 } }));
    expect(huge.message).toMatch(/intermediate_size: must be at most 1048576/);
    const wrong = await loadError(await variant(LLAMA, { config: { intermediate_size: 95 } }));
    expect(wrong.message).toMatch(/"model\.layers\.0\.mlp\.gate_proj\.weight" .* shape \[96, 48\] but config\.json implies \[95, 48\] \(intermediate_size = 95 but the weights have 96\)/);
    const gpt = await loadError(await variant(GPT2, { config: { n_inner: 64 } }));
    expect(gpt.message).toMatch(/c_fc\.weight.*has shape \[32, 128\] but config\.json implies \[32, 64\] \(n_inner \(default 4 × n_embd\) = 64 but the weights have 128\)/);
  });

  it('num_hidden_layers 1e9 fails at parse time; more or fewer layers than the weights hold name both counts', async () => {
    const huge = await loadError(await variant(LLAMA, { config: { num_hidden_layers: 1e9 } }));
    expect(huge.message).toMatch(/num_hidden_layers: must be at most 1024/);
    const more = await loadError(await variant(LLAMA, { config: { num_hidden_layers: 900 } }));
    expect(more.message).toMatch(/num_hidden_layers = 900 but model\.safetensors holds tensors for 2 block\(s\); fix num_hidden_layers/);
    const fewer = await loadError(await variant(GPT2, { config: { n_layer: 1 } }));
    expect(fewer.message).toMatch(/n_layer = 1 but model\.safetensors holds tensors for 2 block\(s\)/);
  });

  it('a tokenizer.json with an unknown model type is refused with the supported list', async () => {
    const tok = await readJson(path.join(STORIES, 'tokenizer.json'));
    const bad = { ...tok, model: { ...(tok.model as object), type: 'SentencePieceMagic' } };
    const dir = await variant(STORIES, { files: { 'tokenizer.json': JSON.stringify(bad) } });
    const err = await loadError(dir);
    expect(err.code).toBe('BAD_CONFIG');
    expect(err.message).toContain(dir);
    expect(err.message).toMatch(/model type "SentencePieceMagic" is not supported; supported tokenizer models: BPE, Unigram, WordPiece/);
    const untyped = { ...tok, model: { ...(tok.model as object), type: undefined } };
    expect(() => new Tokenizer(JSON.parse(JSON.stringify(untyped)) as Record<string, unknown>)).toThrow(/model no "type" is not supported/);
  });
});

describe('found by the fuzz below', () => {
  it('a tokenizer.json token id of 1e9 is refused at once instead of costing minutes', async () => {
    const tok = await readJson(path.join(STORIES, 'tokenizer.json'));
    const model = tok.model as { vocab: Record<string, number> };
    const bad = { ...tok, model: { ...model, vocab: { ...model.vocab, '<0x0B>_x': 1e9 } } };
    expect(() => new Tokenizer(bad)).toThrow(/token "<0x0B>_x" has id 1000000000, but ids must be integers in \[0, 1288\) for a vocabulary of 516 tokens/);
    const added = { ...tok, added_tokens: [{ id: -3, content: '<x>' }] };
    expect(() => new Tokenizer(added)).toThrow(/token "<x>" has id -3/);
  });
});

describe('config against weights', () => {
  it('names the tensor, both shapes and the config fields behind a wrong attention shape', async () => {
    const err = await loadError(await variant(LLAMA, { config: { num_key_value_heads: 4 } }));
    expect(err.message).toMatch(/"model\.layers\.0\.self_attn\.k_proj\.weight" .* \[24, 48\] but config\.json implies \[48, 48\] \(num_key_value_heads × head_dim = 48 but the weights have 24\)/);
    const bias = await loadError(await variant(LLAMA, { config: { attention_bias: true } }));
    expect(bias.message).toMatch(/no tensor "model\.layers\.0\.self_attn\.q_proj\.bias".*attention_bias/);
    const untied = await loadError(await variant(path.join(FIXTURES, 'llama-mha-tied'), { config: { tie_word_embeddings: false } }));
    expect(untied.message).toMatch(/no tensor "lm_head\.weight".*tie_word_embeddings/);
  });

  it('checks weights handed to the CausalLM constructor the same way', async () => {
    const m = await CausalLM.load(LLAMA);
    const w = new Map(m.weights);
    const t = w.get('model.layers.1.mlp.down_proj.weight')!;
    w.set('model.layers.1.mlp.down_proj.weight', { dtype: 'f32', shape: [t.shape[1], t.shape[0]], data: t.data });
    expect(() => new CausalLM(m.config, w, null, {}, 'handmade')).toThrow(/handmade: tensor "model\.layers\.1\.mlp\.down_proj\.weight" in the weights has shape \[96, 48\] but config\.json implies \[48, 96\]/);
  });

  it('reads only the tensors the architecture needs (buffers and extras are skipped)', async () => {
    const { tensors } = await readSafetensors(path.join(GPT2, 'model.safetensors'));
    tensors.set('h.0.attn.bias', { dtype: 'u8', shape: [1, 1, 4, 4], data: new Uint8Array(16) });
    tensors.set('extra.counter', { dtype: 'i64', shape: [1], data: new BigInt64Array([5n]) });
    const dir = await variant(GPT2);
    await writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
    const m = await CausalLM.load(dir);
    expect([...m.weights.keys()].sort()).toEqual([...expectedParamShapes(m.config).keys()].sort());
  });
});

describe('fuzz: 200 seeded malformed model directories', () => {
  it('every one loads consistently or fails with a SparsetuneError, never a crash', async () => {
    const rand = mulberry32(16);
    const sources = [LLAMA, GPT2, STORIES];
    const stats = { ok: 0, refused: 0 };
    const originals = new Map<string, { config: unknown; weights: Uint8Array; tokenizer?: unknown }>();
    for (const src of sources) {
      const tokFile = path.join(src, 'tokenizer.json');
      originals.set(src, {
        config: await readJson(path.join(src, 'config.json')),
        weights: await fsp.readFile(path.join(src, 'model.safetensors')),
        tokenizer: await fsp.readFile(tokFile, 'utf8').then((t) => JSON.parse(t) as unknown, () => undefined),
      });
    }
    for (let trial = 0; trial < 200; trial++) {
      const src = pick(rand, sources);
      const o = originals.get(src)!;
      const files: Record<string, string | Uint8Array> = {};
      const what = rand();
      if (what < 0.45) files['config.json'] = JSON.stringify(mutateJsonTimes(rand, o.config, 1 + Math.floor(rand() * 3)));
      else if (what < 0.8 || !o.tokenizer) {
        const headerLen = 8 + Number(Buffer.from(o.weights.subarray(0, 8)).readBigUInt64LE(0));
        files['model.safetensors'] = mutateBytes(rand, o.weights, headerLen);
      } else files['tokenizer.json'] = JSON.stringify(mutateJsonTimes(rand, o.tokenizer, 1 + Math.floor(rand() * 2)));
      const dir = await variant(src, { files });
      const r = await okOrSparsetuneError(`trial ${trial} (${path.basename(src)}: ${Object.keys(files).join()})`, () => CausalLM.load(dir));
      if (r.ok) {
        // Whatever loads must be what its config describes, exactly.
        stats.ok++;
        const want = expectedParamShapes(r.value.config);
        expect(r.value.weights.size).toBe(want.size);
        for (const [name, shape] of want) expect(r.value.weights.get(name)!.shape, name).toEqual(shape);
      } else stats.refused++;
      await fsp.rm(dir, { recursive: true, force: true });
    }
    console.log(stats);
    expect(stats.refused).toBeGreaterThan(80);
    expect(stats.ok).toBeGreaterThan(10);
  });
});
