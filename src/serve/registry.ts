/**
 * The adapter registry: which adapters the server knows (id = directory name; sparsetune or
 * Hugging Face PEFT LoRA directories), which of
 * them are resident in memory, and who is using them. Adapters are validated against the
 * base (parameter names, shapes, fingerprint) when loaded. One memory budget covers
 * everything the server keeps per adapter: its payload plus what holders derived from it
 * (the swapper's prepared forms, the unfused tables, scaled copies). Past the budget the
 * least recently used adapters that no request and no holder is using are evicted; an
 * evicted adapter stays registered and is read from disk again when a request asks for it.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { SparsetuneError } from '../errors.js';
import { adapterManifest, loadAdapter } from '../merge/adapter.js';
import { PEFT_WEIGHTS } from '../merge/peft.js';
import { checkFingerprint } from '../merge/fingerprint.js';
import type { Adapter, AdapterMeta } from '../merge/types.js';
import type { SwapMember } from './swapper.js';

/** Adapter ids: a directory-name-like token; "+" separates ids in a composed model name. */
export const ADAPTER_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** Model names that mean "no adapter". */
export const BASE_MODEL_ID = 'base';

export interface RegistryOptions {
  /** The adapters directory; runtime loads may only read below it. */
  dir: string;
  /** Base parameter shapes (every adapter target is checked against them). */
  shapes: Map<string, number[]>;
  /** Fingerprint of the pristine base weights. */
  fingerprint: string;
  /**
   * Memory budget in bytes for resident adapters: payloads plus what holders keep for them
   * (least recently used unused adapters are evicted past it).
   */
  memoryBudgetBytes: number;
  log?: (message: string) => void;
}

/**
 * Something that keeps memory derived from resident adapters (prepared swap forms, unfused
 * tables, scaled copies). The registry counts its bytes in the memory budget, lets it act
 * when an adapter becomes resident, never evicts an adapter it is using, and tells it to
 * free what it keeps for an adapter that is evicted or unloaded.
 */
export interface AdapterHolder {
  /** Bytes kept for `entry` now. */
  bytes(entry: AdapterEntry): number;
  /** True while `entry` must stay resident for this holder. */
  busy?(entry: AdapterEntry): boolean;
  /** `entry` was just loaded or read back from disk (its payload is resident). */
  resident?(entry: AdapterEntry): void;
  /** Free what is kept for `entry` (called before its payload is dropped). */
  drop(entry: AdapterEntry): void;
}

/** One registered adapter. */
export class AdapterEntry implements SwapMember {
  private static nextUid = 1;
  private static clock = 0;
  readonly uid = AdapterEntry.nextUid++;
  /** Requests holding this adapter now (a pinned adapter is never evicted). */
  pins = 0;
  /** Requests served with this adapter since it was loaded. */
  requests = 0;
  /** Logical time of the last use (a counter, so ties never make eviction order arbitrary). */
  lastUsed = AdapterEntry.clock++;
  /** Set by unload: no new request gets it; the payload goes once the last holder lets go. */
  unloaded = false;
  reloading: Promise<void> | null = null;

  constructor(
    readonly id: string,
    readonly dir: string,
    readonly meta: AdapterMeta,
    readonly bytes: number,
    /** sha256 of adapter.json at load, so a reload notices a different adapter on disk. */
    readonly jsonHash: string,
    public adapter: Adapter | null,
  ) {}

  /** Mark as just used (for LRU eviction). */
  touch(): void {
    this.lastUsed = AdapterEntry.clock++;
  }

  get resident(): boolean {
    return this.adapter !== null;
  }

  payload(): Adapter {
    if (!this.adapter) throw new SparsetuneError('RUNTIME', `adapter "${this.id}" is not resident; acquire it from the registry before use`);
    return this.adapter;
  }
}

