// One trainer rank (DESIGN.md §2): subscribes to its partition's subject for the current
// epoch, sends credit, gathers a batch of leases, reads the features from the store, runs
// the native step off the event loop, and acks every lease of the step as a whole. While
// the step computes, heartbeats and lease renewals keep running on the event loop.
import type { Bus, BusSubscription } from '../src/bus.ts';
import { DraftwireError, InvalidArgumentError, StaleEpochError } from '../src/errors.ts';
import { failpoint } from '../src/failpoints.ts';
import type { Lease } from '../src/ledger.ts';
import { createLogger } from '../src/log.ts';
import type { JobSpec } from '../src/job.ts';
import { acceptLength, DraftModel, TargetModel } from '../src/native.ts';
import type { FeatureStore } from '../src/store/feature-store.ts';
import type { Tensor } from '../src/tensor.ts';
import type { LeaseMessage } from './queue.ts';

export const FEATURES = ['ids', 'aux', 'last', 'mask'] as const;

export interface EpochInfo { epoch: number; num: number; members?: unknown[] }

export interface StepMetrics {
  rank: number; step: number; loss: number; gradNorm: number; ploss: number[]; acc: number[];
  samples: number; tokens: number; stepMs: number; waitMs: number; acceptLength: number | null; at: number;
}

export interface RankOptions {
  spec: JobSpec;
  bus: Bus;
  store: FeatureStore;
  rank: number;
  weights: Record<string, Float32Array | Int32Array>;
  /** Called after every step (tests; the CLI reads the metrics subject instead). */
  onStep?: (m: StepMetrics) => void;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Deterministic evaluation prompts, disjoint from the rollout's rows (another seed stream). */
export function evalPrompts(spec: JobSpec): Int32Array[] {
  let s = (spec.seed ^ 0x5eed) >>> 0;
  const next = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s; };
  return Array.from({ length: spec.evalPrompts }, () => Int32Array.from({ length: spec.promptLen }, () => next() % spec.draft.vocab));
}

/** Stacks per-sample tensors into one batch. */
export function stackBatch(samples: Record<string, Tensor>[], seq: number, hidden: number) {
  const B = samples.length;
  const ids = new Int32Array(B * seq), aux = new Float32Array(B * seq * 3 * hidden), last = new Float32Array(B * seq * hidden), mask = new Uint8Array(B * seq);
  samples.forEach((t, b) => {
    const check = (name: string, n: number) => {
      if (!t[name] || t[name].data.length !== n) throw new InvalidArgumentError(`sample ${b}: feature "${name}" has ${t[name]?.data.length ?? 0} elements, the job needs ${n}`);
      return t[name].data;
    };
    ids.set(check('ids', seq) as Int32Array, b * seq);
    aux.set(check('aux', seq * 3 * hidden) as Float32Array, b * seq * 3 * hidden);
    last.set(check('last', seq * hidden) as Float32Array, b * seq * hidden);
    mask.set(check('mask', seq) as Uint8Array, b * seq);
  });
  return { ids, aux, last, mask, batch: B, seq };
}

export class RankWorker {
  private readonly log;
  private readonly consumer: string;
  private held = new Map<string, Lease>();
  private wake: (() => void) | null = null;
  private sub: BusSubscription | null = null;
  private epoch: EpochInfo = { epoch: 0, num: 1 };
  private stepNo = 0;
  private state: 'starting' | 'waiting' | 'stepping' | 'done' = 'starting';
  private stopped = false;
  private timers: NodeJS.Timeout[] = [];
  private model: DraftModel | null = null;

  constructor(private readonly o: RankOptions) {
    this.consumer = `rank-${o.rank}-${process.pid}`;
    this.log = createLogger(`rank.${o.rank}`);
  }

  get step(): number { return this.stepNo; }

  /** Trains spec.steps steps (from `startStep`); resolves with the model's final weights. */
  async run(startStep = 0): Promise<{ weights: Record<string, Float32Array>; model: DraftModel }> {
    const { spec, bus, rank } = this.o;
    if (spec.dp * spec.tp * spec.sp !== 1) {
      throw new InvalidArgumentError(`this build trains with one rank (dp=tp=sp=1); dp=${spec.dp} tp=${spec.tp} sp=${spec.sp} needs the collective backend`);
    }
    this.stepNo = startStep;
    this.model = DraftModel.create(spec.draft, this.o.weights, { threads: spec.threads });
    const target = TargetModel.create(spec.target, { threads: spec.threads });
    const prompts = evalPrompts(spec);
    this.startTimers();
    try {
      await this.joinEpoch();
      while (this.stepNo < spec.steps && !this.stopped) {
        const t0 = Date.now();
        const leases = await this.collect(spec.batch);
        const samples = await this.fetch(leases);
        if (samples.length < leases.length) continue; // a failed read was dead-lettered; refill
        const t1 = Date.now();
        this.state = 'stepping';
        const res = await this.model.step(stackBatch(samples, spec.seqLen, spec.draft.hidden), {
          lr: spec.lr, clip: spec.clip, weightDecay: spec.weightDecay, returnGrads: false,
        });
        const t2 = Date.now();
        failpoint('rank.before-ack');
        // The step is acked as a whole once it succeeded (DESIGN.md §2).
        await Promise.all(leases.map((l) => bus.request(bus.subjects.queue.ack, { leaseId: l.leaseId, epoch: l.epoch }, { idempotencyKey: `ack:${l.leaseId}`, retries: 10, timeoutMs: 3000 })));
        for (const l of leases) this.held.delete(l.leaseId);
        this.stepNo++;
        const evalDue = this.stepNo === spec.steps || (spec.evalEvery > 0 && this.stepNo % spec.evalEvery === 0);
        const accept = evalDue ? (await acceptLength(this.model, target, prompts, { maxNew: spec.seqLen - spec.promptLen })).acceptLength : null;
        const m: StepMetrics = {
          rank, step: this.stepNo, loss: res.loss, gradNorm: res.gradNorm, ploss: [...res.ploss], acc: [...res.acc],
          samples: leases.length, tokens: leases.length * spec.seqLen, stepMs: t2 - t1, waitMs: t1 - t0, acceptLength: accept, at: Date.now(),
        };
        bus.publish(`dw.${spec.job}.metrics`, m);
        this.o.onStep?.(m);
      }
      this.state = 'done';
      return { weights: this.model.weights(), model: this.model };
    } finally {
      target.close();
      this.stop();
    }
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.sub?.unsubscribe();
    this.sub = null;
    this.wake?.();
  }

