/**
 * Server metrics in the Prometheus text exposition format (version 0.0.4): counters,
 * gauges read at scrape time, and a swap-latency histogram. Small on purpose: the few
 * series the server needs, no client library.
 */

type Labels = Record<string, string>;

const SWAP_BUCKETS = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5];

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`);
  return parts.length ? `{${parts.join(',')}}` : '';
}

class LabeledCounter {
  private readonly values = new Map<string, { labels: Labels; value: number }>();
  /** `unlabeled`: one series without labels, shown as 0 before the first increment. */
  constructor(readonly name: string, readonly help: string, private readonly unlabeled = false) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels);
    const cur = this.values.get(key);
    if (cur) cur.value += by;
    else this.values.set(key, { labels, value: by });
  }

  get(labels: Labels = {}): number {
    return this.values.get(labelText(labels))?.value ?? 0;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const { labels, value } of this.values.values()) lines.push(`${this.name}${labelText(labels)} ${value}`);
    if (this.unlabeled && this.values.size === 0) lines.push(`${this.name} 0`);
    return lines.join('\n');
  }
}

class Histogram {
  private readonly counts = new Array<number>(SWAP_BUCKETS.length).fill(0);
  private sum = 0;
  private count = 0;
  constructor(readonly name: string, readonly help: string) {}

  observe(v: number): void {
    this.sum += v;
    this.count++;
    SWAP_BUCKETS.forEach((b, i) => {
      if (v <= b) this.counts[i]++;
    });
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    SWAP_BUCKETS.forEach((b, i) => lines.push(`${this.name}_bucket{le="${b}"} ${this.counts[i]}`));
    lines.push(`${this.name}_bucket{le="+Inf"} ${this.count}`, `${this.name}_sum ${this.sum}`, `${this.name}_count ${this.count}`);
    return lines.join('\n');
  }
}

/** Values sampled when /metrics is scraped. */
export interface GaugeSource {
  queueDepth(): number;
  activeSequences(): number;
  adaptersLoaded(): number;
  /** Bytes held for resident adapters: payloads plus prepared swap forms, unfused tables, scaled copies. */
  adapterResidentBytes(): number;
  /** Bytes of resident adapter payloads alone. */
  adapterPayloadBytes?(): number;
  /** Bytes of unfused adapter tables held in memory. */
  unfusedTableBytes?(): number;
}

export class ServerMetrics {
  readonly requests = new LabeledCounter('sparsetune_requests_total', 'HTTP API requests by endpoint and status code.');
  readonly promptTokens = new LabeledCounter('sparsetune_prompt_tokens_total', 'Prompt tokens prefilled.', true);
  readonly completionTokens = new LabeledCounter('sparsetune_completion_tokens_total', 'Tokens generated.', true);
  readonly steps = new LabeledCounter('sparsetune_model_steps_total', 'Model runs (kind: prefill or decode).');
  readonly cancelled = new LabeledCounter('sparsetune_cancelled_sequences_total', 'Sequences cancelled (client gone or shutdown).', true);
  readonly swaps = new LabeledCounter('sparsetune_swaps_total', 'Weight swaps between adapter sets.', true);
  readonly adapterRequests = new LabeledCounter('sparsetune_adapter_requests_total', 'Generation requests per adapter ("base" for none).');
  readonly swapSeconds = new Histogram('sparsetune_swap_seconds', 'Time to move the base weights from one adapter set to another.');
  readonly runs = new LabeledCounter('sparsetune_mixed_runs_total', 'Model runs of the mixed batch (path: dense = no row had unfused work, unfused = cut graph with per-row contributions).');
  readonly unfusedRows = new LabeledCounter('sparsetune_unfused_rows_total', 'Rows that added unfused adapter contributions, summed over model runs.', true);
  readonly fusedSetChanges = new LabeledCounter('sparsetune_fused_set_changes_total', 'Times the cost rule changed the set fused into the weights for the mixed batch.', true);

  constructor(private readonly gauges: GaugeSource) {}

  /** The exposition text. */
  render(): string {
    const gauge = (name: string, help: string, v: number) => `# HELP ${name} ${help}\n# TYPE ${name} gauge\n${name} ${v}`;
    return (
      [
        this.requests.render(),
        this.promptTokens.render(),
        this.completionTokens.render(),
        this.steps.render(),
        this.cancelled.render(),
        this.swaps.render(),
        this.swapSeconds.render(),
        this.runs.render(),
        this.unfusedRows.render(),
        this.fusedSetChanges.render(),
        this.adapterRequests.render(),
        gauge('sparsetune_queue_depth', 'Sequences waiting for a batch slot.', this.gauges.queueDepth()),
        gauge('sparsetune_active_sequences', 'Sequences being decoded.', this.gauges.activeSequences()),
        gauge('sparsetune_adapters_loaded', 'Registered adapters.', this.gauges.adaptersLoaded()),
        gauge('sparsetune_adapter_resident_bytes', 'Bytes held in memory for resident adapters (payloads, prepared swap forms, unfused tables, scaled copies), as the memory budget counts them.', this.gauges.adapterResidentBytes()),
        gauge('sparsetune_adapter_payload_bytes', 'Bytes of adapter payloads held in memory.', this.gauges.adapterPayloadBytes?.() ?? 0),
        gauge('sparsetune_unfused_table_bytes', 'Bytes of unfused adapter tables held in memory.', this.gauges.unfusedTableBytes?.() ?? 0),
      ].join('\n') + '\n'
    );
  }
}
