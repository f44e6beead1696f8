/** Serialize the IR to an ONNX ModelProto (opset 18) with the onnx-proto definitions. */
import onnxProto from 'onnx-proto';
import { SparsetuneError } from '../errors.js';
import type { DType, HostTensor } from '../tensor.js';
import { opDef, type AttrValue, type Graph, type Value } from './ir.js';

const { onnx } = onnxProto;

export const OPSET = 18;

const ELEM: Record<DType, number> = { f32: 1, u8: 2, i32: 6, i64: 7, bool: 9, f16: 10, f64: 11 };

export function onnxElemType(d: DType): number {
  return ELEM[d];
}

export function tensorProto(name: string, t: HostTensor): onnxProto.onnx.ITensorProto {
  const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  return { name, dims: t.shape, dataType: ELEM[t.dtype], rawData: bytes };
}

/** An initializer whose data onnxruntime reads from the in-memory buffer named `location`. */
function externalTensorProto(name: string, t: HostTensor, location: string): onnxProto.onnx.ITensorProto {
  const externalData = [
    { key: 'location', value: location },
    { key: 'offset', value: '0' },
    { key: 'length', value: String(t.data.byteLength) },
  ];
  return { name, dims: t.shape, dataType: ELEM[t.dtype], dataLocation: onnx.TensorProto.DataLocation.EXTERNAL, externalData };
}

function valueInfo(v: Value, name: string, withShape: boolean): onnxProto.onnx.IValueInfoProto {
  const dims = v.shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d }));
  return { name, type: { tensorType: { elemType: ELEM[v.dtype], ...(withShape ? { shape: { dim: dims } } : {}) } } };
}

function attribute(name: string, a: AttrValue, op: string): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (op === 'Cast' && name === 'to') return { name, type: T.INT, i: ELEM[a as unknown as DType] };
  if (typeof a === 'number') {
    if (!Number.isInteger(a)) throw new SparsetuneError('BAD_GRAPH', `${op}.${name}: use {float: x} for float attributes`);
    return { name, type: T.INT, i: a };
  }
  if (typeof a === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(a) };
  if (Array.isArray(a)) return { name, type: T.INTS, ints: a };
  if ('float' in a) return { name, type: T.FLOAT, f: a.float };
  if ('floats' in a) return { name, type: T.FLOATS, floats: a.floats };
  if ('graph' in a) return { name, type: T.GRAPH, g: graphProto(a.graph) };
  return { name, type: T.TENSOR, t: tensorProto('', a) };
}

/** Values (by id) that the graph's outputs depend on. */
function liveSet(g: Graph): Set<number> {
  const live = new Set<number>();
  const stack = g.outputs.map((o) => o.value);
  const producerOf = new Map<number, (typeof g.nodes)[number]>();
  for (const n of g.nodes) for (const o of n.outputs) producerOf.set(o.id, n);
  while (stack.length) {
    const v = stack.pop()!;
    if (live.has(v.id)) continue;
    live.add(v.id);
    const p = producerOf.get(v.id);
    if (p) for (const i of p.inputs) stack.push(i);
  }
  return live;
}

/**
 * The GraphProto of a graph or subgraph: only nodes some output depends on. Subgraph
 * values of kind 'outer' are read by name from the enclosing graph and not declared.
 */
