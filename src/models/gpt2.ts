/** GPT-2: learned positions, LayerNorm, GELU (tanh), Conv1D weights stored [in, out]. */
import { attention, geluErf, geluTanh, layerNorm } from '../engine/nn.js';
import { add, gather, relu, reshape, split, transpose } from '../engine/ops/index.js';
import type { Value } from '../engine/ir.js';
import type { Gpt2Config } from '../io/config.js';
import { logitInput, type Architecture, type BuildContext, type ForwardInputs, type ForwardResult } from './arch.js';
import type { LinearSite } from './hooks.js';

function sites(cfg: Gpt2Config): LinearSite[] {
  const E = cfg.hiddenSize;
  const I = cfg.intermediateSize;
  const out: LinearSite[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `transformer.h.${l}`;
    const mk = (mod: string, kind: string, inF: number, outF: number): LinearSite => ({
      name: `${p}.${mod}.${kind}`,
      kind,
      layer: l,
      inFeatures: inF,
      outFeatures: outF,
      weightName: `${p}.${mod}.${kind}.weight`,
      biasName: `${p}.${mod}.${kind}.bias`,
      layout: 'in_out',
    });
    out.push(mk('attn', 'c_attn', E, 3 * E), mk('attn', 'c_proj', E, E), mk('mlp', 'c_fc', E, I), mk('mlp', 'c_proj', I, E));
  }
  out.push({ name: 'lm_head', kind: 'lm_head', layer: null, inFeatures: E, outFeatures: cfg.vocabSize, weightName: 'transformer.wte.weight', layout: 'out_in' });
  return out;
}

function paramNames(cfg: Gpt2Config): string[] {
  const names = new Set(['transformer.wte.weight', 'transformer.wpe.weight', 'transformer.ln_f.weight', 'transformer.ln_f.bias']);
  for (const s of sites(cfg)) {
    names.add(s.weightName);
    if (s.biasName) names.add(s.biasName);
  }
  for (let l = 0; l < cfg.numLayers; l++) for (const n of ['ln_1', 'ln_2']) for (const t of ['weight', 'bias']) names.add(`transformer.h.${l}.${n}.${t}`);
  return [...names];
}

function forward(ctx: BuildContext, cfg: Gpt2Config, inp: ForwardInputs): ForwardResult {
  const { hooks, g } = ctx;
  const [B, S] = inp.ids.shape;
  const E = cfg.hiddenSize;
  const H = cfg.numHeads;
  const hd = E / H;
  const all = sites(cfg);
  const siteOf = (name: string) => all.find((s) => s.name === name)!;
  const act = cfg.activation === 'relu' ? relu : cfg.activation === 'gelu' ? geluErf : geluTanh;
  const ln = (x: Value, p: string) => layerNorm(x, ctx.param(`${p}.weight`), ctx.param(`${p}.bias`), cfg.layerNormEps);
  let h = add(gather(ctx.param('transformer.wte.weight'), inp.ids), gather(ctx.param('transformer.wpe.weight'), inp.positions));
  if (hooks.residual) h = hooks.residual('embed', -1, h, g);
  const present: { k: Value; v: Value }[] = [];
  const heads = (x: Value) => transpose(reshape(x, [B, S, H, hd]), [0, 2, 1, 3]);
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `transformer.h.${l}`;
    const qkv = ctx.site(siteOf(`${p}.attn.c_attn`), ln(h, `${p}.ln_1`));
    let a: Value;
    if (inp.attend) {
      const [qp, kp, vp] = split(qkv, [E, E, E], -1);
      a = inp.attend(l, qp, kp, vp, false);
    } else {
      const [q, k0, v0] = split(qkv, [E, E, E], -1).map(heads);
      let k = k0;
      let v = v0;
      if (inp.past) {
        k = concat2(inp.past[l].k, k);
        v = concat2(inp.past[l].v, v);
      }
      present.push({ k, v });
      a = reshape(transpose(attention(q, k, v, inp.mask, 1 / Math.sqrt(hd)), [0, 2, 1, 3]), [B, S, E]);
    }
    let o = ctx.site(siteOf(`${p}.attn.c_proj`), a);
    if (hooks.residual) o = hooks.residual('attn', l, o, g);
    h = add(h, o);
    let m = ctx.site(siteOf(`${p}.mlp.c_proj`), act(ctx.site(siteOf(`${p}.mlp.c_fc`), ln(h, `${p}.ln_2`))));
    if (hooks.mlp) m = hooks.mlp(l, h, m, g);
    if (hooks.residual) m = hooks.residual('mlp', l, m, g);
    h = add(h, m);
  }
  const hidden = ln(h, 'transformer.ln_f');
  return { logits: ctx.site(siteOf('lm_head'), logitInput(hidden, inp.logitRows)), present, hidden };
}

function concat2(a: Value, b: Value): Value {
  return a.graph.add('Concat', [a, b], { axis: 2, _dim: 'total' })[0];
}

/** Accept checkpoints saved without the `transformer.` prefix and drop attention-bias buffers. */
function normalizeWeights(w: Map<string, unknown>): void {
  for (const name of [...w.keys()]) {
    if (/\.attn\.(masked_)?bias$/.test(name)) {
      w.delete(name);
      continue;
    }
    if (!name.startsWith('transformer.') && name !== 'lm_head.weight') {
      w.set(`transformer.${name}`, w.get(name));
      w.delete(name);
    }
  }
  w.delete('lm_head.weight'); // tied to wte
}

export const gpt2: Architecture<Gpt2Config> = {
  sites,
  paramNames,
  forward,
  kvShape: (cfg) => ({ layers: cfg.numLayers, kvHeads: cfg.numHeads, headDim: cfg.hiddenSize / cfg.numHeads, heads: cfg.numHeads }),
  normalizeWeights,
};
