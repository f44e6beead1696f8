import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { replayTrajectory, ZerothOrderOptimizer, type ZoConfig } from '../../src/zeroth-order/mezo.js';
import { loadTrajectory, saveTrajectory, ZO_TRAJECTORY_FORMAT, ZO_TRAJECTORY_FORMAT_V1 } from '../../src/zeroth-order/trajectory.js';
import { cloneTensors, leastSquares, randn, sameBits } from './helpers.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'zo-trajectory-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('trajectory files', () => {
  it('save/load round-trips exactly and the loaded file replays to the trained weights bit-for-bit', async () => {
    const tensors = [
      { name: 'w', data: randn(61, 1500, 0.02) },
      { name: 'v', data: randn(62, 500, 0.02) },
    ];
    const start = cloneTensors(tensors);
    const cfg: ZoConfig = { lr: 0.2, eps: 1e-3, seed: 77, sparsity: 0.8, samples: 2, weightDecay: 0.01 };
    const opt = new ZerothOrderOptimizer(tensors, cfg);
    const loss = leastSquares(tensors);
    for (let s = 0; s < 25; s++) await opt.step(loss);

    const path = join(dir, 'run.json');
    await saveTrajectory(path, cfg, opt.trajectory);
    const loaded = await loadTrajectory(path);
    expect(loaded.format).toBe(ZO_TRAJECTORY_FORMAT);
    // The generator and the thresholds mode are written out even though the config left them to the defaults.
    expect(loaded.config).toEqual({ ...cfg, generator: 'hash', thresholds: 'per-step' });
    expect(loaded.steps).toEqual(opt.trajectory);

    replayTrajectory(start, loaded.config, loaded.steps);
    for (let t = 0; t < 2; t++) expect(sameBits(start[t].data, tensors[t].data)).toBe(true);
  });

  it('reads format-1 files (before the generator field) as Philox runs, which replay bit-for-bit', async () => {
    const tensors = [{ name: 'w', data: randn(63, 1000, 0.02) }];
    const start = cloneTensors(tensors);
    // Format-1 runs had thresholds fixed at the start (the only mode then).
    const cfg: ZoConfig = { lr: 0.2, eps: 1e-3, seed: 78, sparsity: 0.8, generator: 'philox', thresholds: 'fixed' };
    const opt = new ZerothOrderOptimizer(tensors, cfg);
    const loss = leastSquares(tensors);
    for (let s = 0; s < 10; s++) await opt.step(loss);
    // What the format-1 writer produced: no generator field.
    const { generator: _generator, thresholds: _thresholds, ...oldConfig } = cfg;
    const path = join(dir, 'format1.json');
    await writeFile(path, JSON.stringify({ format: ZO_TRAJECTORY_FORMAT_V1, config: oldConfig, steps: opt.trajectory }));
    const loaded = await loadTrajectory(path);
    expect(loaded.format).toBe(ZO_TRAJECTORY_FORMAT);
    expect(loaded.config.generator).toBe('philox');
    expect(loaded.config.thresholds).toBe('fixed');
    replayTrajectory(start, loaded.config, loaded.steps);
    expect(sameBits(start[0].data, tensors[0].data)).toBe(true);
  });

  it('replaces an existing file atomically and leaves no temporary files', async () => {
    const path = join(dir, 'replace.json');
    const cfg: ZoConfig = { lr: 1e-3, eps: 1e-3, seed: 1 };
    await saveTrajectory(path, cfg, [{ step: 0, seed: 5, projectedGrad: 0.5, lr: 1e-3 }]);
    await saveTrajectory(path, cfg, [{ step: 0, seed: 6, projectedGrad: -0.25, lr: 1e-3 }]);
    expect((await loadTrajectory(path)).steps[0].seed).toBe(6);
    const names = await readdir(dir);
    expect(names.filter((n) => n.includes('replace'))).toEqual(['replace.json']);
  });

  it('refuses to save a record that could not be loaded back (NaN gradient)', async () => {
    const path = join(dir, 'nan.json');
    await expect(saveTrajectory(path, { lr: 1, eps: 1, seed: 1 }, [{ step: 0, seed: 1, projectedGrad: NaN, lr: 1 }])).rejects.toMatchObject({ code: 'BAD_ARGUMENT' });
    expect(await readdir(dir)).not.toContain('nan.json');
  });

  it('rejects missing, non-JSON, wrong-format and invalid files with clear errors', async () => {
    await expect(loadTrajectory(join(dir, 'absent.json'))).rejects.toMatchObject({ code: 'NOT_FOUND' });
    const bad = join(dir, 'bad.json');
    await writeFile(bad, '{"format": "sparsetune.zo-trajectory/1", "config": ');
    await expect(loadTrajectory(bad)).rejects.toMatchObject({ code: 'BAD_DATA' });
    const good = { format: ZO_TRAJECTORY_FORMAT, config: { lr: 1e-3, eps: 1e-3, seed: 1, generator: 'hash' }, steps: [{ step: 0, seed: 1, projectedGrad: 0.1, lr: 1e-3 }] };
    for (const broken of [
      { ...good, format: 'sparsetune.zo-trajectory/3' },
      { ...good, config: { lr: 1e-3, eps: 1e-3, seed: 1 } }, // format 2 must name its generator
      { ...good, config: { ...good.config, generator: 'mt19937' } },
      { ...good, format: ZO_TRAJECTORY_FORMAT_V1 }, // format 1 had no generator field
      { ...good, config: { ...good.config, lr: -1 } },
      { ...good, steps: [{ step: 0, seed: -1, projectedGrad: 0.1, lr: 1e-3 }] },
      { ...good, steps: [{ step: 0, seed: 1, lr: 1e-3 }] },
    ]) {
      await writeFile(bad, JSON.stringify(broken));
      await expect(loadTrajectory(bad)).rejects.toMatchObject({ code: 'BAD_DATA' });
    }
    await writeFile(bad, JSON.stringify(good));
    expect((await loadTrajectory(bad)).steps).toHaveLength(1);
    expect(JSON.parse(await readFile(bad, 'utf8')).format).toBe(ZO_TRAJECTORY_FORMAT);
  });
});
