/**
 * PEFT LoRA directories through the CLI: `--adapter PEFT_DIR` on logits / generate / merge /
 * compose (fixtures from scripts/make_peft_fixtures.py, PyTorch reference logits), and
 * `train --format peft` with a PEFT-style config.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors } from '../../src/io/safetensors.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { loadAdapter } from '../../src/merge/adapter.js';
import { importPeft } from '../../src/merge/peft.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { cli, json, ROOT, SHARED_DATA, worst } from './helpers.js';

const FIX = join(ROOT, 'test', 'fixtures', 'peft');
const refs = JSON.parse(readFileSync(join(FIX, 'reference.json'), 'utf8'));
let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'sparsetune-cli-peft-'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));


describe('--adapter with a PEFT directory', () => {
  it('logits and generate match PEFT\'s forward (PyTorch reference)', async () => {
    const ref = refs['stories260K-lora'];
    const [logits, gen] = await Promise.all([
      cli(['logits', '--model', 'models/stories260K', '--adapter', join(FIX, 'stories260K-lora'), '--ids', ref.input_ids[0].join(',')]),
      cli(['generate', '--model', 'models/stories260K', '--adapter', join(FIX, 'stories260K-lora'), '--prompt', 'Once upon a time', '--max-tokens', '20']),
    ]);
    expect(worst(json<{ logits: number[][] }>(logits).logits, ref.logits[0])).toBeLessThan(1e-4);
    expect(logits.stderr).toMatch(/stories260K-lora: peft-lora \(lowrank\), fused/);
    expect(gen.code, gen.stderr).toBe(0);
    const tok = await Tokenizer.fromDir(join(ROOT, 'models', 'stories260K'));
    expect(tok.encode('Once upon a time')).toEqual(ref.greedy.prompt_ids);
    expect(gen.stdout.trim()).toBe(tok.decode(ref.greedy.generated_ids).trim());
    const base = JSON.parse(readFileSync(join(ROOT, 'test', 'fixtures', 'stories260K-reference.json'), 'utf8'));
    expect(ref.greedy.generated_ids).not.toEqual(base.greedy.generated_ids); // the adapter shows in the text
  });

  it('merge and compose read PEFT saved modules against the base', async () => {
    const ref = refs['llama-saved'];
    const model = join(ROOT, 'test', 'fixtures', 'models', 'llama-gqa');
    const merged = join(tmp, 'merged');
    const composed = join(tmp, 'composed');
    const [m, c] = await Promise.all([
      cli(['merge', '--model', model, '--adapter', join(FIX, 'llama-saved'), '--out', merged]),
      cli(['compose', '--model', model, '--adapter', join(FIX, 'llama-saved'), '--out', composed]),
    ]);
    expect(m.code, m.stderr).toBe(0);
    expect(c.code, c.stderr).toBe(0);
    const lm = await CausalLM.load(merged);
    const out = await lm.logits(ref.input_ids);
    const V = out.shape[2];
    const rows = ref.input_ids.flatMap((r: number[], b: number) => r.map((_, t) => Array.from(out.data.subarray((b * r.length + t) * V, (b * r.length + t + 1) * V))));
    expect(worst(rows, ref.logits.flat())).toBeLessThan(1e-4);
    // The composition is a sparsetune adapter (no base needed to read it), e.g. for the server.
    expect(existsSync(join(composed, 'adapter.json'))).toBe(true);
  });
});

describe('compose --weights', () => {
  it('scales each input by its weight, and checks the weight list', async () => {
    const out = join(tmp, 'half');
    const [ok, bad] = await Promise.all([
      cli(['compose', '--adapter', join(FIX, 'stories260K-lora'), '--weights', '0.5', '--out', out]),
      cli(['compose', '--adapter', join(FIX, 'stories260K-lora'), '--weights', '1,x', '--out', join(tmp, 'bad')]),
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/with weights 0\.5/);
    const [half, full] = [await loadAdapter(out), await loadAdapter(join(FIX, 'stories260K-lora'))];
    expect(half.lowrank.size).toBe(full.lowrank.size);
    for (const [k, p] of full.lowrank) expect(half.lowrank.get(k)!.scale).toBe(p.scale * 0.5);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--weights item 2 is 'x'/);
  });
});

describe('train --format peft', () => {
  it('takes a PEFT-style config, prints PEFT\'s trainable-parameter line, and writes a PEFT directory', async () => {
    const data = join(tmp, 'train.txt');
    writeFileSync(data, readFileSync(join(SHARED_DATA, 'ud-pud', 'pud_es.txt'), 'utf8').split('\n').slice(0, 24).join('\n'));
    const config = join(tmp, 'peft.json');
    writeFileSync(config, JSON.stringify({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, lora_alpha: 8, lora_dropout: 0, target_modules: ['q_proj', 'v_proj'], layers_to_transform: [0, 1], modules_to_save: ['model.norm'], bias: 'none' }));
    const out = join(tmp, 'peft-out');
    const r = await cli(['train', '--method', 'lora', '--format', 'peft', '--config', config, '--data', data, '--out', out, '--steps', '3', '--lr', '1e-2', '--batch-size', '4', '--seq-len', '24', '--holdout', '0', '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    // 2 layers x (q: 4 x 64 + 64 x 4, v: 4 x 64 + 32 x 4 with 4 KV heads) + model.norm (64), over 260,032 weights.
    const trainable = 2 * (512 + 384) + 64;
    expect(r.stderr).toContain(`trainable params: ${trainable.toLocaleString('en-US')} || all params: ${(260032 + trainable).toLocaleString('en-US')} || trainable%: ${((100 * trainable) / (260032 + trainable)).toFixed(4)}`);
    expect(r.stdout).toMatch(/saved .*adapter_config\.json and adapter_model\.safetensors \(lora, PEFT LoRA\)/);
    expect(existsSync(join(out, 'adapter.json'))).toBe(false);
    const cfg = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 8, modules_to_save: ['model.norm'] });
    expect(cfg.target_modules).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.v_proj']);
    const { tensors, metadata } = await readSafetensors(join(out, 'adapter_model.safetensors'));
    expect(metadata).toEqual({ format: 'pt' });
    expect([...tensors.keys()]).toContain('base_model.model.model.norm.weight');
    expect(tensors.get('base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight')!.shape).toEqual([32, 4]);
    const base = await CausalLM.load(join(ROOT, 'models', 'stories260K'));
    const adapter = await importPeft(out, { base: base.weights });
    expect(adapter.additive.has('model.norm.weight')).toBe(true);
    // And the directory goes straight back into the CLI.
    const again = await cli(['logits', '--adapter', out, '--ids', '1,403,407']);
    expect(again.code, again.stderr).toBe(0);
  });

  it('refuses --format peft for methods that are not low-rank', async () => {
    const r = await cli(['train', '--method', 's2ft', '--format', 'peft', '--data', 'x', '--out', join(tmp, 'nope')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--format peft .* \(lora, gs-lora\)/);
  });
});
