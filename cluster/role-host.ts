// Runs the singleton roles this node may hold, each only while it holds the role's leader
// lease (src/bus/role-lease.ts): a campaign per role steps the lease every ttl/4; winning it
// starts the role's actors under the new term (stamped on every message of the role, see
// src/bus/terms.ts), losing it or failing to renew in time stops them. When another node's
// machine dies, its roles come here within about one ttl, and each rebuilds its state from
// the replicated streams (the queue its ledger from the write-ahead log, the coordinator
// from the epoch record and the heartbeats).
import type { Bus } from '../src/bus/bus.ts';
import { RoleLease } from '../src/bus/role-lease.ts';
import { createLogger } from '../src/log.ts';
import type { Role } from '../src/wire/protocol.ts';

/** Starts a role's actors under `term`; returns their stop. */
export type RoleStarter = (term: number, lease: RoleLease) => Promise<() => Promise<void>>;

class Campaign {
  private running: { term: number; stop: () => Promise<void> } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private watchdog: NodeJS.Timeout | null = null;
  private busy: Promise<void> = Promise.resolve();
  private stopped = false;
  private readonly log = createLogger('roles');

  constructor(readonly lease: RoleLease, private readonly bus: Bus, private readonly start: RoleStarter) {}

  begin(): Promise<void> {
    const first = this.tick();
    this.timer = setInterval(() => { void this.tick(); }, this.lease.periodMs);
    // A holder that cannot renew (KV calls hanging) stops acting in time, without waiting for the next round.
    this.watchdog = setInterval(() => { if (this.running && !this.lease.valid()) void this.serial(() => this.lose('its lease could not be renewed in time')); }, Math.max(25, this.lease.periodMs / 2));
    return first;
  }

  /** Rounds run one at a time; a round still running when the timer fires is not doubled. */
  private serial(fn: () => Promise<void>): Promise<void> {
    const next = this.busy.then(fn, fn);
    this.busy = next.catch(() => {});
    return next;
  }

  private tick(): Promise<void> {
    return this.serial(async () => {
      if (this.stopped) return;
      let state;
      try { state = await this.lease.step(); } catch (e) {
        this.log.warn('role lease round failed', { role: this.lease.role, error: (e as Error).message });
        return;
      }
      if (this.stopped) return;
      if (state.holding && !this.running) await this.win(state.term);
      else if (!state.holding && this.running) await this.lose('another node took its lease');
    });
  }

  private async win(term: number): Promise<void> {
    const role = this.lease.role;
    this.bus.terms.hold(role, term);
    try {
      this.running = { term, stop: await this.start(term, this.lease) };
      this.log.info('role started', { role, term });
    } catch (e) {
      // It could not start here (a broken store, say): give the lease back for another node.
      this.bus.terms.drop(role, term);
      this.log.error('role failed to start; releasing its lease', { role, term, error: (e as Error).message });
      await this.lease.release().catch(() => this.lease.abandon());
    }
  }

  private async lose(why: string): Promise<void> {
    const r = this.running;
    if (!r) return;
    this.running = null;
    this.lease.abandon();
    this.bus.terms.drop(this.lease.role, r.term);
    this.log.warn('role stopped here', { role: this.lease.role, term: r.term, why });
    await r.stop().catch((e: unknown) => this.log.warn('stopping a role failed', { role: this.lease.role, error: (e as Error).message }));
  }

  /** The term this node runs the role under now (null: not running here). */
  get runningTerm(): number | null { return this.running?.term ?? null; }

  async end(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.watchdog) clearInterval(this.watchdog);
    await this.serial(async () => {
      const r = this.running;
      this.running = null;
      if (r) {
        await r.stop().catch((e: unknown) => this.log.warn('stopping a role failed', { role: this.lease.role, error: (e as Error).message }));
        this.bus.terms.drop(this.lease.role, r.term);
      }
      // Released only once its actors stopped: the next holder never overlaps this one.
      await this.lease.release().catch((e: unknown) => this.log.warn('releasing a role lease failed; it expires', { role: this.lease.role, error: (e as Error).message }));
    });
  }
}

export class RoleHost {
  private readonly campaigns: Campaign[] = [];

  constructor(private readonly bus: Bus, private readonly node: string, private readonly ttlMs?: number) {}

  /** Campaigns for `role`; resolves after the first round (the role runs here if the lease was free). */
  async campaign(role: Role, start: RoleStarter): Promise<void> {
    const kv = await this.bus.kv(this.bus.subjects.kvBucket);
    const c = new Campaign(new RoleLease({ kv, role, node: this.node, log: createLogger('roles'), ...(this.ttlMs ? { ttlMs: this.ttlMs } : {}) }), this.bus, start);
    this.campaigns.push(c);
    await c.begin();
  }

  /** The roles running here now, with their terms. */
  held(): { role: Role; term: number }[] {
    return this.campaigns.flatMap((c) => (c.runningTerm !== null ? [{ role: c.lease.role, term: c.runningTerm }] : []));
  }

  /** Stops every role here and releases its lease. */
  async stop(): Promise<void> {
    await Promise.all(this.campaigns.map((c) => c.end()));
  }
}
