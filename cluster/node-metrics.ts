// What a node tells operators (issue 13, item 6): its Prometheus metrics (prom-client, one
// registry per node, names by the Prometheus conventions: `draftwire_` prefix, base units,
// `_total` counters) and the history its live page plots. Fed by plain calls (heartbeats and
// step reports the node hears, WAL append times of a queue it runs) and by collect callbacks
// that read the store, the data plane and the queue when scraped. No HTTP here (ops-server.ts).
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { RANK_COUNTERS, type QueueStatus, type RankCounters, type RankHeartbeat, type StepMetrics } from '../src/wire/protocol.ts';

/** The sources a scrape reads (each may be absent on this node). */
export interface NodeMetricsSources {
  storeUsage(): Promise<{ bytes: number; samples: number }>;
  servedBytes(): number | null;
  /** The queue's status when this node runs the queue role (null otherwise). */
  queueStatus(): Promise<QueueStatus | null>;
  /** The roles this node holds now, with their terms. */
  heldRoles(): { role: string; term: number }[];
}

/** One point of the live page's step series (world rank 0's report). */
export interface StepPoint { step: number; at: number; loss: number; acc: number[]; samplesPerSec: number; tokensPerSec: number; dataMs: number; computeMs: number; dp: number }
export interface PageSeries { steps: StepPoint[]; accept: { step: number; value: number }[]; queue: { at: number; depth: number; leased: number }[] }

const MAX_POINTS = 5000;
const COUNTER_NAMES: Record<keyof RankCounters, [string, string]> = {
  steps: ['draftwire_rank_steps_total', 'Training steps this rank ran'],
  samples: ['draftwire_rank_samples_total', 'Samples this rank trained (its cell leader counts its cell\'s)'],
  tokens: ['draftwire_rank_tokens_total', 'Tokens this rank trained (its cell leader counts its cell\'s)'],
  stepSeconds: ['draftwire_rank_step_seconds_total', 'Seconds from the start of a step\'s batch collection to the end of its compute'],
  dataSeconds: ['draftwire_rank_data_seconds_total', 'Seconds waiting for leases and fetching features'],
  computeSeconds: ['draftwire_rank_compute_seconds_total', 'Seconds in the training step itself'],
  fetchedBytes: ['draftwire_rank_fetched_bytes_total', 'Feature bytes this rank fetched over the data plane'],
};

export class NodeMetrics {
  readonly registry = new Registry();
  /** The latest counters of each rank of this node, and the ones of about 10 s before (for rates). */
  private readonly ranks = new Map<number, { now: RankCounters; at: number; before: { c: RankCounters; at: number } | null; epoch: number; state: string }>();
  readonly series: PageSeries = { steps: [], accept: [], queue: [] };
  private readonly walAppend: Histogram;

