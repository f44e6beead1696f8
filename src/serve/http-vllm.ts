/**
 * vLLM's names for adapter management, so clients written for `vllm serve --enable-lora` work
 * unchanged: `POST /v1/load_lora_adapter` {lora_name, lora_path[, load_inplace]} and
 * `POST /v1/unload_lora_adapter` {lora_name}. They answer 200 with vLLM's plain-text success
 * line; errors keep the server's OpenAI-shaped JSON. Paths resolve inside the adapters
 * directory as for POST /v1/adapters (sparsetune or PEFT directories).
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { parseBody } from './openai-schema.js';
import type { ServeService } from './service.js';

const loadSchema = z.object({
  lora_name: z.string().min(1).max(64),
  lora_path: z.string().min(1).max(4096),
  /** Replace an adapter already loaded under this name. */
  load_inplace: z.boolean().optional(),
});

const unloadSchema = z.object({
  lora_name: z.string().min(1).max(64),
  /** vLLM's numeric id; accepted and ignored (names identify adapters here). */
  lora_int_id: z.number().int().optional(),
});

export function registerVllmRoutes(app: FastifyInstance, svc: ServeService, log: (message: string) => void): void {
  app.post('/v1/load_lora_adapter', async (req, reply) => {
    const body = parseBody(loadSchema, req.body, 'POST /v1/load_lora_adapter');
    if (body.load_inplace && svc.registry.get(body.lora_name)) svc.registry.unload(body.lora_name);
    const entry = await svc.registry.load(body.lora_name, body.lora_path);
    log(`loaded adapter ${entry.id} from ${entry.dir} (load_lora_adapter)`);
    return reply.type('text/plain; charset=utf-8').send(`Success: LoRA adapter '${entry.id}' added successfully.`);
  });

  app.post('/v1/unload_lora_adapter', async (req, reply) => {
    const body = parseBody(unloadSchema, req.body, 'POST /v1/unload_lora_adapter');
    const entry = svc.registry.unload(body.lora_name);
    log(`unloaded adapter ${entry.id} (unload_lora_adapter)`);
    return reply.type('text/plain; charset=utf-8').send(`Success: LoRA adapter '${entry.id}' removed successfully.`);
  });
}
