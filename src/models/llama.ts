/** The Llama family (Llama, Mistral, Qwen2, SmolLM): RMSNorm, RoPE, GQA, SwiGLU. */
import { attention, rmsNorm, rotary, swiglu } from '../engine/nn.js';
import { add, cast, concat, constTensor, cos, gather, mul, reshape, sin, transpose, unsqueeze } from '../engine/ops/index.js';
import type { Value } from '../engine/ir.js';
import type { LlamaConfig } from '../io/config.js';
import { logitInput, type Architecture, type BuildContext, type ForwardInputs, type ForwardResult } from './arch.js';
import type { LinearSite } from './hooks.js';
import { ropeInvFreq } from './rope.js';

function sites(cfg: LlamaConfig): LinearSite[] {
  const out: LinearSite[] = [];
  const H = cfg.numHeads * cfg.headDim;
  const KV = cfg.numKvHeads * cfg.headDim;
  const E = cfg.hiddenSize;
  const I = cfg.intermediateSize;
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    const mk = (mod: string, kind: string, inF: number, outF: number, bias: boolean): LinearSite => ({
      name: `${p}.${mod}.${kind}`,
      kind,
      layer: l,
      inFeatures: inF,
      outFeatures: outF,
      weightName: `${p}.${mod}.${kind}.weight`,
      biasName: bias ? `${p}.${mod}.${kind}.bias` : undefined,
      layout: 'out_in',
    });
    out.push(
      mk('self_attn', 'q_proj', E, H, cfg.attentionBias),
      mk('self_attn', 'k_proj', E, KV, cfg.attentionBias),
      mk('self_attn', 'v_proj', E, KV, cfg.attentionBias),
      mk('self_attn', 'o_proj', H, E, false),
      mk('mlp', 'gate_proj', E, I, cfg.mlpBias),
      mk('mlp', 'up_proj', E, I, cfg.mlpBias),
      mk('mlp', 'down_proj', I, E, cfg.mlpBias),
    );
  }
  out.push({
    name: 'lm_head',
    kind: 'lm_head',
    layer: null,
    inFeatures: E,
    outFeatures: cfg.vocabSize,
    weightName: cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight',
    layout: 'out_in',
  });
  return out;
}

function paramNames(cfg: LlamaConfig): string[] {
  const names = new Set<string>(['model.embed_tokens.weight', 'model.norm.weight']);
  for (const s of sites(cfg)) {
    names.add(s.weightName);
    if (s.biasName) names.add(s.biasName);
  }
  for (let l = 0; l < cfg.numLayers; l++) {
    names.add(`model.layers.${l}.input_layernorm.weight`);
    names.add(`model.layers.${l}.post_attention_layernorm.weight`);
  }
  return [...names];
}

/** cos/sin tables [batch, 1, seq, headDim] computed in the graph from the position ids. */
function ropeTables(ctx: BuildContext, cfg: LlamaConfig, positions: Value): { cos: Value; sin: Value } {
  const inv = ropeInvFreq(cfg);
  const invV = constTensor(ctx.g, { dtype: 'f32', shape: [inv.length], data: inv }, 'rope_inv_freq');
  const angles = mul(unsqueeze(cast(positions, 'f32'), [-1]), invV); // [b, s, hd/2]
  const emb = unsqueeze(concat([angles, angles], -1), [1]); // [b, 1, s, hd]
  return { cos: cos(emb), sin: sin(emb) };
}

function forward(ctx: BuildContext, cfg: LlamaConfig, inp: ForwardInputs): ForwardResult {
  const { hooks, g } = ctx;
  const [B, S] = inp.ids.shape;
  const hd = cfg.headDim;
  const all = sites(cfg);
  const siteOf = (name: string) => all.find((s) => s.name === name)!;
  let ropeT: { cos: Value; sin: Value } | undefined;
  let h = gather(ctx.param('model.embed_tokens.weight'), inp.ids);
  if (hooks.residual) h = hooks.residual('embed', -1, h, g);
  const present: { k: Value; v: Value }[] = [];
  const heads = (x: Value, n: number) => transpose(reshape(x, [B, S, n, hd]), [0, 2, 1, 3]);
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    const x = rmsNorm(h, ctx.param(`${p}.input_layernorm.weight`), cfg.rmsNormEps);
    const qp = ctx.site(siteOf(`${p}.self_attn.q_proj`), x);
    const kp = ctx.site(siteOf(`${p}.self_attn.k_proj`), x);
    const vp = ctx.site(siteOf(`${p}.self_attn.v_proj`), x);
    let merged: Value;
    if (inp.attend) merged = inp.attend(l, qp, kp, vp, true);
    else {
      const rope = (ropeT ??= ropeTables(ctx, cfg, inp.positions));
      const q = rotary(heads(qp, cfg.numHeads), rope.cos, rope.sin);
      let k = rotary(heads(kp, cfg.numKvHeads), rope.cos, rope.sin);
      let v = heads(vp, cfg.numKvHeads);
      if (inp.past) {
        k = concat([inp.past[l].k, k], 2, 'total');
        v = concat([inp.past[l].v, v], 2, 'total');
      }
      present.push({ k, v });
      const a = attention(q, k, v, inp.mask, 1 / Math.sqrt(hd));
      merged = reshape(transpose(a, [0, 2, 1, 3]), [B, S, cfg.numHeads * hd]);
    }
    let o = ctx.site(siteOf(`${p}.self_attn.o_proj`), merged);
    if (hooks.residual) o = hooks.residual('attn', l, o, g);
    h = add(h, o);
    const x2 = rmsNorm(h, ctx.param(`${p}.post_attention_layernorm.weight`), cfg.rmsNormEps);
    const act = swiglu(ctx.site(siteOf(`${p}.mlp.gate_proj`), x2), ctx.site(siteOf(`${p}.mlp.up_proj`), x2));
    let m = ctx.site(siteOf(`${p}.mlp.down_proj`), act);
    if (hooks.mlp) m = hooks.mlp(l, h, m, g);
    if (hooks.residual) m = hooks.residual('mlp', l, m, g);
    h = add(h, m);
  }
  const hidden = rmsNorm(h, ctx.param('model.norm.weight'), cfg.rmsNormEps);
  const logits = ctx.site(siteOf('lm_head'), logitInput(hidden, inp.logitRows));
  return { logits, present, hidden };
}

/**
 * Some tied checkpoints store the shared matrix only as `lm_head.weight` (e.g.
 * tinystories-656K): it is the input embedding too, so it goes by that name here.
 */
function normalizeWeights(w: Map<string, unknown>, cfg: LlamaConfig): void {
  if (cfg.tieWordEmbeddings && !w.has(TIED_NAME) && w.has(HEAD_ON_DISK)) {
    w.set(TIED_NAME, w.get(HEAD_ON_DISK));
    w.delete(HEAD_ON_DISK);
  }
}

const TIED_NAME = 'model.embed_tokens.weight';
/** The on-disk name of a tied matrix stored as the head only (see normalizeWeights). */
export const HEAD_ON_DISK = 'lm_head.weight';

export const llama: Architecture<LlamaConfig> = {
  sites,
  paramNames,
  forward,
  normalizeWeights,
  kvShape: (cfg) => ({ layers: cfg.numLayers, kvHeads: cfg.numKvHeads, headDim: cfg.headDim, heads: cfg.numHeads }),
  ropeInvFreq: (cfg) => ropeInvFreq(cfg),
};
