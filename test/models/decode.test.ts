import { describe, expect, it } from 'vitest';
import { LoraMethod } from '../../src/adapters/lora.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { DecodeSession } from '../../src/models/decode.js';
import { randomModel } from '../../src/models/random.js';
import type { ModelHooks } from '../../src/models/hooks.js';
import type { HostTensor } from '../../src/tensor.js';
import { paramFeeds } from '../../src/train/param-feeds.js';
import { sharedModelDir } from '../helpers.js';

/**
 * Decode through a session (ragged prompts, then `steps` tokens per row) and compare each
 * returned row of logits with the full-sequence graph's logits at that position.
 */
async function worstDecodeError(model: CausalLM, mode: 'shared' | 'concat', opts: { hooks?: ModelHooks; extraFeeds?: Record<string, HostTensor> } = {}): Promise<number> {
  const V = model.vocabSize;
  const prompts = [
    [1, 5, 9, 22, 40, 17],
    [1, 7, 3],
    [1, 30, 31, 32, 2],
  ].map((p) => p.map((t) => t % V));
  const session = await DecodeSession.open(model, prompts.length, { ...opts, mode, capacity: 4 }); // grows twice
  expect(session.mode).toBe(mode);
  const seqs = prompts.map((p) => [...p]);
  let worst = 0;
  const compare = async (logits: HostTensor<'f32'>) => {
    for (const [b, seq] of seqs.entries()) {
      const full = await model.logits([seq], opts);
      const S = seq.length;
      const ref = full.data.subarray((S - 1) * V, S * V);
      const got = logits.data.subarray(b * V, (b + 1) * V);
      for (let i = 0; i < V; i++) worst = Math.max(worst, Math.abs(ref[i] - got[i]));
    }
  };
  await compare(await session.prefill(prompts));
  for (let step = 0; step < 5; step++) {
    const next = seqs.map((_, b) => (11 + 3 * step + b) % V);
    next.forEach((t, b) => seqs[b].push(t));
    await compare(await session.next(next));
  }
  expect(session.lengths).toEqual(seqs.map((s) => s.length));
  return worst;
}

const tinyLlama = (extra: Record<string, unknown>) =>
  randomModel({ model_type: 'llama', vocab_size: 300, hidden_size: 192, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 3, num_key_value_heads: 1, max_position_embeddings: 64, ...extra }, { std: 0.1 });

describe('decode session (in-place KV cache, last-position logits)', () => {
  it('gives the full-sequence logits on stories260K (rotary in the graph) and tinystories-656K (rotary in the kernel, GQA 8/4)', async () => {
    for (const model of [await CausalLM.load(bundledModelPath()), await CausalLM.load(sharedModelDir('tinystories-656K'))]) {
      expect(await worstDecodeError(model, 'shared')).toBeLessThan(1e-4);
    }
  });

  it('gives the full-sequence logits for GQA with llama3 RoPE scaling, Qwen2 q/k/v biases and GPT-2 (learned positions)', async () => {
    const llama3 = tinyLlama({ rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 } });
    const qwen = randomModel({ model_type: 'qwen2', vocab_size: 300, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64 }, { std: 0.1 });
    const gpt2 = randomModel({ model_type: 'gpt2', vocab_size: 300, n_embd: 64, n_layer: 2, n_head: 4, n_positions: 64 }, { std: 0.1 });
    for (const model of [llama3, qwen, gpt2]) expect(await worstDecodeError(model, 'shared')).toBeLessThan(1e-4);
  });

  it('runs adapters through hooks and extra feeds, and the KvCache step path serves the same API', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const lora = new LoraMethod(model, { r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj', 'lm_head'] });
    for (const p of lora.params()) for (let i = 0; i < p.data.length; i++) p.data[i] = 0.05 * Math.sin(i + p.data.length); // B != 0
    const opts = { hooks: lora.hooks('eval'), extraFeeds: paramFeeds(lora.params()) };
    expect(await worstDecodeError(model, 'shared', opts)).toBeLessThan(1e-4);
    expect(await worstDecodeError(model, 'concat', opts)).toBeLessThan(1e-4);
  });

  it('refuses bad input with a message', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const s = await DecodeSession.open(model, 2);
    await expect(s.next([1, 2])).rejects.toThrow(/prefill first/);
    await expect(s.prefill([[1, 2]])).rejects.toThrow(/1 prompts for a session of 2 rows/);
    await expect(s.prefill([[1], [model.vocabSize]])).rejects.toThrow(/outside the vocabulary/);
  });
});