/** Bytes held by an adapter's payload arrays. */
export function adapterBytes(a: Adapter): number {
  let n = 0;
  for (const d of a.additive.values()) n += d.indices.byteLength + d.values.byteLength;
  for (const d of a.structured.values()) n += d.values.byteLength + (d.rows?.byteLength ?? 0) + (d.cols?.byteLength ?? 0);
  for (const m of a.masks.values()) n += m.bits.byteLength;
  for (const p of a.lowrank.values()) n += p.A.data.byteLength + p.B.data.byteLength + (p.biasDelta?.byteLength ?? 0);
  for (const t of a.extra?.values() ?? []) n += t.data.byteLength;
  return n;
}

export class AdapterRegistry {
  private readonly entries = new Map<string, AdapterEntry>();
  private readonly loading = new Set<string>();
  /** Ids whose adapter was refused as unservable (pruned, unfused-only), with the reason. */
  private readonly refused = new Map<string, string>();
  private readonly log: (message: string) => void;
  private readonly holders: AdapterHolder[] = [];

  private constructor(private readonly opts: RegistryOptions) {
    this.log = opts.log ?? (() => {});
  }

  /**
   * Open the adapters directory and load every subdirectory holding adapter.json. A bad
   * adapter is skipped (reported in `skipped`) so one broken directory cannot stop the server.
   */
  static async open(opts: RegistryOptions): Promise<{ registry: AdapterRegistry; skipped: { id: string; error: string }[] }> {
    const root = await fsp.realpath(opts.dir).catch(() => {
      throw new SparsetuneError('NOT_FOUND', `adapters directory ${opts.dir} does not exist; create it or pass --adapters DIR`);
    });
    const registry = new AdapterRegistry({ ...opts, dir: root });
    const skipped: { id: string; error: string }[] = [];
    const names = (await fsp.readdir(root, { withFileTypes: true })).filter((d) => d.isDirectory() || d.isSymbolicLink()).map((d) => d.name).sort();
    for (const name of names) {
      // sparsetune (adapter.json) and Hugging Face PEFT (adapter_config.json) directories.
      if (!(await adapterManifest(path.join(root, name)))) continue;
      try {
        await registry.load(name);
      } catch (err) {
        skipped.push({ id: name, error: (err as Error).message });
        registry.log(`skipping adapter ${name}: ${(err as Error).message}`);
      }
    }
    return { registry, skipped };
  }

  /** The adapters directory (real path). */
  get dir(): string {
    return this.opts.dir;
  }

  /** Registered adapters, sorted by id. */
  list(): AdapterEntry[] {
    return [...this.entries.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  get(id: string): AdapterEntry | undefined {
    return this.entries.get(id);
  }

  /** Why the adapter named `id` was refused when the server tried to load it, if it was. */
  refusedReason(id: string): string | undefined {
    return this.refused.get(id);
  }

  /**
   * Count `holder`'s memory in the budget from now on; it is told about adapters already
   * resident (`resident`) and about every later load and reload.
   */
  addHolder(holder: AdapterHolder): void {
    this.holders.push(holder);
    // Most recently used first, checking the budget after each, so what a holder adds evicts
    // the oldest adapters before they are worked on.
    for (const e of [...this.entries.values()].sort((a, b) => b.lastUsed - a.lastUsed)) {
      if (!e.resident) continue;
      this.notifyResident(e, [holder]);
      this.enforceBudget(e);
    }
  }

  /** Bytes of all resident payloads (what was read from disk). */
  get payloadBytes(): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.resident) n += e.bytes;
    return n;
  }

  /** Bytes of resident adapters as the budget counts them: payloads plus what holders keep. */
  get residentBytes(): number {
    let n = 0;
    for (const e of this.entries.values()) n += this.bytesOf(e);
    return n;
  }

  /** Bytes the budget counts for one adapter. */
  bytesOf(e: AdapterEntry): number {
    let n = e.resident ? e.bytes : 0;
    for (const h of this.holders) n += h.bytes(e);
    return n;
  }

