/**
 * OpenAI's legacy completions `logprobs` object, as vLLM fills it: per generated token its
 * text (`tokens`), log-probability (`token_logprobs`), the requested number of most likely
 * alternatives plus the chosen token (`top_logprobs`, text -> logprob) and where the token's
 * text starts in the completion (`text_offset`, in code points like Python's len). Values
 * below -9999 are clamped to -9999 (JSON has no -Infinity), as OpenAI does.
 */
import type { SequenceLogprob } from './sequence.js';

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[];
  text_offset: number[];
}

const clamp = (x: number): number => Math.max(x, -9999);

/** Formats one choice's entries; successive calls (streaming chunks) continue the offsets. */
export class LogprobsFormatter {
  private offset = 0;

  format(entries: readonly SequenceLogprob[]): CompletionLogprobs {
    const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    for (const e of entries) {
      out.tokens.push(e.token);
      out.token_logprobs.push(clamp(e.logprob));
      const top: Record<string, number> = {};
      for (const [text, lp] of e.top) if (!(text in top)) top[text] = clamp(lp);
      if (!(e.token in top)) top[e.token] = clamp(e.logprob);
      out.top_logprobs.push(top);
      out.text_offset.push(this.offset);
      this.offset += [...e.token].length;
    }
    return out;
  }
}
