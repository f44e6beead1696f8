/** Multi-adapter serving: registry, swapper, scheduler, OpenAI-compatible HTTP server. */
export { createServer, type ServerOptions, type SparsetuneServer } from './server.js';
export { runServe, parseServeFlags, SERVE_USAGE, type ServeFlags } from './cli.js';
export { ServeService, MAX_SET_SIZE } from './service.js';
export { AdapterRegistry, AdapterEntry, ADAPTER_ID, BASE_MODEL_ID, adapterBytes, type RegistryOptions } from './registry.js';
export { Swapper, type SwapMember, type SwapReport } from './swapper.js';
export { Scheduler, type SchedulerOptions, type UnfusedServing } from './scheduler.js';
export { MAX_SCALE, ServeSet, SetMember, type RequestedAdapter } from './adapter-set.js';
export { WeightGate } from './gate.js';
export { ServerMetrics } from './metrics.js';
export { Job, type JobEvent } from './job.js';
export { Sequence, type SequenceSpec, type FinishReason } from './sequence.js';
