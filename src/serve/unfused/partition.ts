/**
 * Split a graph into segments at marked values, so that JavaScript can change those values
 * between segment runs (unfused adapter contributions are added to a site's output there).
 *
 * A *cut* replaces value y by y' = Identity(y): everything that reads y' runs in a later
 * segment than the one computing y, and the runner feeds y' from the (edited) y. A *tap*
 * asks for a value as an output of the segment that computes it (a site's input, which the
 * JavaScript kernels read). Stages: graph inputs and constants, and nodes that read only
 * those, are *free* (recomputed in every segment that needs them, e.g. position tables);
 * a node's stage is the largest stage among its non-free inputs, and a cut adds one. Every
 * value a later segment reads is an output of the segment that computes it.
 */
import { SparsetuneError } from '../../errors.js';
import { Graph, type Node, type Value } from '../../engine/ir.js';

/** Marks recorded while building a graph. */
export class CutMarks {
  /** Cut name -> { before: y, after: y' }. */
  readonly cuts = new Map<string, { before: Value; after: Value }>();
  /** Tap name -> value. */
  readonly taps = new Map<string, Value>();
  private readonly cutNodes = new Set<Node>();
  private readonly aliases = new Map<string, string>();

  /** Mark `y` as a cut named `name`; use the returned value in place of `y`. */
  cut(y: Value, name: string): Value {
    if (this.cuts.has(name)) throw new SparsetuneError('BAD_GRAPH', `cut "${name}" is marked twice`);
    const [after] = y.graph.add('Identity', [y]);
    this.cutNodes.add(after.producer!);
    this.cuts.set(name, { before: y, after });
    return after;
  }

  /**
   * Ask for `x` as an output of the segment that computes it, under `name`. Tapping a value
   * again under another name makes that name an alias (one output per value).
   */
  tap(x: Value, name: string): void {
    if (this.taps.has(name) || this.aliases.has(name)) throw new SparsetuneError('BAD_GRAPH', `tap "${name}" is marked twice`);
    const first = [...this.taps].find(([, v]) => v === x);
    if (first) this.aliases.set(name, first[0]);
    else this.taps.set(name, x);
  }

  /** The tap name that holds tap `name`'s value (itself unless it is an alias). */
  tapOf(name: string): string {
    return this.aliases.get(name) ?? name;
  }

  isCut(n: Node): boolean {
    return this.cutNodes.has(n);
  }
}

/** One segment: its graph, and what it reads and yields in terms of the whole graph. */
export interface Segment {
  graph: Graph;
  /** Cuts whose `before` value this segment yields (as output `cut_<name>`); edit them, then feed them on. */
  cuts: string[];
  /** Taps this segment yields (as output `tap_<name>`). */
  taps: string[];
}

export interface Partition {
  segments: Segment[];
  /** Whole-graph output name -> the env name that holds it after the last segment. */
  outputs: Map<string, string>;
}

/** Env names: how a whole-graph value is named between segments. */
export const cutName = (name: string) => `cut_${name}`;
export const tapName = (name: string) => `tap_${name}`;

/** Split `g` (outputs declared) at the marks. */
export function partition(g: Graph, marks: CutMarks): Partition {
  const free = new Set<number>();
  const stage = new Map<number, number>();
  for (const v of g.inputs) free.add(v.id);
  for (const c of g.constants) free.add(c.value.id);
  const stageOf = (v: Value) => (free.has(v.id) ? 0 : stage.get(v.id)!);
  for (const n of g.nodes) {
    if (marks.isCut(n)) {
      stage.set(n.outputs[0].id, stageOf(n.inputs[0]) + 1);
      continue;
    }
    const bound = n.inputs.filter((v) => !free.has(v.id));
    if (bound.length === 0) {
      for (const o of n.outputs) free.add(o.id);
      continue;
    }
    const s = Math.max(...bound.map((v) => stage.get(v.id)!));
    for (const o of n.outputs) stage.set(o.id, s);
  }

  const producer = new Map<number, Node>();
  for (const n of g.nodes) for (const o of n.outputs) producer.set(o.id, n);
  // The env name of a value another segment reads: cut results by cut name, the rest by value name.
  const cutAfter = new Map<number, string>();
  for (const [name, c] of marks.cuts) cutAfter.set(c.after.id, name);
  const envName = (v: Value): string => {
    const c = cutAfter.get(v.id);
    return c !== undefined ? cutName(c) : v.kind === 'input' ? v.name : `x_${v.name}`;
  };

  // What each stage must yield: values read by later stages, graph outputs, cut sources, taps.
  const maxStage = Math.max(0, ...stage.values());
  // Per stage: output name -> value.
  const yields = Array.from({ length: maxStage + 1 }, () => new Map<string, Value>());
  const need = (v: Value) => {
    if (v.kind !== 'input' && v.kind !== 'const' && !cutAfter.has(v.id)) yields[stageOf(v)].set(envName(v), v);
  };
  for (const n of g.nodes) {
    if (marks.isCut(n)) continue;
    if (free.has(n.outputs[0].id)) continue; // recomputed wherever it is needed
    const s = stage.get(n.outputs[0].id)!;
    for (const v of n.inputs) if (!free.has(v.id) && !cutAfter.has(v.id) && stage.get(v.id)! < s) need(v);
  }
  const outputs = new Map<string, string>();
  for (const o of g.outputs) {
    if (o.value.kind === 'input' || o.value.kind === 'const') throw new SparsetuneError('BAD_GRAPH', `partition: output "${o.name}" is a graph input or constant`);
    outputs.set(o.name, envName(o.value));
    need(o.value);
  }
  const segCuts: string[][] = yields.map(() => []);
  const segTaps: string[][] = yields.map(() => []);
  for (const [name, c] of marks.cuts) {
    yields[stageOf(c.before)].set(cutName(name), c.before);
    segCuts[stageOf(c.before)].push(name);
  }
  for (const [name, v] of marks.taps) {
    yields[stageOf(v)].set(tapName(name), v);
    segTaps[stageOf(v)].push(name);
  }

  const segments: Segment[] = [];
  for (let s = 0; s <= maxStage; s++) {
    const out = yields[s];
    if (out.size === 0) continue;
    const sub = new Graph(`${g.name}-seg${s}`);
    const map = new Map<number, Value>();
    const declared = new Map<string, Value>();
    const resolve = (v: Value): Value => {
      const have = map.get(v.id);
      if (have) return have;
      let nv: Value;
      const external = v.kind === 'input' || cutAfter.has(v.id) || (!free.has(v.id) && stage.get(v.id)! < s);
      if (v.kind === 'const') {
        nv = sub.constant(g.constants.find((c) => c.value === v)!.tensor, v.name);
      } else if (external) {
        const name = envName(v);
        nv = declared.get(name) ?? sub.input(name, v.dtype, v.shape);
        declared.set(name, nv);
      } else {
        const n = producer.get(v.id)!;
        if (marks.isCut(n)) throw new SparsetuneError('BAD_GRAPH', `partition: internal error at cut ${v}`);
        const outs = sub.add(n.op, n.inputs.map(resolve), n.attrs, n.outputs.length);
        n.outputs.forEach((o, k) => map.set(o.id, outs[k]));
        return map.get(v.id)!;
      }
      map.set(v.id, nv);
      return nv;
    };
    for (const [name, value] of out) sub.output(name, resolve(value));
    segments.push({ graph: sub, cuts: segCuts[s], taps: segTaps[s] });
  }
  return { segments, outputs };
}
