import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_CHAT_TEMPLATE, Tokenizer } from '../../src/io/tokenizer.js';

const DIR = path.resolve('models/stories260K');
let tok: Tokenizer;

beforeAll(async () => {
  tok = await Tokenizer.fromDir(DIR);
});

describe('Tokenizer on stories260K', () => {
  it('knows its special tokens and vocabulary', () => {
    expect(tok.bosId).toBe(1);
    expect(tok.eosId).toBe(2);
    expect(tok.padId).toBe(2); // no pad token: falls back to EOS
    expect(tok.vocabSize).toBe(512);
    expect(tok.addsBos).toBe(true);
    expect(tok.idToToken(403)).toBe('▁Once');
    expect(tok.tokenToId('<s>')).toBe(1);
  });

  it('encodes "Once upon a time" to [1, 403, 407, 261, 378]', () => {
    expect(tok.encode('Once upon a time')).toEqual([1, 403, 407, 261, 378]);
    expect(tok.encode('Once upon a time', { addBos: false })).toEqual([403, 407, 261, 378]);
  });

  it('decodes, stripping the dummy prefix space after BOS', () => {
    expect(tok.decode([1, 403, 407, 261, 378])).toBe('Once upon a time');
    expect(tok.decode([1, 403, 407, 261, 378], { skipSpecialTokens: false })).toBe('<s> Once upon a time');
    const text = 'Lily said: "héllo, 日本 😀!"\nThe end.';
    expect(tok.decode(tok.encode(text))).toBe(text);
  });

  it('streams text deltas that add up to the full decode, holding incomplete UTF-8', () => {
    const text = 'Once upon a time, 日本 had a 😀 cat.\nIt was happy.';
    const ids = tok.encode(text);
    const dec = tok.streamDecoder();
    const deltas = ids.map((id) => dec.push(id));
    deltas.push(dec.flush());
    expect(deltas.join('')).toBe(text);
    expect(deltas.some((d) => d.includes('\uFFFD'))).toBe(false);
    // Byte-fallback pieces of "日" produce nothing until the third byte arrives.
    const nichi = tok.encode('日', { addBos: false }).filter((id) => tok.idToToken(id)!.startsWith('<0x'));
    expect(nichi).toHaveLength(3);
    const d2 = tok.streamDecoder({ context: tok.encode('a') });
    expect([d2.push(nichi[0]), d2.push(nichi[1]), d2.push(nichi[2])]).toEqual(['', '', '日']);
  });

  it('streams a continuation after a prompt with correct spacing', () => {
    const prompt = tok.encode('Once upon a time');
    const full = tok.encode('Once upon a time, there was a little girl');
    const gen = full.slice(prompt.length);
    expect(full.slice(0, prompt.length)).toEqual(prompt);
    const dec = tok.streamDecoder({ context: prompt });
    const out = gen.map((id) => dec.push(id)).join('') + dec.flush();
    expect(out).toBe(', there was a little girl');
    expect(tok.decode(prompt) + out).toBe(tok.decode(full));
  });

  it('renders the default ChatML-like template ending turns with EOS when <|im_end|> is unknown', () => {
    expect(tok.chatTemplate).toBeUndefined();
    const text = tok.applyChatTemplate([{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }]);
    expect(text).toBe('<|im_start|>user\nHi</s>\n<|im_start|>assistant\nHello!</s>\n');
    const prompt = tok.applyChatTemplate([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true });
    expect(prompt).toBe('<|im_start|>user\nHi</s>\n<|im_start|>assistant\n');
    expect(DEFAULT_CHAT_TEMPLATE).toContain('<|im_start|>');
    // The rendered EOS text maps to the real EOS id.
    expect(tok.encode(text, { addBos: false })).toContain(2);
  });
});

describe('Tokenizer with a model chat template', () => {
  it('uses chat_template from tokenizer_config.json (string or named list) and chat_template.jinja', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tok-test-'));
    try {
      await fsp.copyFile(path.join(DIR, 'tokenizer.json'), path.join(dir, 'tokenizer.json'));
      const cfg = JSON.parse(await fsp.readFile(path.join(DIR, 'tokenizer_config.json'), 'utf8'));
      const mistral =
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}" +
        "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}";
      await fsp.writeFile(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ ...cfg, chat_template: mistral }));
      const msgs = [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Yo' }];
      const t1 = await Tokenizer.fromDir(dir);
      expect(t1.applyChatTemplate(msgs)).toBe('<s>[INST] Hi [/INST]Yo</s>');
      expect(t1.templateEmitsBos(t1.applyChatTemplate(msgs))).toBe(true);

      await fsp.writeFile(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ ...cfg, chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D{{ messages|length }}' }] }));
      expect((await Tokenizer.fromDir(dir)).applyChatTemplate(msgs)).toBe('D2');

      await fsp.writeFile(path.join(dir, 'chat_template.jinja'), 'J{{ messages[0].content }}');
      expect((await Tokenizer.fromDir(dir)).applyChatTemplate(msgs)).toBe('JHi');

      await fsp.writeFile(path.join(dir, 'chat_template.jinja'), "{{ raise_exception('no system role') }}");
      const t3 = await Tokenizer.fromDir(dir);
      expect(() => t3.applyChatTemplate(msgs)).toThrow(expect.objectContaining({ code: 'BAD_ARGUMENT', message: expect.stringContaining('no system role') }));
      await fsp.writeFile(path.join(dir, 'chat_template.jinja'), '{% for x in %}');
      const t4 = await Tokenizer.fromDir(dir);
      expect(() => t4.applyChatTemplate(msgs)).toThrow(expect.objectContaining({ code: 'BAD_CONFIG' }));
      expect(() => new Tokenizer({}, {})).toThrow(expect.objectContaining({ code: 'BAD_CONFIG' }));
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  it('missing tokenizer.json -> NOT_FOUND', async () => {
    await expect(Tokenizer.fromDir(os.tmpdir() + '/definitely-not-here')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});