  constructor(private readonly node: string, job: string, private readonly src: NodeMetricsSources) {
    this.registry.setDefaultLabels({ job, node });
    const ranks = this.ranks;
    for (const f of RANK_COUNTERS) {
      const [name, help] = COUNTER_NAMES[f];
      new Counter({ name, help, labelNames: ['rank'], registers: [this.registry], collect() { this.reset(); for (const [rank, r] of ranks) this.inc({ rank: String(rank) }, r.now[f]); } });
    }
    const rate = (name: string, help: string, f: 'samples' | 'tokens') => new Gauge({
      name, help, labelNames: ['rank'], registers: [this.registry],
      collect() { this.reset(); for (const [rank, r] of ranks) if (r.before && r.at > r.before.at) this.set({ rank: String(rank) }, (r.now[f] - r.before.c[f]) / ((r.at - r.before.at) / 1000)); },
    });
    rate('draftwire_rank_samples_per_second', 'Samples per second over about the last 10 s', 'samples');
    rate('draftwire_rank_tokens_per_second', 'Tokens per second over about the last 10 s', 'tokens');
    new Gauge({ name: 'draftwire_rank_epoch', help: 'The epoch each rank of this node runs at', labelNames: ['rank', 'state'], registers: [this.registry],
      collect() { this.reset(); for (const [rank, r] of ranks) this.set({ rank: String(rank), state: r.state }, r.epoch); } });
    // One directory scan per scrape for both store gauges.
    let scan: Promise<{ bytes: number; samples: number }> | null = null;
    const usage = () => (scan ??= src.storeUsage().finally(() => { setTimeout(() => { scan = null; }, 0); }));
    new Gauge({ name: 'draftwire_store_bytes', help: 'Bytes of samples in this node\'s store', registers: [this.registry], async collect() { this.set((await usage()).bytes); } });
    new Gauge({ name: 'draftwire_store_samples', help: 'Samples in this node\'s store', registers: [this.registry], async collect() { this.set((await usage()).samples); } });
    new Counter({ name: 'draftwire_node_served_bytes_total', help: 'Feature bytes this node served over the data plane', registers: [this.registry],
      collect() { const b = src.servedBytes(); this.reset(); if (b !== null) this.inc(b); } });
    new Counter({ name: 'draftwire_node_fetched_bytes_total', help: 'Feature bytes this node\'s ranks fetched over the data plane', registers: [this.registry],
      collect() { this.reset(); let n = 0; for (const r of ranks.values()) n += r.now.fetchedBytes; this.inc(n); } });
    new Gauge({ name: 'draftwire_role_term', help: 'The term of each role this node holds (absent: held elsewhere)', labelNames: ['role'], registers: [this.registry],
      collect() { this.reset(); for (const r of src.heldRoles()) this.set({ role: r.role }, r.term); } });
    this.walAppend = new Histogram({ name: 'draftwire_queue_wal_append_seconds', help: 'Write-ahead log appends of the queue this node runs', buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1], registers: [this.registry] });
    // The queue's figures, read once per scrape (only where the queue runs).
    let scrape: Promise<QueueStatus | null> | null = null;
    const queue = () => (scrape ??= src.queueStatus().catch(() => null).finally(() => { setTimeout(() => { scrape = null; }, 0); }));
    const q = (name: string, help: string, type: 'gauge' | 'counter', pick: (s: QueueStatus) => number) => {
      const collect = async function (this: Gauge | Counter) { const s = await queue(); this.reset(); if (s) (this instanceof Gauge ? this.set(pick(s)) : this.inc(pick(s))); };
      if (type === 'gauge') new Gauge({ name, help, registers: [this.registry], collect });
      else new Counter({ name, help, registers: [this.registry], collect });
    };
    q('draftwire_queue_depth', 'Samples waiting for a lease', 'gauge', (s) => s.depth);
    q('draftwire_queue_leased', 'Samples leased now', 'gauge', (s) => s.inFlight);
    q('draftwire_queue_committed_total', 'Samples committed', 'counter', (s) => s.samples);
    q('draftwire_queue_consumed_total', 'Samples consumed (trained and acked)', 'counter', (s) => s.consumed);
    q('draftwire_queue_dead_total', 'Samples dead-lettered', 'counter', (s) => s.dead);
    q('draftwire_queue_lease_grants_total', 'Leases granted', 'counter', (s) => s.leasesGranted);
    q('draftwire_queue_acks_total', 'Acks accepted', 'counter', (s) => s.acks);
  }

  /** A rank heartbeat heard on the bus: only this node's ranks are exported here. */
  heartbeat(h: RankHeartbeat): void {
    if (h.node !== this.node || !h.counters) return;
    const now = Date.now();
    const r = this.ranks.get(h.rank);
    // A new process of the same rank starts its totals again: so does its series here.
    const restarted = r && RANK_COUNTERS.some((f) => h.counters![f] < r.now[f]);
    if (!r || restarted) { this.ranks.set(h.rank, { now: h.counters, at: now, before: null, epoch: h.epoch, state: h.state }); return; }
    if (!r.before || now - r.before.at > 10_000) r.before = { c: r.now, at: r.at };
    Object.assign(r, { now: h.counters, at: now, epoch: h.epoch, state: h.state });
  }

  /** A rank that left this node (retired or moved): its series ends. */
  forgetRank(rank: number): void { this.ranks.delete(rank); }

  /** World rank 0's step report (every node hears it: any node's page shows the job). */
  step(m: StepMetrics): void {
    const fetch = m.fetchMs ?? 0;
    const secs = (m.stepMs + m.waitMs) / 1000;
    const s = this.series.steps;
    // A retrained step (after a crash) replaces its earlier report.
    while (s.length && s.at(-1)!.step >= m.step) s.pop();
    s.push({ step: m.step, at: m.at, loss: m.loss, acc: m.acc, samplesPerSec: secs > 0 ? m.samples / secs : 0, tokensPerSec: secs > 0 ? m.tokens / secs : 0, dataMs: m.waitMs + fetch, computeMs: m.stepMs - fetch, dp: m.dp });
    if (s.length > MAX_POINTS) s.splice(0, s.length - MAX_POINTS);
    if (m.acceptLength !== null && Number.isFinite(m.acceptLength)) {
      const a = this.series.accept;
      while (a.length && a.at(-1)!.step >= m.step) a.pop();
      a.push({ step: m.step, value: m.acceptLength });
    }
  }

  queueSample(q: { depth: number; inFlight: number }): void {
    const s = this.series.queue;
    s.push({ at: Date.now(), depth: q.depth, leased: q.inFlight });
    if (s.length > MAX_POINTS) s.splice(0, s.length - MAX_POINTS);
  }

  observeWalAppend(seconds: number): void { this.walAppend.observe(seconds); }

  text(): Promise<string> { return this.registry.metrics(); }
  get contentType(): string { return this.registry.contentType; }
}
