import { describe, expect, it } from 'vitest';
import { LoraMethod } from '../../src/adapters/lora.js';
import { grad } from '../../src/engine/autodiff.js';
import { Graph, type Value } from '../../src/engine/ir.js';
import { chunkedLinearCrossEntropy } from '../../src/engine/loss.js';
import { crossEntropy, linear } from '../../src/engine/nn.js';
import { collate } from '../../src/io/datasets.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { randomModel } from '../../src/models/random.js';
import type { ModelHooks } from '../../src/models/hooks.js';
import type { HostTensor } from '../../src/tensor.js';
import { paramFeeds } from '../../src/train/param-feeds.js';
import { randomTokenExamples, sharedModelDir } from '../helpers.js';
import { gradCheck, rng, runtime } from './gradcheck.js';

const targets = (vals: number[]): HostTensor => ({ dtype: 'i64', shape: [vals.length], data: BigInt64Array.from(vals.map(BigInt)) });

describe('chunked LM head + cross-entropy', () => {
  it('has finite-difference gradients (f64; rows not a multiple of the chunk, ignored targets)', () =>
    gradCheck({
      inputs: [
        { name: 'h', shape: ['n', 4], feed: [7, 4] },
        { name: 'w', shape: [6, 4], feed: [6, 4] },
      ],
      extra: [{ name: 't', dtype: 'i64', shape: ['n'], tensor: targets([1, -100, 5, 0, 3, -100, 2]) }],
      build: ([h, w], [t]) => chunkedLinearCrossEntropy(h, w, t, { chunk: 3 }),
    }));

  it('gives the plain loss and gradients; the loss-only graph gives the same loss', async () => {
    const N = 37;
    const E = 16;
    const V = 50;
    const r = rng(3);
    const feeds: Record<string, HostTensor> = {
      h: { dtype: 'f32', shape: [N, E], data: Float32Array.from({ length: N * E }, () => r() * 2 - 1) },
      w: { dtype: 'f32', shape: [V, E], data: Float32Array.from({ length: V * E }, () => r() * 2 - 1) },
      t: targets(Array.from({ length: N }, (_, i) => (i % 5 === 0 ? -100 : (i * 7) % V))),
    };
    const run = async (loss: (h: Value, w: Value, t: Value) => Value, withGrad: boolean) => {
      const g = new Graph('ce');
      const [h, w, t] = [g.input('h', 'f32', ['n', E]), g.input('w', 'f32', [V, E]), g.input('t', 'i64', ['n'])];
      const l = loss(h, w, t);
      g.output('loss', l);
      if (withGrad) grad(l, [h, w]).forEach((gv, k) => g.output(`g${k}`, gv));
      return (await runtime.compile(g)).run(feeds);
    };
    const plain = await run((h, w, t) => crossEntropy(linear(h, w), t), true);
    const chunked = await run((h, w, t) => chunkedLinearCrossEntropy(h, w, t, { chunk: 8 }), true);
    const lossOnly = await run((h, w, t) => chunkedLinearCrossEntropy(h, w, t, { chunk: 8 }), false);
    expect(chunked.loss.data[0]).toBeCloseTo(plain.loss.data[0] as number, 5);
    expect(lossOnly.loss.data[0]).toBeCloseTo(plain.loss.data[0] as number, 5);
    for (const k of ['g0', 'g1']) {
      expect(chunked[k].shape).toEqual(plain[k].shape);
      const a = plain[k].data as Float32Array;
      const b = chunked[k].data as Float32Array;
      for (let i = 0; i < a.length; i++) expect(Math.abs(a[i] - b[i])).toBeLessThan(1e-6);
    }
  });

  it('trains real models like the plain loss: same loss and gradients for full fine-tuning (tied and untied) and LoRA', async () => {
    const compare = async (model: CausalLM, hooks: ModelHooks, names: string[], extra: Record<string, HostTensor>) => {
      const batch = collate(randomTokenExamples(rng(5), 3, { length: [20, 13, 17], hi: model.vocabSize }), 0);
      const out: Record<string, Record<string, HostTensor>> = {};
      for (const chunkedLoss of [false, true]) {
        const built = model.build('train', hooks, { chunkedLoss });
        const g = built.graph;
        const wrt = names.map((n) => g.inputs.find((v) => v.name === n)!);
        g.output('loss', built.loss!);
        grad(built.loss!, wrt).forEach((gv, k) => g.output(`grad:${names[k]}`, gv));
        const compiled = await runtime.compile(g);
        out[String(chunkedLoss)] = await compiled.run(model.feeds(compiled, { ...extra, ...CausalLM.trainFeeds(batch) }));
      }
      const [plain, chunked] = [out.false, out.true];
      expect(chunked.loss.data[0]).toBeCloseTo(plain.loss.data[0] as number, 5);
      for (const n of names) {
        const a = plain[`grad:${n}`].data as Float32Array;
        const b = chunked[`grad:${n}`].data as Float32Array;
        let worst = 0;
        let scale = 0;
        for (let i = 0; i < a.length; i++) {
          worst = Math.max(worst, Math.abs(a[i] - b[i]));
          scale = Math.max(scale, Math.abs(a[i]));
        }
        expect(worst, n).toBeLessThanOrEqual(1e-5 * Math.max(1, scale));
      }
    };
    const stories = await CausalLM.load(bundledModelPath()); // tied: lm_head = embed_tokens
    await compare(stories, {}, [...stories.weights.keys()], {});
    const lora = new LoraMethod(stories, { r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] });
    for (const p of lora.params()) for (let i = 0; i < p.data.length; i++) p.data[i] = 0.02 * Math.cos(i);
    await compare(stories, lora.hooks('train'), lora.params().map((p) => p.name), paramFeeds(lora.params()));
    const tiny = await CausalLM.load(sharedModelDir('tinystories-656K'));
    await compare(tiny, {}, ['model.embed_tokens.weight', 'model.norm.weight', 'model.layers.1.mlp.down_proj.weight'], {});
    const untied = randomModel({ model_type: 'llama', vocab_size: 700, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 1, num_attention_heads: 4, tie_word_embeddings: false }, { std: 0.1 });
    await compare(untied, {}, ['lm_head.weight', 'model.embed_tokens.weight', 'model.layers.0.self_attn.q_proj.weight'], {});
  });
});