function graphProto(g: Graph): onnxProto.onnx.IGraphProto {
  if (g.outputs.length === 0) throw new SparsetuneError('BAD_GRAPH', `graph '${g.name}' has no outputs; call graph.output(name, value)`);
  const live = liveSet(g);
  const nodes: onnxProto.onnx.INodeProto[] = [];
  const initializers: onnxProto.onnx.ITensorProto[] = g.constants
    .filter((c) => live.has(c.value.id))
    .map((c) => (c.external ? externalTensorProto(c.value.name, c.tensor, c.external) : tensorProto(c.value.name, c.tensor)));
  const prefix = g.parent ? `${g.name}/` : '';
  // An output computed by an ordinary node takes the output's name directly (no Identity copy),
  // so onnxruntime writes it straight into a caller-bound buffer. Values that are outputs
  // twice, feed a lowered node (it may read them by name from a subgraph) or are not node
  // results keep the Identity route.
  const rename = new Map<number, string>();
  const outCount = new Map<number, number>();
  for (const o of g.outputs) outCount.set(o.value.id, (outCount.get(o.value.id) ?? 0) + 1);
  const readByLowered = new Set<number>();
  for (const n of g.nodes) if (opDef(n.op).lower) for (const v of n.inputs) readByLowered.add(v.id);
  for (const o of g.outputs) {
    const v = o.value;
    if (v.kind === 'node' && v.producer && !opDef(v.producer.op).lower && outCount.get(v.id) === 1 && !readByLowered.has(v.id)) rename.set(v.id, o.name);
  }
  const nameOf = (v: Value) => rename.get(v.id) ?? v.name;
  for (const n of g.nodes) {
    if (!n.outputs.some((o) => live.has(o.id))) continue;
    const def = opDef(n.op);
    if (def.lower) {
      const lowered = def.lower(n, { live: (k) => live.has(n.outputs[k].id), subgraph: graphProto });
      nodes.push(...lowered.nodes);
      initializers.push(...(lowered.initializers ?? []));
      continue;
    }
    const opType = def.onnxOp ?? n.op;
    const inputs = (n.op === 'StraightThrough' ? n.inputs.slice(0, 1) : n.inputs).map(nameOf);
    const attribute_ = Object.entries(n.attrs)
      .filter(([k]) => !k.startsWith('_'))
      .map(([k, a]) => attribute(k, a, n.op));
    nodes.push({ opType, domain: def.domain ?? '', input: inputs, output: n.outputs.map(nameOf), attribute: attribute_, name: `${prefix}n${n.id}` });
  }
  // Graph outputs may alias inputs or each other: route through Identity with the output name.
  const outputs: onnxProto.onnx.IValueInfoProto[] = [];
  for (const o of g.outputs) {
    if (!rename.has(o.value.id)) nodes.push({ opType: 'Identity', input: [o.value.name], output: [o.name], name: `${prefix}out_${o.name}` });
    outputs.push(valueInfo(o.value, o.name, !!g.parent));
  }
  return {
    name: g.name,
    node: nodes,
    input: g.inputs.filter((v) => live.has(v.id) || g.parent).map((v) => valueInfo(v, v.name, true)),
    output: outputs,
    initializer: initializers,
  };
}

/** Every domain used by the nodes of a graph and its subgraphs. */
function domainsOf(gp: onnxProto.onnx.IGraphProto, into = new Set<string>()): Set<string> {
  for (const n of gp.node ?? []) {
    if (n.domain) into.add(n.domain);
    for (const a of n.attribute ?? []) if (a.g) domainsOf(a.g, into);
  }
  return into;
}

/** External data locations used by the initializers of a graph and its subgraphs. */
function externalsOf(gp: onnxProto.onnx.IGraphProto, into = new Set<string>()): Set<string> {
  for (const t of gp.initializer ?? []) {
    const loc = t.externalData?.find((e) => e.key === 'location')?.value;
    if (loc) into.add(loc);
  }
  for (const n of gp.node ?? []) for (const a of n.attribute ?? []) if (a.g) externalsOf(a.g, into);
  return into;
}

/**
 * Build the ONNX bytes for a graph. Only nodes that some output depends on are emitted.
 * Outputs carry only an element type: ORT infers their shapes.
 */
export function toOnnx(g: Graph): Uint8Array {
  return toOnnxModel(g).bytes;
}

/** The ONNX bytes and the in-memory buffers of the external constants they use (`Graph.externalConstant`). */
export function toOnnxModel(g: Graph): { bytes: Uint8Array; externals: { path: string; data: Uint8Array }[] } {
  const graph = graphProto(g);
  const externals = [...externalsOf(graph)].map((path) => {
    const data = g.root.externalData.get(path);
    if (!data) throw new SparsetuneError('BAD_GRAPH', `external constant '${path}' has no buffer`);
    return { path, data };
  });
  return { bytes: encodeModel(graph), externals };
}

function encodeModel(graph: onnxProto.onnx.IGraphProto): Uint8Array {
  const model: onnxProto.onnx.IModelProto = {
    irVersion: 8,
    producerName: 'sparsetune',
    opsetImport: [{ domain: '', version: OPSET }, ...[...domainsOf(graph)].map((domain) => ({ domain, version: 1 }))],
    graph,
  };
  return onnx.ModelProto.encode(onnx.ModelProto.create(model)).finish();
}
