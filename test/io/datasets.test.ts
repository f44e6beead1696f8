import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { batches, collate, IGNORE_INDEX, loadDataset, shuffled, splitHoldout, type TokenizedExample } from '../../src/io/datasets.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { SHARED_DIR } from '../helpers.js';

const DATA = path.join(SHARED_DIR, 'data');
let tok: Tokenizer;
let tmp: string;

beforeAll(async () => {
  tok = await Tokenizer.fromDir(path.resolve('models/stories260K'));
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'data-test-'));
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

async function write(name: string, content: string): Promise<string> {
  const p = path.join(tmp, name);
  await fsp.writeFile(p, content);
  return p;
}

const count = (exs: TokenizedExample[], id: number) => exs.reduce((n, e) => n + e.inputIds.filter((x) => x === id).length, 0);
const labelled = (e: TokenizedExample) => e.inputIds.filter((_, k) => e.labels[k] !== IGNORE_INDEX);

describe('plain text', () => {
  it('tinystories paragraphs: BOS per paragraph, packed into seqLen windows', async () => {
    const full = await fsp.readFile(`${DATA}/tinystories/tinystories_valid_head.txt`, 'utf8');
    const head = full.slice(0, 20000);
    const file = await write('stories.txt', head);
    const exs = await loadDataset(file, tok, { seqLen: 64 });
    const paragraphs = head.split(/\n[ \t]*\n/).filter((p) => p.trim()).length;
    expect(count(exs, 1)).toBe(paragraphs);
    expect(count(exs, 2)).toBe(0);
    exs.slice(0, -1).forEach((e) => expect(e.inputIds).toHaveLength(64));
    exs.forEach((e) => expect(e.labels).toEqual(e.inputIds));
    expect(exs[0].inputIds[0]).toBe(1);
    expect(tok.decode(exs[0].inputIds)).toBe(head.trimStart().slice(0, tok.decode(exs[0].inputIds).length));
  });

  it('TinyStoriesV2 <|endoftext|> documents get BOS and EOS', async () => {
    const full = await fsp.readFile(`${DATA}/tinystories/tinystoriesV2_valid_first10k_lines.txt`, 'utf8');
    const cut = full.indexOf('<|endoftext|>', 8000);
    const file = await write('v2.txt', full.slice(0, cut));
    const docs = full.slice(0, cut).split('<|endoftext|>').filter((d) => d.trim()).length;
    const exs = await loadDataset(file, tok, { seqLen: 128 });
    expect(count(exs, 1)).toBe(docs);
    expect(count(exs, 2)).toBe(docs);
  });

  it('ud-pud sentences: one document per line', async () => {
    const exs = await loadDataset(`${DATA}/ud-pud/pud_en.txt`, tok, { seqLen: 256 });
    expect(count(exs, 1)).toBe(1000);
  });
});

describe('JSONL', () => {
  it('text rows: BOS + text + EOS each, packed', async () => {
    const file = await write('t.jsonl', ['{"text":"Once upon a time"}', '', '{"text":"The end."}'].join('\n'));
    const exs = await loadDataset(file, tok, { seqLen: 512 });
    expect(exs).toHaveLength(1);
    expect(exs[0].inputIds).toEqual([...tok.encode('Once upon a time'), 2, ...tok.encode('The end.'), 2]);
    const windows = await loadDataset(file, tok, { seqLen: 4 });
    expect(windows.flatMap((e) => e.inputIds)).toEqual(exs[0].inputIds);
  });

  it('sib200 prompt/completion: loss only on the completion + EOS', async () => {
    const tsv = (await fsp.readFile(`${DATA}/sib200/eng_Latn/train.tsv`, 'utf8')).trim().split('\n').slice(1, 41);
    const rows = tsv.map((l) => {
      const [, category, text] = l.split('\t');
      return JSON.stringify({ prompt: `${text}\nTopic:`, completion: ` ${category}` });
    });
    const file = await write('sib.jsonl', rows.join('\n'));
    const exs = await loadDataset(file, tok, { seqLen: 512 });
    expect(exs).toHaveLength(40);
    exs.forEach((e, i) => {
      const category = tsv[i].split('\t')[1];
      const lab = labelled(e);
      expect(lab[lab.length - 1]).toBe(2);
      expect(tok.decode(lab).trim()).toBe(category);
      expect(e.labels.slice(0, 5).every((l) => l === IGNORE_INDEX)).toBe(true);
    });
  });

  it('truncates to seqLen and drops rows whose prompt fills it, with one warning', async () => {
    const long = 'word '.repeat(100);
    const file = await write('pc.jsonl', [JSON.stringify({ prompt: long, completion: 'x' }), JSON.stringify({ prompt: 'Hi', completion: long })].join('\n'));
    const warnings: string[] = [];
    const exs = await loadDataset(file, tok, { seqLen: 20, onWarning: (w) => warnings.push(w) });
    expect(exs).toHaveLength(1);
    expect(exs[0].inputIds).toHaveLength(20);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/dropped 1 example/);
  });

  it('messages: labels only on assistant turns', async () => {
    const msgs = [
      { role: 'user', content: 'Tell me a story.' },
      { role: 'assistant', content: 'Once upon a time.' },
      { role: 'user', content: 'More!' },
      { role: 'assistant', content: 'The end.' },
    ];
    const file = await write('chat.jsonl', JSON.stringify({ messages: msgs }));
    const [ex] = await loadDataset(file, tok, { seqLen: 512 });
    expect(tok.decode(ex.inputIds)).toBe(tok.decode(tok.encode(tok.applyChatTemplate(msgs))));
    // Split labelled positions into contiguous runs: one per assistant turn.
    const runs: number[][] = [];
    ex.labels.forEach((l, k) => {
      if (l === IGNORE_INDEX) return;
      if (k > 0 && ex.labels[k - 1] !== IGNORE_INDEX) runs[runs.length - 1].push(l);
      else runs.push([l]);
    });
    expect(runs.map((r) => tok.decode(r, { skipSpecialTokens: false }).trim())).toEqual(['Once upon a time.</s>', 'The end.</s>']);
    const pc = await write('pc-chat.jsonl', JSON.stringify({ prompt: 'Tell me a story.', completion: 'Once upon a time.' }));
    const [viaChat] = await loadDataset(pc, tok, { seqLen: 512, chatTemplate: true });
    expect(tok.decode(labelled(viaChat), { skipSpecialTokens: false }).trim()).toBe('Once upon a time.</s>');
  });

  it('bad lines name the file, line and expected fields', async () => {
    const cases: [string, RegExp][] = [
      ['{"text":"ok"}\n{"text": oops}\n', /:2: invalid JSON.*"text"/],
      ['{"text":"ok"}\n\n{"foo":1}\n', /:3: expected a JSON object.*got keys \["foo"\]/],
      ['{"prompt":"p"}', /:1: field "completion"/],
      ['{"text": 5}', /:1: field "text"/],
      ['[1,2]', /:1: expected a JSON object/],
      ['{"messages":[{"role":"user","content":"hi"}]}', /:1: "messages" has no assistant turn/],
      ['{"messages":[{"role":"user"}]}', /:1: field "messages.0.content"/],
      ['', /no training examples/],
    ];
    for (const [content, pattern] of cases) {
      const file = await write('bad.jsonl', content);
      const err = await loadDataset(file, tok, { seqLen: 64 }).then(() => null, (e: unknown) => e);
      expect(err, content).toMatchObject({ code: 'BAD_DATA' });
      expect((err as Error).message).toContain(file);
      expect((err as Error).message).toMatch(pattern);
    }
    await expect(loadDataset(path.join(tmp, 'nope.jsonl'), tok, { seqLen: 64 })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(loadDataset(path.join(tmp, 'bad.jsonl'), tok, { seqLen: 1 })).rejects.toMatchObject({ code: 'BAD_ARGUMENT' });
  });
});

