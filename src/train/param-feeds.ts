/** Graph feeds for trainable params. */
import type { HostTensor } from '../tensor.js';
import type { TrainableParam } from './method.js';

/**
 * One f32 feed per param, keyed by its graph input name. The feeds share the params' buffers
 * (no copy), so they see later optimizer updates.
 */
export function paramFeeds(params: readonly TrainableParam[]): Record<string, HostTensor> {
  const feeds: Record<string, HostTensor> = {};
  for (const p of params) feeds[p.name] = { dtype: 'f32', shape: p.shape, data: p.data };
  return feeds;
}
