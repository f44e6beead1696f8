import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CausalLM } from '../../src/models/causal-lm.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { generateIds, generateText, streamGenerate } from '../../src/models/generate.js';

const FIX = join(import.meta.dirname, '..', 'fixtures');

describe('generation', () => {
  it('greedy continuation of "Once upon a time" matches the reference text', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const ref = JSON.parse(readFileSync(join(FIX, 'stories260K-reference.json'), 'utf8')).greedy_to_sentence_end;
    const r = await generateText(model, 'Once upon a time', { maxNewTokens: ref.max_new_tokens });
    expect(r.ids).toEqual(ref.generated_ids);
    expect(r.text.startsWith(', there was a little girl named Lily. She loved to play outside in the park.')).toBe(true);
  });

  it('batched generation with left padding equals one-by-one generation', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const tok = model.tokenizer!;
    const prompts = ['Once upon a time', 'The cat', 'Tom and his mom went to the big store'].map((p) => tok.encode(p));
    const batched = await generateIds(model, prompts, { maxNewTokens: 12, eos: false });
    for (const [i, p] of prompts.entries()) {
      const [single] = await generateIds(model, [p], { maxNewTokens: 12, eos: false });
      expect(batched[i].ids).toEqual(single.ids);
    }
  });

  it('stop strings end generation without emitting them; seeded sampling is reproducible; streaming adds up', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const r = await generateText(model, 'Once upon a time', { maxNewTokens: 40, stop: ['Lily'] });
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(', there was a little girl named ');
    const a = await generateText(model, 'Once upon a time', { maxNewTokens: 20, temperature: 1, topP: 0.9, seed: 5 });
    const b = await generateText(model, 'Once upon a time', { maxNewTokens: 20, temperature: 1, topP: 0.9, seed: 5 });
    expect(a.ids).toEqual(b.ids);
    const it = streamGenerate(model, [model.tokenizer!.encode('One day')], { maxNewTokens: 15 });
    let streamed = '';
    let res;
    for (;;) {
      const n = await it.next();
      if (n.done) {
        res = n.value;
        break;
      }
      streamed += n.value.text;
    }
    expect(streamed).toBe(res[0].text);
    expect(streamed.length).toBeGreaterThan(10);
  });
});
