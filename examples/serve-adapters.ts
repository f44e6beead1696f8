/**
 * Serve one base model with several adapters behind an OpenAI-compatible API.
 *
 *   node --import tsx examples/serve-adapters.ts [OUT_DIR]
 *
 * Trains two small LoRA adapters on the bundled model (one on Spanish text, one on review
 * sentiment), saves them into an adapters directory, starts the sparsetune server on a free
 * port of 127.0.0.1 and talks to it with the official `openai` client: completions from the
 * base, from each adapter and from their composition "spanish+sentiment", and a streamed
 * chat completion. Every completion is checked against the same adapters fused locally, and
 * the server hands back the base weights bit for bit when it closes.
 * SPARSETUNE_EXAMPLE_STEPS sets the optimizer steps of each adapter (default 20; CI runs it with 5).
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import {
  bundledModelPath,
  CausalLM,
  createServer,
  fingerprintWeights,
  generateText,
  loadDataset,
  LoraMethod,
  saveAdapter,
  splitHoldout,
  Trainer,
  WeightPatcher,
  type Adapter,
} from '../src/index.js';
import { exampleSteps } from './steps.js';

const steps = exampleSteps();
const adaptersDir = process.argv[2] ?? join(tmpdir(), 'sparsetune-examples', 'adapters');
const data = (file: string) => fileURLToPath(new URL(`../data/demo/${file}`, import.meta.url));

const model = await CausalLM.load(bundledModelPath());
const pristine = fingerprintWeights(model.weights);

/** Train a LoRA adapter on one data file and save it as ADAPTERS_DIR/<id> (the id the server knows it by). */
async function trainAdapter(id: string, file: string, seqLen: number): Promise<Adapter> {
  const { train, eval: held } = splitHoldout(await loadDataset(data(file), model.tokenizer!, { seqLen }), 0.1, 0);
  const lora = new LoraMethod(model, { r: 8, alpha: 16, targetModules: ['q_proj', 'v_proj', 'o_proj', 'down_proj'] });
  const r = await new Trainer(model, lora, { steps, batchSize: 8, optimizer: { lr: 3e-3 }, evalBatches: 2, seed: 0 }).train(train, held);
  const adapter = lora.export(model);
  await saveAdapter(join(adaptersDir, id), adapter);
  console.log(`adapter ${id}: held-out loss ${r.initialEval!.loss.toFixed(3)} -> ${r.finalEval!.loss.toFixed(3)} after ${steps} steps`);
  return adapter;
}
const adapters: Record<string, Adapter> = {
  spanish: await trainAdapter('spanish', 'spanish.txt', 64),
  sentiment: await trainAdapter('sentiment', 'sentiment.jsonl', 128),
};

// The server fuses the adapters a request names into the weights (and reverts them) as it goes.
const server = await createServer({ model, adaptersDir });
const baseURL = `${await server.listen(0, '127.0.0.1')}/v1`;
const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });
const prompt = 'Review: The food was great.\nSentiment:';
const answers: [string, string][] = [];
let chat = '';
try {
  console.log(`serving ${(await client.models.list()).data.map((m) => m.id).join(', ')} at ${baseURL}`);
  for (const name of ['base', 'spanish', 'sentiment', 'spanish+sentiment']) {
    const r = await client.completions.create({ model: name, prompt, max_tokens: 12, temperature: 0 });
    answers.push([name, r.choices[0].text]);
    console.log(`${name.padEnd(18)} -> ${JSON.stringify(r.choices[0].text)}`);
  }
  const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Tell me a story.' }];
  const stream = await client.chat.completions.create({ model: 'spanish', messages, max_tokens: 16, temperature: 0, stream: true });
  for await (const chunk of stream) chat += chunk.choices[0]?.delta.content ?? '';
  console.log(`streamed chat (spanish) -> ${JSON.stringify(chat)}`);
  const whole = await client.chat.completions.create({ model: 'spanish', messages, max_tokens: 16, temperature: 0 });
  if (whole.choices[0].message.content !== chat) throw new Error(`the streamed chat ${JSON.stringify(chat)} differs from the whole answer ${JSON.stringify(whole.choices[0].message.content)}`);
} finally {
  await server.close();
}
console.log('server closed');
if (fingerprintWeights(model.weights) !== pristine) throw new Error('the server did not restore the base weights');

// What the server answered is what the same adapters fused by hand generate (composition = both fused).
const patcher = new WeightPatcher(model.weights);
for (const [name, text] of answers) {
  const set = name === 'base' ? [] : name.split('+').map((id) => adapters[id]);
  for (const a of set) patcher.apply(a);
  try {
    const expected = (await generateText(model, prompt, { maxNewTokens: 12, temperature: 0 })).text;
    if (text !== expected) throw new Error(`the server answered ${JSON.stringify(text)} for ${name}; fusing the adapters locally gives ${JSON.stringify(expected)}`);
  } finally {
    patcher.revertAll();
  }
}
if (fingerprintWeights(model.weights) !== pristine) throw new Error('reverting the local fuses did not restore the base weights');
console.log('every answer equals the locally fused model; base weights restored bit for bit');