  /**
   * Load and register adapter `id` from `where` (relative to the adapters directory, or
   * absolute; default: the directory named `id`). Paths that resolve outside the adapters
   * directory, symlinks included, are refused (FORBIDDEN).
   */
  async load(id: string, where?: string): Promise<AdapterEntry> {
    if (!ADAPTER_ID.test(id) || id === BASE_MODEL_ID) {
      throw new SparsetuneError('BAD_ARGUMENT', `adapter id "${id}" is invalid: use 1-64 letters, digits, ".", "_" or "-" (not "${BASE_MODEL_ID}", no "+")`);
    }
    if (this.entries.has(id) || this.loading.has(id)) {
      throw new SparsetuneError('CONFLICT', `adapter "${id}" is already loaded; unload it first (DELETE /v1/adapters/${id}) or pick another id`);
    }
    this.loading.add(id);
    try {
      const dir = await this.resolveInside(where ?? id);
      let read;
      try {
        read = await this.readAdapter(id, dir);
      } catch (err) {
        if (err instanceof SparsetuneError && err.code === 'BAD_ADAPTER') this.refused.set(id, err.message);
        throw err;
      }
      const { adapter, jsonHash } = read;
      this.refused.delete(id);
      const entry = new AdapterEntry(id, dir, adapter.meta, adapterBytes(adapter), jsonHash, adapter);
      this.entries.set(id, entry);
      this.becameResident(entry);
      this.enforceBudget(entry);
      return entry;
    } finally {
      this.loading.delete(id);
    }
  }

  /** Unregister `id`. Requests already holding it finish with it; new requests get NOT_FOUND. */
  unload(id: string): AdapterEntry {
    const entry = this.entries.get(id);
    if (!entry) throw new SparsetuneError('NOT_FOUND', `adapter "${id}" is not loaded (GET /v1/adapters lists the loaded ones)`);
    this.entries.delete(id);
    entry.unloaded = true;
    if (entry.pins === 0) this.dropPayload(entry);
    return entry;
  }

  /**
   * Pin the adapters `ids` for one request: each must be registered; evicted ones are read
   * from disk again. Pair every successful call with `release`.
   */
  async acquire(ids: readonly string[]): Promise<AdapterEntry[]> {
    const found = ids.map((id) => {
      const e = this.entries.get(id);
      if (!e) throw new SparsetuneError('NOT_FOUND', `adapter "${id}" is not loaded; load it with POST /v1/adapters or check GET /v1/models`);
      return e;
    });
    for (const e of found) {
      e.pins++;
      e.requests++;
      e.touch();
    }
    try {
      for (const e of found) await this.ensureResident(e);
    } catch (err) {
      this.release(found);
      throw err;
    }
    return found;
  }

  /** Unpin adapters taken with `acquire`. */
  release(entries: readonly AdapterEntry[]): void {
    for (const e of entries) {
      e.pins--;
      e.touch();
      if (e.pins === 0 && e.unloaded) this.dropPayload(e);
    }
    this.enforceBudget();
  }

  private async ensureResident(e: AdapterEntry): Promise<void> {
    while (!e.resident) {
      if (!e.reloading) {
        e.reloading = (async () => {
          try {
            const { adapter, jsonHash } = await this.readAdapter(e.id, e.dir);
            if (jsonHash !== e.jsonHash) {
              throw new SparsetuneError('CONFLICT', `adapter "${e.id}" changed on disk since it was loaded; unload and load it again to serve the new version`);
            }
            e.adapter = adapter;
            this.log(`reloaded adapter ${e.id} from disk`);
            this.becameResident(e);
          } finally {
            e.reloading = null;
          }
        })();
      }
      await e.reloading;
    }
    this.enforceBudget(e);
  }

