/**
 * The server process of the soak benchmark (bench/soak.ts starts it): `sparsetune serve`'s
 * library entry point on loopback, plus a line protocol on stdin/stdout for what HTTP does
 * not show: `stats` -> {rss, heap, sessions}, `close` -> shut down (adapters reverted) and
 * report the base fingerprint before and after. Everything else goes through HTTP.
 *
 *   node --import tsx bench/soak-server.ts --model DIR --adapters DIR
 */
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { CausalLM } from '../src/models/causal-lm.js';
import { fingerprintWeights } from '../src/merge/fingerprint.js';
import { createServer } from '../src/serve/server.js';

const { values } = parseArgs({ options: { model: { type: 'string' }, adapters: { type: 'string' }, 'max-queue': { type: 'string' } } });
const model = await CausalLM.load(values.model!);
const before = fingerprintWeights(model.weights);
const server = await createServer({ model, adaptersDir: values.adapters!, maxTokens: 64, maxQueue: Number(values['max-queue'] ?? 1024), maxActive: 256 });
const url = await server.listen(0);
const say = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
say({ url, pid: process.pid, fingerprint: before, skipped: server.skipped });

const stats = () => {
  const rt = model.runtime as unknown as { cachedSessions: number; sessionStats?: unknown };
  const m = process.memoryUsage();
  return { rss: m.rss, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers, sessions: rt.cachedSessions, sessionStats: rt.sessionStats ?? null };
};

for await (const line of createInterface({ input: process.stdin })) {
  if (line === 'stats') say(stats());
  else if (line === 'close') {
    await server.close();
    say({ closed: true, fingerprintBefore: before, fingerprintAfter: fingerprintWeights(model.weights), ...stats() });
    process.exit(0);
  }
}
