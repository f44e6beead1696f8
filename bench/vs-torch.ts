/**
 * The engine issue's table: sparsetune against PyTorch 1.13 (OpenBLAS) on the same shapes,
 * side by side in alternating rounds (each measurement its own process, so peak RSS is that
 * run's alone; the order flips every round so drift in machine load cancels). Speed ratio =
 * median over rounds of torch step time / sparsetune step time; memory ratio = median
 * sparsetune peak RSS / median torch peak RSS.
 *
 * Used by bench/methods.ts. Env: BENCH_TORCH_ROUNDS (3), BENCH_TORCH_STEPS (3).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { freemem, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { LLAMA_135M, LLAMA_38M, QWEN_05B } from '../src/models/random.js';
import { table, writeResults } from './util.js';

const root = join(import.meta.dirname, '..');
const PYTHON = '/usr/bin/python3';
const ALL_LINEARS = 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj';

export interface Work {
  label: string;
  /** methods-worker --method (and --targets). */
  method: string;
  targets?: string;
  /** torch_train_step.py --method (and --lora-targets); absent: no PyTorch counterpart. */
  torch?: 'full' | 'lora' | 'forward';
}

export const ISSUE_WORKS: Work[] = [
  { label: 'forward only', method: 'forward', torch: 'forward' },
  { label: 'full fine-tuning step', method: 'full', torch: 'full' },
  { label: 'LoRA q,v r8 step', method: 'lora', torch: 'lora' },
  { label: 'LoRA all linears r8 step', method: 'lora', targets: ALL_LINEARS, torch: 'lora' },
];

interface Run {
  stepMs: number;
  rssMb: number;
}

export interface CompareRow {
  model: string;
  work: string;
  batch: number;
  seq: number;
  ours: Run[];
  torch: Run[];
  skipped?: string;
}

const CONFIGS: Record<string, Record<string, unknown>> = { llama38m: LLAMA_38M, llama135m: LLAMA_135M, qwen05b: QWEN_05B };

function lastJson(stdout: string): Record<string, unknown> | null {
  for (const line of stdout.trim().split('\n').reverse()) {
    try {
      const v = JSON.parse(line);
      if (v && typeof v === 'object') return v as Record<string, unknown>;
    } catch {
      // a log line
    }
  }
  return null;
}

function spawnJson(cmd: string, args: string[], env: NodeJS.ProcessEnv): Run | string {
  const r = spawnSync(cmd, args, { cwd: root, env, encoding: 'utf8', timeout: 900_000, maxBuffer: 16 << 20 });
  const j = r.status === 0 ? lastJson(r.stdout) : null;
  if (!j) {
    const err = (r.stderr ?? '').split('\n').map((l) => l.trim()).filter(Boolean);
    return `${r.signal ? `killed (${r.signal})` : `exit ${r.status}`}: ${(err.find((l) => /Error|error/.test(l)) ?? err.at(-1) ?? '').slice(0, 160)}`;
  }
  return { stepMs: Number(j.step_ms), rssMb: Number(j.peak_rss_mb) };
}

export function torchAvailable(): string | null {
  const r = spawnSync(PYTHON, ['-c', 'import torch'], { encoding: 'utf8' });
  if (r.error) return `${PYTHON} not found`;
  return r.status === 0 ? null : `torch is not importable by ${PYTHON} (install python3-torch)`;
}

/**
 * Measure `works` on `model` (a random-weight config key) at batch x seq, `rounds` times
 * each, sparsetune and PyTorch alternating. `needGb`: free memory a run needs; a round
 * waits (up to 10 minutes) for it rather than pushing the shared machine into swap.
 */
export async function compare(opts: { model: string; works: Work[]; batch: number; seq: number; threads: number; rounds: number; steps: number; tmp: string; needGb?: number }): Promise<CompareRow[]> {
  const cfgFile = join(opts.tmp, `${opts.model}.json`);
  writeFileSync(cfgFile, JSON.stringify(CONFIGS[opts.model]));
  const noTorch = torchAvailable();
  const env = { ...process.env, SPARSETUNE_THREADS: String(opts.threads) };
  const torchEnv = { ...process.env, OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? 'PASSIVE' };
  const rows: CompareRow[] = [];
  for (const w of opts.works) {
    const row: CompareRow = { model: opts.model, work: w.label, batch: opts.batch, seq: opts.seq, ours: [], torch: [] };
    rows.push(row);
    const ours = () => {
      const args = ['--import', 'tsx', join(root, 'bench', 'methods-worker.ts'), '--model', opts.model, '--method', w.method, '--batch', String(opts.batch), '--seq', String(opts.seq)];
      args.push('--steps', String(opts.steps), '--warmup', '1', ...(w.targets ? ['--targets', w.targets] : []));
      return spawnJson(process.execPath, args, env);
    };
    const torch = () => {
      const args = [join(root, 'scripts', 'torch_train_step.py'), '--config', cfgFile, '--method', w.torch!, '--batch-size', String(opts.batch), '--seq-len', String(opts.seq)];
      args.push('--steps', String(opts.steps), '--warmup', '1', '--lr', '1e-4', '--threads', String(opts.threads), ...(w.targets ? ['--lora-targets', w.targets] : []));
      return spawnJson(PYTHON, args, torchEnv);
    };
    for (let r = 0; r < opts.rounds; r++) {
      const order = r % 2 === 0 ? (['ours', 'torch'] as const) : (['torch', 'ours'] as const);
      for (const who of order) {
        if (who === 'torch' && (!w.torch || noTorch)) continue;
        await waitForMemory(opts.needGb ?? 0);
        const res = who === 'ours' ? ours() : torch();
        if (typeof res === 'string') {
          row.skipped = `${who === 'ours' ? 'sparsetune' : 'torch'} ${res}`;
          continue;
        }
        row[who].push(res);
        console.error(`[vs-torch] ${opts.model} ${w.label} round ${r + 1}: ${who} ${res.stepMs.toFixed(0)} ms, ${res.rssMb.toFixed(0)} MB`);
      }
    }
    if (noTorch && w.torch) row.skipped ??= `PyTorch skipped: ${noTorch}`;
  }
  return rows;
}