describe('shuffling, splitting, batching', () => {
  const items = Array.from({ length: 50 }, (_, i) => i);

  it('shuffled is a deterministic permutation', () => {
    const a = shuffled(items, 7);
    expect(shuffled(items, 7)).toEqual(a);
    expect(shuffled(items, 8)).not.toEqual(a);
    expect([...a].sort((x, y) => x - y)).toEqual(items);
    expect(a).not.toEqual(items);
  });

  it('shuffled keeps its seeded order across versions (runs resume with the same data order)', () => {
    const ten = Array.from({ length: 10 }, (_, i) => i);
    expect(shuffled(ten, 7)).toEqual([6, 5, 8, 1, 2, 3, 4, 7, 9, 0]);
    expect(shuffled(ten, 0)).toEqual([3, 8, 6, 4, 5, 9, 7, 1, 0, 2]);
  });

  it('splitHoldout partitions deterministically', () => {
    const { train, eval: ev } = splitHoldout(items, 0.1, 3);
    expect(ev).toHaveLength(5);
    expect(train).toHaveLength(45);
    expect([...train, ...ev].sort((x, y) => x - y)).toEqual(items);
    expect(splitHoldout(items, 0.1, 3).eval).toEqual(ev);
    expect(splitHoldout([1, 2, 3], 0.01, 1).eval).toHaveLength(1);
    expect(splitHoldout(items, 0, 1).eval).toHaveLength(0);
    expect(() => splitHoldout(items, 1, 1)).toThrow(expect.objectContaining({ code: 'BAD_ARGUMENT' }));
  });

  it('collate right-pads with pad id, -100 labels and zero mask', () => {
    const b = collate([{ inputIds: [1, 5, 6], labels: [-100, 5, 6] }, { inputIds: [1, 7], labels: [1, 7] }], 2);
    expect([b.batchSize, b.seqLen]).toEqual([2, 3]);
    expect(Array.from(b.inputIds, Number)).toEqual([1, 5, 6, 1, 7, 2]);
    expect(Array.from(b.labels, Number)).toEqual([-100, 5, 6, 1, 7, -100]);
    expect(Array.from(b.attentionMask, Number)).toEqual([1, 1, 1, 1, 1, 0]);
    expect(() => collate([], 0)).toThrow(expect.objectContaining({ code: 'BAD_ARGUMENT' }));
  });

  it('batches cover every example once per epoch, reshuffled per epoch', () => {
    const exs = items.map((i) => ({ inputIds: [i, i + 1], labels: [i, i + 1] }));
    const epoch = (e: number) => [...batches(exs, 8, { seed: 1, epoch: e, padId: 0 })];
    const e0 = epoch(0);
    expect(e0.map((b) => b.batchSize)).toEqual([8, 8, 8, 8, 8, 8, 2]);
    const firsts = (bs: typeof e0) => bs.flatMap((b) => Array.from({ length: b.batchSize }, (_, r) => Number(b.inputIds[r * b.seqLen])));
    expect([...firsts(e0)].sort((x, y) => x - y)).toEqual(items);
    expect(firsts(epoch(0))).toEqual(firsts(e0));
    expect(firsts(epoch(1))).not.toEqual(firsts(e0));
  });
});