  private startTimers(): void {
    const { spec, bus, rank } = this.o;
    const hb = setInterval(() => {
      bus.publish(bus.subjects.hb(`rank-${rank}`), { rank, pid: process.pid, step: this.stepNo, state: this.state, held: this.held.size, epoch: this.epoch.epoch, at: Date.now() });
    }, 1000);
    // Renew held leases well before they expire; a step longer than a lease must not lose them.
    const renew = setInterval(() => {
      for (const l of this.held.values()) {
        bus.request(bus.subjects.queue.renew, { leaseId: l.leaseId, epoch: l.epoch }, { timeoutMs: 2000, retries: 1 }).catch((e: unknown) => {
          this.log.warn('lease renewal failed', { leaseId: l.leaseId, error: (e as Error).message });
        });
      }
    }, Math.max(200, Math.floor(spec.leaseMs / 3)));
    this.timers.push(hb, renew);
  }

  private async joinEpoch(): Promise<void> {
    const { bus, spec } = this.o;
    const kv = await bus.kv(bus.subjects.kvBucket);
    for (let i = 0; ; i++) {
      const e = await kv.get<EpochInfo>('epoch');
      if (e) { this.epoch = e.value; break; }
      if (i > 600) throw new DraftwireError('NO_EPOCH', `no epoch in KV bucket ${bus.subjects.kvBucket} after 60 s: is the coordinator running?`, true);
      await sleep(100);
    }
    const index = this.o.rank % this.epoch.num;
    this.sub = bus.subscribe<LeaseMessage>(bus.subjects.part(this.epoch.num, index), (m) => {
      if (m?.consumer !== this.consumer || !Array.isArray(m.leases)) return;
      for (const l of m.leases) this.held.set(l.leaseId, l);
      this.wake?.();
    }, { dedupe: false });
    await bus.flush();
    this.log.info('joined', { epoch: this.epoch.epoch, num: this.epoch.num, partition: index, job: spec.job });
  }

  /** Waits until `n` leases are held, re-sending credit while waiting. */
  private async collect(n: number): Promise<Lease[]> {
    const { bus } = this.o;
    this.state = 'waiting';
    while (this.held.size < n) {
      if (this.stopped) throw new DraftwireError('STOPPED', 'rank stopped', false);
      const index = this.o.rank % this.epoch.num;
      try {
        await bus.request(bus.subjects.queue.credit, { consumer: this.consumer, partition: [index, this.epoch.num], epoch: this.epoch.epoch, max: n - this.held.size, leaseMs: this.o.spec.leaseMs }, { timeoutMs: 3000, retries: 2 });
      } catch (e) {
        if (e instanceof StaleEpochError) throw e; // reshard: the caller re-joins (elastic DP)
        this.log.warn('credit failed; retrying', { error: (e as Error).message });
      }
      await new Promise<void>((r) => { this.wake = r; setTimeout(r, 1000); });
      this.wake = null;
    }
    return [...this.held.values()].slice(0, n);
  }

  /** Reads the leased samples; one that cannot be read is failed (dead-lettered) and dropped. */
  private async fetch(leases: Lease[]): Promise<Record<string, Tensor>[]> {
    const { bus, store } = this.o;
    const out: Record<string, Tensor>[] = [];
    for (const l of leases) {
      try {
        out.push(await store.get(l.ref, { names: FEATURES }));
      } catch (e) {
        this.log.error('sample unreadable; failing its lease', { sampleId: l.sampleId, error: (e as Error).message });
        this.held.delete(l.leaseId);
        await bus.request(bus.subjects.queue.fail, { leaseId: l.leaseId, epoch: l.epoch, retryable: false, reason: (e as Error).message }, { idempotencyKey: `fail:${l.leaseId}`, retries: 5 });
      }
    }
    return out;
  }
}
