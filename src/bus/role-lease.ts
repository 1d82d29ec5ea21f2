// A singleton role's leader lease: the record `role.<role>` of the job's replicated KV bucket
// (RoleLeaseRecord), written only by compare-and-set. Every node that may run the role
// campaigns; the one whose write wins holds the role under a term one above the previous
// holder's, and renews the record every ttl/4. The others watch the record's revision: one
// that has not moved for a whole ttl, by the watcher's own clock, is a dead holder's, and the
// watcher takes the role over by compare-and-set (of all watchers, one write wins).
//
// No two holders act at once, by clocks' rates only (never by comparing two machines' clocks):
// a holder counts its lease from the moment it SENT its last successful renewal, which is
// before the record changed, and stops acting 0.6·ttl after that; a watcher counts from the
// moment it first SAW that revision, which is after the change, and waits a whole ttl. A
// holder that cannot renew (its machine cut off, its NATS server gone) stops on its own in
// time; one frozen past its lease (SIGSTOP) finds on waking that valid() is false, and its
// first renewal fails on the revision. What it had in flight is fenced by the term every
// message of the role carries (src/bus/terms.ts) and, for the queue, by the write-ahead
// log's expected sequence number.
//
// Taken at once, without the ttl: a lease its holder released (node: null, on a clean stop),
// and one held by a process of this machine with the same node id that no longer exists.
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { ConflictError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { ROLES, STORAGE, type Role, type RoleLeaseRecord } from '../wire/protocol.ts';
import type { KvValue } from './kv.ts';

/** What the lease needs of a KV bucket (BusKv provides it). */
export interface LeaseKv {
  get<T>(key: string): Promise<KvValue<T> | null>;
  create(key: string, value: unknown): Promise<number>;
  update(key: string, value: unknown, revision: number): Promise<number>;
}

export interface RoleLeaseOptions {
  kv: LeaseKv;
  role: Role;
  node: string;
  /** The lease's time to live (default 4000 ms). */
  ttlMs?: number;
  log: Logger;
  /** The clock (tests); default Date.now. */
  now?: () => number;
  /** Whether a pid of this machine is alive (tests); default process.kill(pid, 0). */
  pidAlive?: (pid: number) => boolean;
  host?: string;
  pid?: number;
}

export type LeaseState = { holding: false } | { holding: true; term: number };

function defaultPidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

export class RoleLease {
  readonly ttlMs: number;
  readonly incarnation = randomUUID();
  private readonly key: string;
  private readonly now: () => number;
  private readonly host: string;
  private readonly pid: number;
  private held: { term: number; revision: number; sentAt: number } | null = null;
  /** The revision last seen of another holder's record, and when it was first seen at it. */
  private observed: { revision: number; since: number } | null = null;

  constructor(private readonly o: RoleLeaseOptions) {
    this.ttlMs = o.ttlMs ?? 4000;
    if (!(this.ttlMs >= 200)) throw new RangeError(`role lease ttl must be >= 200 ms, got ${this.ttlMs}`);
    this.key = STORAGE.roleKey(o.role);
    this.now = o.now ?? Date.now;
    this.host = o.host ?? hostname();
    this.pid = o.pid ?? process.pid;
  }

  get role(): Role { return this.o.role; }
  /** The term held, or null. */
  get term(): number | null { return this.held?.term ?? null; }

  /** Held, and renewed recently enough that no one else can have taken it: the role may act. */
  valid(): boolean {
    return this.held !== null && this.now() - this.held.sentAt < 0.6 * this.ttlMs;
  }

  /** How often to call step() (a quarter of the ttl). */
  get periodMs(): number { return Math.max(50, Math.floor(this.ttlMs / 4)); }

  private record(term: number, node: string | null): RoleLeaseRecord {
    return { role: this.o.role, term, node, host: this.host, pid: this.pid, incarnation: this.incarnation, ttlMs: this.ttlMs, at: this.now() };
  }

  /**
   * One round: a holder renews (or learns it lost the lease), a watcher takes a free, released
   * or expired lease. Returns the state after it. KV failures other than a lost
   * compare-and-set propagate; the holder's valid() runs out on its own meanwhile.
   */
  async step(): Promise<LeaseState> {
    if (this.held) return this.renew();
    const cur = await this.o.kv.get<RoleLeaseRecord>(this.key);
    if (!cur) return this.take(null);
    const rec = cur.value;
    if (rec.node === null || this.deadOnThisMachine(rec)) return this.take(cur);
    if (this.observed?.revision !== cur.revision) {
      this.observed = { revision: cur.revision, since: this.now() };
      return { holding: false };
    }
    if (this.now() - this.observed.since >= Math.max(this.ttlMs, rec.ttlMs)) return this.take(cur);
    return { holding: false };
  }

  /** Gives the lease up (a clean stop): the next campaigner takes it at once. */
  async release(): Promise<void> {
    const h = this.held;
    this.held = null;
    if (!h) return;
    try { await this.o.kv.update(this.key, this.record(h.term, null), h.revision); } catch (e) {
      if (!(e instanceof ConflictError)) throw e; // someone took it already
    }
  }

  /** Forgets the lease without writing (it was lost, or its holder gives up acting). */
  abandon(): void { this.held = null; }

  private deadOnThisMachine(rec: RoleLeaseRecord): boolean {
    return rec.node === this.o.node && rec.host === this.host && rec.incarnation !== this.incarnation
      && rec.pid !== this.pid && !(this.o.pidAlive ?? defaultPidAlive)(rec.pid);
  }

  private async take(cur: KvValue<RoleLeaseRecord> | null): Promise<LeaseState> {
    const term = (cur?.value.term ?? 0) + 1;
    const sentAt = this.now();
    try {
      const revision = cur ? await this.o.kv.update(this.key, this.record(term, this.o.node), cur.revision) : await this.o.kv.create(this.key, this.record(term, this.o.node));
      this.held = { term, revision, sentAt };
      this.observed = null;
      this.o.log.info('role lease taken', { role: this.o.role, term, from: cur?.value.node ?? null, fromTerm: cur?.value.term ?? null });
      return { holding: true, term };
    } catch (e) {
      if (e instanceof ConflictError) return { holding: false }; // another campaigner won
      throw e;
    }
  }

  private async renew(): Promise<LeaseState> {
    const h = this.held!;
    const sentAt = this.now();
    try {
      const revision = await this.o.kv.update(this.key, this.record(h.term, this.o.node), h.revision);
      if (this.held === h) this.held = { ...h, revision, sentAt };
      return this.held ? { holding: true, term: this.held.term } : { holding: false };
    } catch (e) {
      if (!(e instanceof ConflictError)) throw e;
      this.held = null;
      this.o.log.warn('role lease lost: another node holds the role now', { role: this.o.role, term: h.term });
      return { holding: false };
    }
  }
}

/** Every role's lease record as the KV bucket holds it (null: never taken): who holds what, under which term. */
export async function readRoleLeases(kv: Pick<LeaseKv, 'get'>): Promise<{ role: Role; node: string | null; term: number | null; host: string | null; ageMs: number | null }[]> {
  const now = Date.now();
  return Promise.all(ROLES.map(async (role) => {
    const r = (await kv.get<RoleLeaseRecord>(STORAGE.roleKey(role)))?.value ?? null;
    return { role, node: r?.node ?? null, term: r?.term ?? null, host: r?.host ?? null, ageMs: r ? now - r.at : null };
  }));
}
