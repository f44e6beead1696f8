import { beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cli } from './helpers.js';

const OWN_COMMANDS = ['train', 'eval', 'logits', 'generate', 'merge', 'compose', 'export'];

let tmp: string;
let goodData: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'sparsetune-cli-usage-'));
  goodData = join(tmp, 'good.jsonl');
  writeFileSync(goodData, `${JSON.stringify({ text: 'Once upon a time there was a cat.' })}\n${JSON.stringify({ text: 'The cat sat on the mat.' })}\n`);
});

describe('sparsetune --help', () => {
  it('lists every command, and each command documents its flags', async () => {
    const [top, ...helps] = await Promise.all([cli(['--help']), ...OWN_COMMANDS.map((c) => cli([c, '--help']))]);
    expect(top.code).toBe(0);
    for (const c of [...OWN_COMMANDS, 'serve', 'demo', 'report']) expect(top.stdout).toMatch(new RegExp(`^  ${c} `, 'm'));
    helps.forEach((h, k) => {
      expect(h.code, OWN_COMMANDS[k]).toBe(0);
      expect(h.stdout).toContain(`Usage: sparsetune ${OWN_COMMANDS[k]}`);
      expect(h.stdout).toContain('--help');
    });
    expect(helps[0].stdout).toMatch(/--steps N\s+optimizer steps \(default: the method's recipe\)/);
    expect(helps[3].stdout).toContain('--temperature T');
  });

  it('train --method NAME --help shows the summary and config fields with defaults from the schema', async () => {
    const r = await cli(['train', '--method', 'lora', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('Method lora: LoRA');
    expect(r.stdout).toMatch(/targetModules\s+string\[\] \| string; default \["q_proj","v_proj"\]/);
    expect(r.stdout).toMatch(/^\s+r\s+number; default 8/m);
  });

  it('no command prints the overview to stderr with exit code 2', async () => {
    const r = await cli([]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('Commands:');
  });
});

describe('usage errors exit with 2 and say what to fix', () => {
  const cases: [string, string[], RegExp][] = [
    ['unknown command', ['trian'], /unknown command 'trian'; did you mean 'train'\?/],
    ['unknown flag', ['train', '--method', 'lora', '--data', 'x', '--out', 'y', '--stpes', '3'], /unknown flag --stpes; did you mean --steps\?/],
    ['missing required flag', ['train', '--method', 'lora', '--data', 'x'], /missing --out DIR/],
    ['bad integer', ['train', '--method', 'lora', '--data', 'x', '--out', 'y', '--steps', '2.5'], /--steps must be a positive integer, got '2.5'/],
    ['bad number', ['train', '--method', 'lora', '--data', 'x', '--out', 'y', '--lr', 'fast'], /--lr must be a number > 0, got 'fast'/],
    ['unknown method', ['train', '--method', 'lorra', '--data', 'x', '--out', 'y'], /unknown method 'lorra' \(did you mean 'lora'\?\); choose one of: lora, .*mezo, sparse-mezo/],
    ['bad token ids', ['logits', '--ids', '1,x,3'], /--ids item 2 is 'x'/],
    ['stray argument', ['eval', 'data.txt'], /unexpected argument 'data.txt'/],
  ];
  it('for bad flags, commands, methods and values', async () => {
    cases.push(['seq len beyond the model context', ['train', '--method', 'lora', '--data', goodData, '--out', join(tmp, 'seq'), '--seq-len', '4096'], /--seq-len 4096 exceeds the model's max_position_embeddings \(512\)/]);
    // The processes run side by side: each is mostly start-up time.
    const results = await Promise.all(cases.map(([, args]) => cli(args)));
    results.forEach((r, k) => {
      const [name, , message] = cases[k];
      expect(r.code, name).toBe(2);
      expect(r.stderr, name).toMatch(message);
      expect(r.stderr, name).toContain('--help');
      expect(r.stdout, name).toBe('');
    });
  });
});

describe('runtime errors exit with 1, before any training step, without a stack trace', () => {
  it('reports config, target-module and data problems', async () => {
    const badSchema = join(tmp, 'bad-schema.json');
    const typo = join(tmp, 'typo.json');
    const targets = join(tmp, 'targets.json');
    const badData = join(tmp, 'bad.jsonl');
    writeFileSync(badSchema, JSON.stringify({ r: 0 }));
    writeFileSync(typo, JSON.stringify({ rank: 4 }));
    writeFileSync(targets, JSON.stringify({ targetModules: ['no_such_proj'] }));
    writeFileSync(badData, `${JSON.stringify({ text: 'fine' })}\n{"txt": 3}\n`);
    // One --out each: runs sharing an --out would (rightly) be refused by its lock.
    let outs = 0;
    const train = (extra: string[], env?: Record<string, string>) => cli(['train', '--method', 'lora', '--out', join(tmp, `o${outs++}`), '--steps', '2', ...extra], { env });
    const [schema, unknownKey, modules, data, debug] = await Promise.all([
      train(['--data', goodData, '--config', badSchema]),
      train(['--data', goodData, '--config', typo]),
      train(['--data', goodData, '--config', targets]),
      train(['--data', badData]),
      train(['--data', badData], { SPARSETUNE_DEBUG: '1' }),
    ]);
    expect(schema.code).toBe(1);
    expect(schema.stderr).toMatch(/bad-schema\.json: invalid lora config: r: .*see 'sparsetune train --method lora --help'/);
    expect(unknownKey.code).toBe(1);
    expect(unknownKey.stderr).toMatch(/unknown lora config field 'rank'; valid fields: r, alpha, targetModules/);
    expect(modules.code).toBe(1);
    expect(modules.stderr).toMatch(/target modules \["no_such_proj"\] match no layer.*q_proj/);
    expect(data.code).toBe(1);
    expect(data.stderr).toMatch(/bad\.jsonl:2: .*got keys \["txt"\]/);
    for (const r of [schema, unknownKey, modules, data]) {
      expect(r.stderr).not.toMatch(/^\s+at /m);
      expect(r.stderr).not.toMatch(/step 1\//);
    }
    expect(debug.code).toBe(1);
    expect(debug.stderr).toMatch(/^\s+at /m);
  });
});
