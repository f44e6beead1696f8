/**
 * The graph IR: values with a dtype and a shape (static ints or symbolic names such as
 * `batch`), and nodes that map 1:1 onto standard ONNX ops. Shapes are inferred when a node
 * is added, so a mismatch fails at build time with a message naming the op and the shapes.
 */
import { SparsetuneError } from '../errors.js';
import type { DType, HostTensor } from '../tensor.js';

/** A dimension: a static size, or a symbolic name (`batch`, `seq`, or a product `batch*seq`). */
export type Dim = number | string;
export type Shape = Dim[];

export type AttrValue = number | number[] | string | HostTensor | { float: number } | { floats: number[] } | { graph: Graph };

let nextGraphId = 1;

/** A tensor-valued edge of the graph. */
export class Value {
  constructor(
    readonly graph: Graph,
    readonly id: number,
    readonly dtype: DType,
    readonly shape: Shape,
    /** The node that produces this value; null for graph inputs and constants. */
    readonly producer: Node | null,
    /** `outer`: a value of an enclosing graph, referenced by name from a subgraph (ONNX scoping). */
    readonly kind: 'input' | 'const' | 'node' | 'outer',
    readonly name: string,
  ) {}

  get rank(): number {
    return this.shape.length;
  }

  toString(): string {
    return `%${this.name}: ${this.dtype}[${this.shape.join(', ')}]`;
  }
}

export class Node {
  constructor(
    readonly id: number,
    readonly op: string,
    readonly inputs: Value[],
    readonly attrs: Record<string, AttrValue>,
    public outputs: Value[],
    readonly domain: string = '',
  ) {}
}

/** Shape and dtype rule of one op: called when a node is added. Throws on mismatch. */
export type InferFn = (inputs: Value[], attrs: Record<string, AttrValue>) => { dtype: DType; shape: Shape }[];

/** Gradient rule: returns one gradient (or null) per input; only inputs with needs(i) matter. */
export type GradFn = (ctx: GradContext) => (Value | null)[];

export interface GradContext {
  node: Node;
  inputs: Value[];
  outputs: Value[];
  /** Gradient of the loss w.r.t. each output (null when that output does not reach the loss). */
  dOut: (Value | null)[];
  /** Whether the gradient of input i is wanted (it lies on a path from a `wrt` value). */
  needs: (i: number) => boolean;
}

/** What a lowered node emits: ONNX nodes (and initializers) standing for one IR node. */
export interface Lowered {
  nodes: import('onnx-proto').onnx.INodeProto[];
  initializers?: import('onnx-proto').onnx.ITensorProto[];
}

/** Lowering context: which outputs are needed, and how to serialize a subgraph. */
export interface LowerContext {
  /** Whether output k of the node is used by anything the model computes. */
  live(k: number): boolean;
  /** The ONNX GraphProto of a subgraph (for Scan/Loop bodies). */
  subgraph(g: Graph): import('onnx-proto').onnx.IGraphProto;
}

export interface OpDef {
  /** ONNX op type emitted (defaults to the IR op name). */
  onnxOp?: string;
  /**
   * Custom emission: the IR node becomes these ONNX nodes (a composite whose form depends
   * on which of its outputs are live, e.g. a Scan that skips dead scan outputs).
   */
  lower?: (node: Node, ctx: LowerContext) => Lowered;
  domain?: string;
  infer: InferFn;
  /** Absent: the op is not differentiable (an error if a gradient must flow through it). */
  grad?: GradFn;
  /** True for ops whose output carries no gradient by definition (comparisons, Shape, TopK indices). */
  noGrad?: boolean;
}

const registry = new Map<string, OpDef>();

/** Register an op's shape rule and gradient rule; each op module calls this once per op. */
export function defineOp(name: string, def: OpDef): void {
  registry.set(name, def);
}

export function opDef(name: string): OpDef {
  const d = registry.get(name);
  if (!d) throw new SparsetuneError('BAD_GRAPH', `unknown op '${name}'`);
  return d;
}

/** Where a symbolic dimension can be read at run time: an input's axis. */
interface SymbolSource {
  value: Value;
  axis: number;
}

/** A computation graph under construction. */
export class Graph {
  readonly uid = nextGraphId++;
  /** The outermost graph (names are unique across a graph and all its subgraphs). */
  readonly root: Graph;
  readonly inputs: Value[] = [];
  /** `external`: the data is not embedded in the model bytes but handed to onnxruntime in memory under this location name. */
  readonly constants: { value: Value; tensor: HostTensor; external?: string }[] = [];
  /** Buffers of external constants by location (root graph only), given to the session at creation. */
  readonly externalData = new Map<string, Uint8Array>();
  readonly nodes: Node[] = [];
  readonly outputs: { name: string; value: Value }[] = [];
  readonly symbols = new Map<string, SymbolSource>();
  private nextValueId = 0;
  private nextNodeId = 0;
  private readonly names: Set<string>;
  private readonly outerRefs = new Map<Value, Value>();
  /** Cache for small constants and derived shape tensors, keyed by content. */
  readonly memo = new Map<string, Value>();
  /**
   * Set on graphs that are never differentiated (decode): composite layers may then emit
   * onnxruntime's fused inference kernels (RMSNorm, MatMul with a transposed weight).
   */
  inference = false;
  /** Set by `grad()`: the graph holds a backward pass (the runtime plans its memory per tensor). */
  differentiated = false;

  /** `parent`: the enclosing graph of a subgraph (a Scan body); names are shared with it. */
  constructor(
    readonly name = 'sparsetune',
    readonly parent: Graph | null = null,
  ) {
    this.root = parent ? parent.root : this;
    this.names = parent ? parent.root.names : new Set<string>();
  }