async function waitForMemory(needGb: number): Promise<void> {
  for (let k = 0; k < 20 && freemem() / 2 ** 30 < needGb; k++) {
    console.error(`[vs-torch] waiting: ${(freemem() / 2 ** 30).toFixed(1)} GiB free, need ${needGb}`);
    await new Promise((r) => setTimeout(r, 30_000));
  }
}

const median = (xs: number[]) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] : Number.NaN);

/** Markdown table of compare() rows. */
export function compareTable(rows: CompareRow[]): string {
  const f = (v: number, d = 0) => (Number.isFinite(v) ? v.toFixed(d) : '-');
  return table(
    ['model', 'work', 'batch x seq', 'sparsetune tok/s', 'PyTorch tok/s', 'speed (sparsetune / PyTorch)', 'sparsetune peak RSS MB', 'PyTorch peak RSS MB', 'memory (sparsetune / PyTorch)', 'rounds', 'note'],
    rows.map((r) => {
      const tokens = r.batch * r.seq;
      const oursMs = median(r.ours.map((x) => x.stepMs));
      const torchMs = median(r.torch.map((x) => x.stepMs));
      const n = Math.min(r.ours.length, r.torch.length);
      const perRound = Array.from({ length: n }, (_, i) => r.torch[i].stepMs / r.ours[i].stepMs);
      const oursRss = median(r.ours.map((x) => x.rssMb));
      const torchRss = median(r.torch.map((x) => x.rssMb));
      return [
        r.model,
        r.work,
        `${r.batch}x${r.seq}`,
        f((tokens * 1000) / oursMs),
        f((tokens * 1000) / torchMs),
        n ? `${median(perRound).toFixed(2)}x` : '-',
        f(oursRss),
        f(torchRss),
        Number.isFinite(torchRss) ? `${(oursRss / torchRss).toFixed(2)}x` : '-',
        String(Math.max(r.ours.length, r.torch.length)),
        r.skipped ?? '',
      ];
    }),
  );
}

const SCALE_WORKS: Work[] = [
  { label: 'LoRA q,v r8 step', method: 'lora', torch: 'lora' },
  { label: 'S2FT step', method: 's2ft' },
  { label: 'full fine-tuning step', method: 'full', torch: 'full' },
];
/** The issue's scale rows (SmolLM-135M and Qwen2.5-0.5B geometries, random weights): one round each, one run at a time, each waiting for the memory it needs. */
export const SCALE_CASES = [
  { model: 'llama135m', works: SCALE_WORKS, batch: 4, seq: 256, rounds: 1, steps: 2, needGb: 6 },
  { model: 'qwen05b', works: SCALE_WORKS, batch: 2, seq: 256, rounds: 1, steps: 2, needGb: 13 },
] as const;

/**
 * Run directly for the issue's rows alone (no per-method rows), into bench/results/vs-torch.md:
 *   SPARSETUNE_THREADS=2 node --import tsx bench/vs-torch.ts
 * or, with VS_TORCH_SCALE=1, for the scale rows alone (135M and 0.5B geometries; minutes, ~13 GB
 * free for 0.5B) into bench/results/vs-torch-scale.md, written again after each model.
 */
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const threads = Number(process.env.SPARSETUNE_THREADS ?? 2);
  const tmp = mkdtempSync(join(tmpdir(), 'bench-vs-torch-'));
  try {
    if (process.env.VS_TORCH_SCALE === '1') {
      const rows: CompareRow[] = [];
      for (const scale of SCALE_CASES) {
        rows.push(...(await compare({ ...scale, threads, tmp })));
        const md = [
          `## sparsetune vs PyTorch 1.13 (OpenBLAS): scale rows (threads=${threads})`,
          '',
          'SmolLM-135M geometry (batch 4x256) and Qwen2.5-0.5B geometry (batch 2x256), random weights, AdamW, one round of 2 steps after warm-up; each measurement its own process. Command: `VS_TORCH_SCALE=1 SPARSETUNE_THREADS=2 node --import tsx bench/vs-torch.ts`.',
          '',
          compareTable(rows),
        ].join('\n');
        writeResults('vs-torch-scale', { threads, rows }, md);
      }
      rmSync(tmp, { recursive: true, force: true });
      process.exit(0);
    }
    const rows = await compare({
      model: 'llama38m',
      works: ISSUE_WORKS,
      batch: 4,
      seq: 256,
      threads,
      rounds: Number(process.env.BENCH_TORCH_ROUNDS ?? 3),
      steps: Number(process.env.BENCH_TORCH_STEPS ?? 3),
      tmp,
      needGb: 5,
    });
    const md = [
      `## sparsetune vs PyTorch 1.13 (OpenBLAS): the engine issue's shapes (threads=${threads})`,
      '',
      '38.7M Llama (hidden 384, 8 layers, 6/6 heads, FFN 1024, vocab 32000, untied), random weights, batch 4x256, AdamW. ' +
        'Each measurement is its own process (peak RSS is that run alone); the order flips every round. Speed = median over rounds of PyTorch step time / sparsetune step time.',
      '',
      compareTable(rows),
    ].join('\n');
    writeResults('vs-torch', { threads, rows }, md);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
