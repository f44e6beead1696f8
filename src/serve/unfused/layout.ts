/**
 * Where a base parameter sits in the model, for unfused serving: the weight of one or more
 * Linear sites (a tied embedding is also the lm_head's weight), a site's bias, or the token
 * embedding table. Parameters outside these (norm weights, position embeddings) can only be
 * changed by fusing.
 */
import type { CausalLM } from '../../models/causal-lm.js';
import type { LinearSite } from '../../models/hooks.js';

/** The token embedding parameters the architectures use, in lookup order. */
const TOKEN_EMBEDDINGS = ['model.embed_tokens.weight', 'transformer.wte.weight'];

export interface ModelLayout {
  sites: LinearSite[];
  /** Weight parameter -> the sites that multiply by it. */
  weightSites: Map<string, LinearSite[]>;
  /** Bias parameter -> its site. */
  biasSite: Map<string, LinearSite>;
  /** The token embedding parameter ([vocab, hidden]), its width. */
  embed: { name: string; hidden: number } | null;
  /** Base parameter shapes. */
  shapes: Map<string, number[]>;
  /** Multiply-adds of one token through every site (the dense work a row costs). */
  denseMacsPerToken: number;
}

export function modelLayout(model: CausalLM): ModelLayout {
  const sites = model.sites();
  const weightSites = new Map<string, LinearSite[]>();
  const biasSite = new Map<string, LinearSite>();
  let denseMacsPerToken = 0;
  for (const s of sites) {
    weightSites.set(s.weightName, [...(weightSites.get(s.weightName) ?? []), s]);
    if (s.biasName) biasSite.set(s.biasName, s);
    denseMacsPerToken += s.inFeatures * s.outFeatures;
  }
  const name = TOKEN_EMBEDDINGS.find((n) => model.weights.has(n));
  const embed = name ? { name, hidden: model.weights.get(name)!.shape[1] } : null;
  const shapes = new Map([...model.weights].map(([n, t]) => [n, t.shape]));
  return { sites, weightSites, biasSite, embed, shapes, denseMacsPerToken };
}
