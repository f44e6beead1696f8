import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseModelConfig, SUPPORTED_MODEL_TYPES, type LlamaConfig } from '../../src/io/config.js';

const stories = JSON.parse(readFileSync('models/stories260K/config.json', 'utf8'));

const minimalLlama = {
  model_type: 'llama',
  vocab_size: 100,
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 8,
};

describe('parseModelConfig', () => {
  it('normalizes the bundled stories260K config', () => {
    const c = parseModelConfig(stories, 'stories/config.json') as LlamaConfig;
    expect(c).toMatchObject({
      arch: 'llama', modelType: 'llama', vocabSize: 512, hiddenSize: 64, intermediateSize: 172, numLayers: 5,
      numHeads: 8, numKvHeads: 4, headDim: 8, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null,
      tieWordEmbeddings: true, attentionBias: false, mlpBias: false, maxPositionEmbeddings: 512,
      bosTokenId: 1, eosTokenId: 2, hiddenAct: 'silu',
    });
    expect(c.raw).toBe(stories);
  });

  it('applies HF defaults for llama', () => {
    const c = parseModelConfig(minimalLlama) as LlamaConfig;
    expect(c.numKvHeads).toBe(8);
    expect(c.headDim).toBe(8);
    expect(c.ropeTheta).toBe(10000);
    expect(c.tieWordEmbeddings).toBe(false);
    expect(c.attentionBias).toBe(false);
    expect(c.bosTokenId).toBeUndefined();
  });

  it('maps mistral and qwen2 onto the llama architecture; qwen2 has qkv bias', () => {
    const m = parseModelConfig({ ...minimalLlama, model_type: 'mistral', num_key_value_heads: 2, sliding_window: 4096 }) as LlamaConfig;
    expect([m.arch, m.modelType, m.numKvHeads, m.attentionBias]).toEqual(['llama', 'mistral', 2, false]);
    const q = parseModelConfig({ ...minimalLlama, model_type: 'qwen2', tie_word_embeddings: true, rope_theta: 1e6, eos_token_id: [5, 6] }) as LlamaConfig;
    expect([q.arch, q.attentionBias, q.tieWordEmbeddings, q.ropeTheta, q.eosTokenId]).toEqual(['llama', true, true, 1e6, [5, 6]]);
    expect(parseModelConfig({ ...minimalLlama, head_dim: 32 })).toMatchObject({ headDim: 32 });
  });

  it('reads rope_scaling under rope_type or type', () => {
    const llama3 = parseModelConfig({
      ...minimalLlama,
      rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    });
    expect((llama3 as LlamaConfig).ropeScaling).toEqual({ type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
    expect((parseModelConfig({ ...minimalLlama, rope_scaling: { type: 'linear', factor: 2 } }) as LlamaConfig).ropeScaling).toEqual({ type: 'linear', factor: 2 });
    expect((parseModelConfig({ ...minimalLlama, rope_scaling: { rope_type: 'default' } }) as LlamaConfig).ropeScaling).toBeNull();
    expect(() => parseModelConfig({ ...minimalLlama, rope_scaling: { type: 'yarn', factor: 4 } })).toThrow(expect.objectContaining({ code: 'UNSUPPORTED_MODEL' }));
    expect(() => parseModelConfig({ ...minimalLlama, rope_scaling: { type: 'llama3', factor: 4 } })).toThrow(/low_freq_factor/);
  });

  it('parses gpt2 with its defaults', () => {
    const g = parseModelConfig({ model_type: 'gpt2', n_embd: 64, n_layer: 2, n_head: 4, vocab_size: 300, n_positions: 128 });
    expect(g).toMatchObject({
      arch: 'gpt2', hiddenSize: 64, intermediateSize: 256, numLayers: 2, numHeads: 4, vocabSize: 300,
      maxPositionEmbeddings: 128, layerNormEps: 1e-5, activation: 'gelu_new', bosTokenId: 50256, eosTokenId: 50256, tieWordEmbeddings: true,
    });
  });

  it('rejects unsupported and invalid configs with clear errors', () => {
    expect(SUPPORTED_MODEL_TYPES).toEqual(expect.arrayContaining(['llama', 'mistral', 'qwen2', 'gpt2']));
    let err: unknown;
    try {
      parseModelConfig({ model_type: 'bert' }, 'x/config.json');
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'UNSUPPORTED_MODEL', message: expect.stringMatching(/x\/config.json.*"bert".*llama, mistral, qwen2, gpt2/) });
    expect(() => parseModelConfig({ model_type: 'toString' })).toThrow(expect.objectContaining({ code: 'UNSUPPORTED_MODEL' }));
    expect(() => parseModelConfig({})).toThrow(expect.objectContaining({ code: 'BAD_CONFIG' }));
    expect(() => parseModelConfig([1])).toThrow(expect.objectContaining({ code: 'BAD_CONFIG' }));
    expect(() => parseModelConfig({ ...minimalLlama, hidden_size: -1 })).toThrow(/hidden_size/);
    expect(() => parseModelConfig({ ...minimalLlama, num_key_value_heads: 3 })).toThrow(/multiple/);
    expect(() => parseModelConfig({ ...minimalLlama, hidden_size: 60 })).toThrow(/divisible/);
    expect(() => parseModelConfig({ ...minimalLlama, hidden_act: 'gelu' })).toThrow(expect.objectContaining({ code: 'UNSUPPORTED_MODEL' }));
  });
});
