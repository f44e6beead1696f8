/**
 * The adapter set of a request: registered adapters, each with a per-request scale (1 by
 * default). A member at scale s means the adapter as `scaleAdapter(adapter, s)` defines it,
 * whether the server fuses it or runs it unfused. Sets are keyed by the members' load uids
 * (an adapter unloaded and loaded again is a different member) and scales.
 */
import { SparsetuneError } from '../errors.js';
import { scaleAdapter } from '../merge/scale.js';
import type { Adapter } from '../merge/types.js';
import type { SwapMember } from './swapper.js';

/** Largest |scale| a request may ask for. */
export const MAX_SCALE = 100;

/** One requested member: an adapter id and its scale. */
export interface RequestedAdapter {
  id: string;
  scale: number;
}

/** Check a requested scale (a finite number in [-MAX_SCALE, MAX_SCALE]); throws BAD_ARGUMENT naming the adapter. */
export function checkScale(id: string, scale: unknown): number {
  if (typeof scale !== 'number' || !Number.isFinite(scale) || Math.abs(scale) > MAX_SCALE) {
    throw new SparsetuneError('BAD_ARGUMENT', `adapter "${id}": scale ${JSON.stringify(scale) ?? String(scale)} must be a finite number between -${MAX_SCALE} and ${MAX_SCALE}`);
  }
  return scale;
}

/** A member of a set being served: a pinned registry entry (any SwapMember) at a scale. */
export class SetMember implements SwapMember {
  private static nextUid = 1;
  private static uids = new Map<string, number>();
  /** Scaled payloads, shared by every request for the same payload and scale (and by their prepared swap forms). */
  private static scaled = new WeakMap<Adapter, Map<number, Adapter>>();
  /** Swap identity: the entry's uid at scale 1, else one uid per (entry, scale). */
  readonly uid: number;

  constructor(readonly entry: SwapMember, readonly scale: number) {
    if (scale === 1) this.uid = entry.uid;
    else {
      const key = `${entry.uid}@${scale}`;
      let uid = SetMember.uids.get(key);
      if (uid === undefined) {
        // Far above registry uids, so the two kinds never meet.
        uid = 2 ** 40 + SetMember.nextUid++;
        SetMember.uids.set(key, uid);
      }
      this.uid = uid;
    }
  }

  get id(): string {
    return this.entry.id;
  }

  /** The unscaled payload (resident while the entry is pinned). */
  raw(): Adapter {
    return this.entry.payload();
  }

  /** The payload at this member's scale (what fusing applies). */
  payload(): Adapter {
    const raw = this.entry.payload();
    if (this.scale === 1) return raw;
    let byScale = SetMember.scaled.get(raw);
    if (!byScale) SetMember.scaled.set(raw, (byScale = new Map()));
    let a = byScale.get(this.scale);
    if (!a) byScale.set(this.scale, (a = scaleAdapter(raw, this.scale)));
    return a;
  }

  /** @internal The scaled copies of `raw`, by scale. */
  static copiesOf(raw: Adapter): ReadonlyMap<number, Adapter> | undefined {
    return SetMember.scaled.get(raw);
  }

  /** @internal */
  static dropCopies(raw: Adapter): void {
    SetMember.scaled.delete(raw);
  }

  /** "id" or "id@scale". */
  get label(): string {
    return this.scale === 1 ? this.id : `${this.id}@${this.scale}`;
  }
}

/** The scaled copies made so far of payload `raw` (one per scale other than 1 that requests asked for). */
export function scaledCopies(raw: Adapter): Adapter[] {
  return [...(SetMember.copiesOf(raw)?.values() ?? [])];
}

/** Forget the scaled copies of `raw` (its adapter is being evicted; they are made again on demand). */
export function dropScaledCopies(raw: Adapter): void {
  SetMember.dropCopies(raw);
}

/** An adapter set: members sorted by id (ids are unique within a set). */
export class ServeSet {
  readonly key: string;
  constructor(readonly members: readonly SetMember[]) {
    this.key = setKeyOf(members);
  }

  get isBase(): boolean {
    return this.members.length === 0;
  }

  /** "base", or the members' labels joined by "+". */
  get label(): string {
    return this.members.length ? this.members.map((m) => m.label).join('+') : 'base';
  }
}

/** Key of a member list: member swap uids, sorted ("" = the base). */
export function setKeyOf(members: readonly SwapMember[]): string {
  return members
    .map((m) => m.uid)
    .sort((a, b) => a - b)
    .join('+');
}
