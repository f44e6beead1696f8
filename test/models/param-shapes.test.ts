import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseModelConfig } from '../../src/io/config.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { readSafetensorsHeader } from '../../src/io/safetensors.js';
import { expectedParamShapes } from '../../src/models/param-shapes.js';
import { architectureOf } from '../../src/models/registry.js';

const FIXTURES = path.join(import.meta.dirname, '..', 'fixtures', 'models');
const DIRS = [...readdirSync(FIXTURES).map((d) => path.join(FIXTURES, d)), bundledModelPath()];

describe('expectedParamShapes', () => {
  for (const dir of DIRS) {
    it(`${path.basename(dir)}: names = the architecture's paramNames, linear shapes = its sites, and = the checkpoint`, async () => {
      const cfg = parseModelConfig(JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')));
      const arch = architectureOf(cfg);
      const shapes = expectedParamShapes(cfg);
      expect([...shapes.keys()].sort()).toEqual([...arch.paramNames(cfg)].sort());
      for (const s of arch.sites(cfg)) {
        expect(shapes.get(s.weightName), s.name).toEqual(s.layout === 'out_in' ? [s.outFeatures, s.inFeatures] : [s.inFeatures, s.outFeatures]);
        if (s.biasName) expect(shapes.get(s.biasName)).toEqual([s.outFeatures]);
      }
      // The HF checkpoint itself (written by transformers) agrees, tensor by tensor.
      const file = new Map((await readSafetensorsHeader(path.join(dir, 'model.safetensors'))).entries.map((e) => [e.name.replace(/^(?!transformer\.|model\.|lm_head)/, 'transformer.'), e.shape]));
      for (const [name, shape] of shapes) expect(file.get(name), name).toEqual(shape);
    });
  }
});
