/**
 * Log-probabilities of the model's next-token distribution (the raw logits, before
 * temperature, top-k/p or penalties: what OpenAI's and vLLM's `logprobs` report).
 */

/** One token and its log-probability. */
export interface TokenLogprob {
  id: number;
  logprob: number;
}

/**
 * log softmax(logits)[id], and the `n` most likely tokens with theirs (highest first, ties to
 * the lower id), computed in float64.
 */
export function tokenLogprobs(logits: Float32Array, id: number, n: number): { logprob: number; top: TokenLogprob[] } {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const logZ = max + Math.log(sum);
  const top: TokenLogprob[] = [];
  if (n > 0) {
    // Keep the n best seen so far, sorted; a linear scan (n is small).
    const ids: number[] = [];
    for (let i = 0; i < logits.length; i++) {
      const v = logits[i];
      if (ids.length === n && v <= logits[ids[n - 1]]) continue;
      let at = ids.length;
      while (at > 0 && logits[ids[at - 1]] < v) at--;
      ids.splice(at, 0, i);
      if (ids.length > n) ids.pop();
    }
    for (const i of ids) top.push({ id: i, logprob: logits[i] - logZ });
  }
  return { logprob: logits[id] - logZ, top };
}