  private uniqueName(base: string): string {
    let n = base;
    let k = 1;
    while (this.names.has(n)) n = `${base}_${k++}`;
    this.names.add(n);
    return n;
  }

  /** In a subgraph: the value `v` of an enclosing graph, read by name (no copy, no input). */
  outer(v: Value): Value {
    if (!this.parent) throw new SparsetuneError('BAD_GRAPH', 'outer(): only subgraphs can reference enclosing values');
    if (v.graph === this) return v;
    let r = this.outerRefs.get(v);
    if (!r) {
      r = new Value(this, this.nextValueId++, v.dtype, [...v.shape], null, 'outer', v.name);
      this.outerRefs.set(v, r);
    }
    return r;
  }

  /** Declare a graph input (data or a JS-owned weight fed on every run). */
  input(name: string, dtype: DType, shape: Shape): Value {
    if (this.names.has(name)) throw new SparsetuneError('BAD_GRAPH', `graph input '${name}' is declared twice`);
    this.names.add(name);
    const v = new Value(this, this.nextValueId++, dtype, [...shape], null, 'input', name);
    this.inputs.push(v);
    shape.forEach((d, axis) => {
      if (typeof d === 'string' && !d.includes('*') && !this.symbols.has(d)) this.symbols.set(d, { value: v, axis });
    });
    return v;
  }

  /** A constant baked into the graph (small tensors only: shapes, axes, scalars, tables). */
  constant(tensor: HostTensor, hint = 'const'): Value {
    const v = new Value(this, this.nextValueId++, tensor.dtype, [...tensor.shape], null, 'const', this.uniqueName(hint));
    this.constants.push({ value: v, tensor });
    return v;
  }

  /**
   * A large constant kept outside the model bytes (quantized weights): onnxruntime gets the
   * buffer in memory at session creation (`externalData`) and may prepack it, which it does
   * for constant inputs only. `location` names the buffer and must be unique per content:
   * the session cache keys graphs by their bytes, which hold the name, not the data. The
   * same location used twice in a graph is one constant.
   */
  externalConstant(tensor: HostTensor, location: string): Value {
    const key = `external:${location}`;
    const hit = this.memo.get(key);
    if (hit) return hit;
    const bytes = new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
    const known = this.root.externalData.get(location);
    if (!known) this.root.externalData.set(location, bytes);
    else if (known.buffer !== bytes.buffer || known.byteOffset !== bytes.byteOffset || known.byteLength !== bytes.byteLength) {
      throw new SparsetuneError('BAD_GRAPH', `external constant '${location}' is bound to two different buffers`);
    }
    const v = new Value(this, this.nextValueId++, tensor.dtype, [...tensor.shape], null, 'const', this.uniqueName(location.replace(/[^A-Za-z0-9_]/g, '_')));
    this.constants.push({ value: v, tensor, external: location });
    this.memo.set(key, v);
    return v;
  }

  /** Add a node; its output dtypes and shapes come from the op's shape rule. */
  add(op: string, inputs: Value[], attrs: Record<string, AttrValue> = {}, nOutputs?: number): Value[] {
    const def = opDef(op);
    for (const [i, v] of inputs.entries()) {
      if (v.graph !== this) throw new SparsetuneError('BAD_GRAPH', `${op}: input ${i} (${v}) belongs to another graph`);
    }
    let infos: { dtype: DType; shape: Shape }[];
    try {
      infos = def.infer(inputs, attrs);
    } catch (e) {
      if (e instanceof SparsetuneError) throw e;
      throw new SparsetuneError('SHAPE_MISMATCH', `${op}: ${(e as Error).message}; inputs ${inputs.map(String).join(', ')}`);
    }
    if (nOutputs !== undefined && infos.length !== nOutputs) {
      throw new SparsetuneError('BAD_GRAPH', `${op}: expected ${nOutputs} outputs, shape rule gave ${infos.length}`);
    }
    const node = new Node(this.nextNodeId++, op, inputs, attrs, [], def.domain ?? '');
    node.outputs = infos.map(
      (info, k) => new Value(this, this.nextValueId++, info.dtype, info.shape, node, 'node', this.uniqueName(`${op.toLowerCase()}${node.id}${infos.length > 1 ? `_${k}` : ''}`)),
    );
    this.nodes.push(node);
    return node.outputs;
  }

  /** Mark a value as a named graph output. */
  output(name: string, value: Value): void {
    if (this.outputs.some((o) => o.name === name)) throw new SparsetuneError('BAD_GRAPH', `graph output '${name}' is declared twice`);
    if (this.names.has(name)) throw new SparsetuneError('BAD_GRAPH', `graph output '${name}' clashes with an input or value name`);
    this.names.add(name);
    this.outputs.push({ name, value });
  }

  /** A readable dump of the graph, for debugging. */
  toString(): string {
    const lines = [`graph ${this.name} {`];
    for (const v of this.inputs) lines.push(`  input ${v}`);
    for (const { value } of this.constants) lines.push(`  const ${value}`);
    for (const n of this.nodes) {
      const attrs = Object.entries(n.attrs)
        .filter(([, a]) => typeof a !== 'object' || Array.isArray(a))
        .map(([k, a]) => `${k}=${JSON.stringify(a)}`)
        .join(' ');
      lines.push(`  ${n.outputs.map(String).join(', ')} = ${n.op}(${n.inputs.map((v) => `%${v.name}`).join(', ')})${attrs ? ` {${attrs}}` : ''}`);
    }
    for (const o of this.outputs) lines.push(`  output ${o.name} = %${o.value.name}`);
    lines.push('}');
    return lines.join('\n');
  }
}

export function shapeStr(s: Shape): string {
  return `[${s.join(', ')}]`;
}
