/**
 * The transformers.js export, loaded by the real `@huggingface/transformers` package from local
 * files only: its greedy text equals `sparsetune generate` for the base model, a fused sparse
 * adapter and a fused LoRA (a PEFT directory; weights as external data); and the package is a
 * second, independent reference for our tokenizer and logits (stories260K against the PyTorch
 * fixture, tinystories-656K with GQA, a left-padded batch).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { AutoModelForCausalLM, AutoTokenizer, env, pipeline, Tensor } from '@huggingface/transformers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { saveAdapter } from '../../src/merge/adapter.js';
import { exportOnnxModel } from '../../src/merge/onnx-export.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { cli } from '../cli/helpers.js';
import { sharedModelDir } from '../helpers.js';
import { randomSparseAdapter } from '../serve/helpers.js';

const ROOT = path.resolve('.');
const STORIES = path.join(ROOT, 'models', 'stories260K');
const PEFT = path.join(ROOT, 'test', 'fixtures', 'peft', 'stories260K-lora');
const PROMPT = 'Once upon a time';
let out: string;

beforeAll(() => {
  out = mkdtempSync(path.join(tmpdir(), 'sparsetune-tjs-'));
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = `${out}/`;
});
afterAll(() => rmSync(out, { recursive: true, force: true }));

/** transformers.js's greedy text (prompt included) of the export `name` in `out`. */
async function tjsGreedy(name: string, maxNewTokens: number): Promise<string> {
  const generate = await pipeline('text-generation', name);
  const r = (await generate(PROMPT, { max_new_tokens: maxNewTokens, do_sample: false })) as { generated_text: string }[];
  await generate.dispose();
  return r[0].generated_text;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let w = 0;
  for (let i = 0; i < a.length; i++) w = Math.max(w, Math.abs(a[i] - b[i]));
  return w;
}

describe('transformers.js loads the export', () => {
  it('and generates what sparsetune generate does: base, fused sparse adapter, fused LoRA (external data)', async () => {
    const model = await CausalLM.load(STORIES);
    const sparse = path.join(out, 'sparse-adapter');
    await saveAdapter(sparse, randomSparseAdapter(model.weights, { seed: 7, density: 0.05, scale: 0.3 }));
    const N = '24';
    const runs = await Promise.all([
      cli(['export', '--onnx', path.join(out, 'base')]),
      cli(['merge', '--adapter', sparse, '--out', path.join(out, 'sparse'), '--onnx']),
      cli(['export', '--onnx', path.join(out, 'lora'), '--adapter', PEFT, '--external-data', 'always']),
      cli(['generate', '--prompt', PROMPT, '--max-tokens', N]),
      cli(['generate', '--prompt', PROMPT, '--max-tokens', N, '--adapter', sparse]),
      cli(['generate', '--prompt', PROMPT, '--max-tokens', N, '--adapter', PEFT]),
    ]);
    for (const r of runs) expect(r.code, r.stderr).toBe(0);
    expect(runs[2].stdout).toMatch(/onnx\/model\.onnx_data/);
    const texts = runs.slice(3).map((r) => PROMPT + r.stdout.replace(/\n$/, ''));
    expect(new Set(texts).size).toBe(3); // the adapters change the text
    expect(await tjsGreedy('base', Number(N))).toBe(texts[0]);
    expect(await tjsGreedy('sparse', Number(N))).toBe(texts[1]);
    expect(await tjsGreedy('lora', Number(N))).toBe(texts[2]);
    // The merged directory is also a sparsetune/transformers model directory.
    expect(JSON.parse(readFileSync(path.join(out, 'lora', 'config.json'), 'utf8'))['transformers.js_config']).toEqual({ use_external_data_format: true });
  });

  it('is a second reference for the tokenizers (stories260K, tinystories-656K)', async () => {
    const texts = ['Once upon a time', ' leading space', 'Lily said: "Hi!"\nThe end.', 'naïve café — 😀', '', 'a  b   c', '<|start_story|>x'];
    for (const dir of [STORIES, sharedModelDir('tinystories-656K')]) {
      const ours = (await CausalLM.load(dir)).tokenizer!;
      const theirs = await AutoTokenizer.from_pretrained(dir);
      for (const t of texts) {
        const ids = ours.encode(t);
        expect(ids, `${path.basename(dir)}: ${JSON.stringify(t)}`).toEqual(theirs.encode(t));
        expect(ours.decode(ids)).toBe(theirs.decode(ids, { skip_special_tokens: true }));
      }
    }
  });

  it('is a second reference for the logits: PyTorch fixture, GQA model, left-padded batch', async () => {
    const ref = JSON.parse(readFileSync(path.join(ROOT, 'test', 'fixtures', 'stories260K-reference.json'), 'utf8'));
    const tiny = await CausalLM.load(sharedModelDir('tinystories-656K'));
    await exportOnnxModel(tiny, path.join(out, 'tiny'));
    const lm = await AutoModelForCausalLM.from_pretrained('base');
    const ids = ref.input_ids as number[];
    const { logits } = await lm({ input_ids: new Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, ids.length]), attention_mask: new Tensor('int64', new BigInt64Array(ids.length).fill(1n), [1, ids.length]) });
    expect(maxDiff(logits.data as Float32Array, (ref.logits as number[][]).flat())).toBeLessThan(1e-4);
    await lm.dispose();

    // Two rows, the shorter one left-padded: real positions must match our model's logits.
    const rows = [[1, 403, 407, 261, 378, 289], [1, 403, 407]];
    const T = 6;
    const padded = rows.map((r) => [...Array(T - r.length).fill(0), ...r]);
    const mask = rows.map((r) => [...Array(T - r.length).fill(0), ...r.map(() => 1)]);
    const tinyLm = await AutoModelForCausalLM.from_pretrained('tiny');
    const r = await tinyLm({ input_ids: new Tensor('int64', BigInt64Array.from(padded.flat().map(BigInt)), [2, T]), attention_mask: new Tensor('int64', BigInt64Array.from(mask.flat().map(BigInt)), [2, T]) });
    const ours = await tiny.logits(padded, { attention: mask });
    const V = tiny.vocabSize;
    for (let b = 0; b < 2; b++) {
      for (let t = T - rows[b].length; t < T; t++) {
        const at = (b * T + t) * V;
        expect(maxDiff((r.logits.data as Float32Array).subarray(at, at + V), ours.data.subarray(at, at + V)), `row ${b} position ${t}`).toBeLessThan(1e-4);
      }
    }
    await tinyLm.dispose();
  });
});