  private async readAdapter(id: string, dir: string): Promise<{ adapter: Adapter; jsonHash: string }> {
    const adapter = await loadAdapter(dir, { shapes: this.opts.shapes });
    if (adapter.pruned) {
      throw new SparsetuneError('BAD_ADAPTER', `adapter "${id}" is a pruned (structural, PAT) adapter: it removes channels, so it defines a smaller base model rather than a change to this one and cannot be served beside other adapters; export the pruned model with \`sparsetune merge\` and serve that`);
    }
    const fusable = adapter.additive.size + adapter.structured.size + adapter.masks.size + adapter.lowrank.size;
    if (fusable === 0 && (adapter.extra?.size ?? 0) > 0) {
      // E.g. MoSA: a parallel branch that cannot be folded into existing weights. Fusing it
      // would silently serve the base model, so refuse it instead.
      throw new SparsetuneError('BAD_ADAPTER', `adapter "${id}" (${adapter.meta.method}) is a separate branch beside the model (no weight delta), which this server cannot run: it serves weight deltas, fused or unfused; use it with \`sparsetune generate --adapter\` or the library API`);
    }
    checkFingerprint(adapter, this.opts.fingerprint);
    const manifest = await adapterManifest(dir);
    if (!manifest) throw new SparsetuneError('NOT_FOUND', `adapter "${id}" vanished from ${dir}`);
    const h = createHash('sha256').update(await fsp.readFile(manifest.file));
    // adapter.json holds the checksum of its tensors; PEFT's config does not, so hash the tensors too.
    if (manifest.layout === 'peft') h.update(await fsp.readFile(path.join(dir, PEFT_WEIGHTS)));
    const jsonHash = h.digest('hex');
    return { adapter, jsonHash };
  }

  /** Resolve `where` below the adapters directory, following symlinks; refuse escapes. */
  private async resolveInside(where: string): Promise<string> {
    const root = this.opts.dir;
    const inside = (p: string) => p === root || p.startsWith(root + path.sep);
    const lexical = path.resolve(root, where);
    if (!inside(lexical)) throw new SparsetuneError('FORBIDDEN', `adapter path "${where}" is outside the adapters directory ${root}; copy the adapter into it first`);
    let real: string;
    try {
      real = await fsp.realpath(lexical);
    } catch {
      throw new SparsetuneError('NOT_FOUND', `adapter path "${where}" does not exist in the adapters directory ${root}`);
    }
    if (!inside(real)) throw new SparsetuneError('FORBIDDEN', `adapter path "${where}" links outside the adapters directory ${root}; copy the adapter into it first`);
    if (real === root) throw new SparsetuneError('BAD_ARGUMENT', `adapter path "${where}" is the adapters directory itself; name a subdirectory`);
    return real;
  }

  private becameResident(e: AdapterEntry): void {
    this.notifyResident(e, this.holders);
  }

  private notifyResident(e: AdapterEntry, holders: readonly AdapterHolder[]): void {
    for (const h of holders) {
      try {
        h.resident?.(e);
      } catch (err) {
        // A holder's extra work (e.g. preparing fast swaps) is an optimisation: serving goes on without it.
        this.log(`adapter ${e.id}: ${(err as Error).message}`);
      }
    }
  }

  /** Drop a payload and everything holders keep for it. */
  private dropPayload(e: AdapterEntry): void {
    for (const h of this.holders) h.drop(e);
    e.adapter = null;
  }

  /**
   * Re-check the budget (holders call this after their memory grew). Evicts least recently
   * used adapters that no request pins and no holder is using until everything fits.
   */
  enforceBudget(keep?: AdapterEntry): void {
    let over = this.residentBytes - this.opts.memoryBudgetBytes;
    if (over <= 0) return;
    const victims = [...this.entries.values()]
      .filter((e) => e.resident && e.pins === 0 && e !== keep && !this.holders.some((h) => h.busy?.(e)))
      .sort((a, b) => a.lastUsed - b.lastUsed);
    for (const v of victims) {
      if (over <= 0) break;
      const bytes = this.bytesOf(v);
      this.dropPayload(v);
      over -= bytes - this.bytesOf(v);
      this.log(`evicted adapter ${v.id} from memory (${bytes} bytes; budget ${this.opts.memoryBudgetBytes})`);
    }
  }
}
