import assert from 'node:assert/strict';
import { ConflictError, StaleTermError } from '../../src/errors.ts';
import { createLogger } from '../../src/log.ts';
import { RoleLease, type LeaseKv } from '../../src/bus/role-lease.ts';
import { TermFence } from '../../src/bus/terms.ts';
import type { KvValue } from '../../src/bus/kv.ts';
import type { RoleLeaseRecord } from '../../src/wire/protocol.ts';

// The lease's logic against a KV with the semantics of a JetStream bucket (revisions,
// create-if-absent, compare-and-set), held in a Map; the lease against real NATS is in
// test/contract/role-failover.test.ts.
class MapKv implements LeaseKv {
  private rev = 0;
  readonly data = new Map<string, KvValue>();
  failing = false;
  async get<T>(key: string): Promise<KvValue<T> | null> {
    if (this.failing) throw new Error('kv unreachable');
    return (this.data.get(key) as KvValue<T> | undefined) ?? null;
  }
  async create(key: string, value: unknown): Promise<number> {
    if (this.failing) throw new Error('kv unreachable');
    if (this.data.has(key)) throw new ConflictError(`${key} exists`);
    this.data.set(key, { key, value: structuredClone(value), revision: ++this.rev });
    return this.rev;
  }
  async update(key: string, value: unknown, revision: number): Promise<number> {
    if (this.failing) throw new Error('kv unreachable');
    if (this.data.get(key)?.revision !== revision) throw new ConflictError(`${key} not at ${revision}`);
    this.data.set(key, { key, value: structuredClone(value), revision: ++this.rev });
    return this.rev;
  }
  record(role = 'queue'): RoleLeaseRecord { return this.data.get(`role.${role}`)!.value as RoleLeaseRecord; }
}

const log = createLogger('test.role-lease');
let clock = 0;
const now = () => clock;
const lease = (kv: LeaseKv, node: string, o: Partial<{ pid: number; host: string; alive: boolean }> = {}) =>
  new RoleLease({ kv, role: 'queue', node, ttlMs: 1000, log, now, pid: o.pid ?? 100, host: o.host ?? 'h-' + node, pidAlive: () => o.alive ?? true });

describe('role lease: one holder, terms, takeover', () => {
  beforeEach(() => { clock = 1_000_000; });

  it('the first campaigner takes a free lease at term 1; a second one waits', async () => {
    const kv = new MapKv();
    const a = lease(kv, 'a'), b = lease(kv, 'b');
    assert.deepEqual(await a.step(), { holding: true, term: 1 });
    assert.deepEqual(await b.step(), { holding: false });
    assert.equal(kv.record().node, 'a');
    assert.ok(a.valid());
  });

  it('two campaigners for a free lease: exactly one wins', async () => {
    const kv = new MapKv();
    const [ra, rb] = await Promise.all([lease(kv, 'a').step(), lease(kv, 'b').step()]);
    assert.equal([ra, rb].filter((r) => r.holding).length, 1);
  });

  it('a renewing holder keeps the role; a watcher takes it only after a whole ttl without a renewal, at term + 1', async () => {
    const kv = new MapKv();
    const a = lease(kv, 'a'), b = lease(kv, 'b');
    await a.step();
    for (let i = 0; i < 8; i++) {
      clock += 250;
      assert.deepEqual(await a.step(), { holding: true, term: 1 });
      assert.deepEqual(await b.step(), { holding: false });
    }
    // a dies: b sees the same revision for a ttl, then takes over
    clock += 250; assert.equal((await b.step()).holding, false);
    clock += 749; assert.equal((await b.step()).holding, false, 'b saw the last revision 999 ms ago');
    clock += 1; assert.deepEqual(await b.step(), { holding: true, term: 2 });
    assert.equal(kv.record().node, 'b');
  });

  it('a holder stops being valid 0.6 ttl after its last renewal was sent, before any watcher can take over', async () => {
    const kv = new MapKv();
    const a = lease(kv, 'a'), b = lease(kv, 'b');
    await a.step();
    await b.step(); // b first sees the record now
    kv.failing = true;
    clock += 599; assert.ok(a.valid());
    clock += 1; assert.equal(a.valid(), false);
    await assert.rejects(a.step(), /unreachable/);
    kv.failing = false;
    clock += 399; assert.equal((await b.step()).holding, false, 'b waits a whole ttl from when it saw the record');
    clock += 1; assert.equal((await b.step()).holding, true);
  });

  it('a resurrected old holder learns at its first renewal that it lost the role', async () => {
    const kv = new MapKv();
    const a = lease(kv, 'a'), b = lease(kv, 'b');
    await a.step(); await b.step();
    clock += 5000; // a frozen
    assert.equal(a.valid(), false, 'frozen past its lease: not valid on waking');
    await b.step();
    assert.equal(a.term, 1);
    assert.deepEqual(await a.step(), { holding: false });
    assert.equal(a.term, null);
    assert.equal(kv.record().term, 2);
  });

  it('a released lease is taken at once; its term still grows', async () => {
    const kv = new MapKv();
    const a = lease(kv, 'a'), b = lease(kv, 'b');
    await a.step(); await b.step();
    await a.release();
    assert.equal(kv.record().node, null);
    assert.deepEqual(await b.step(), { holding: true, term: 2 });
  });

  it('a lease of a dead process of this machine with this node id is taken at once, a live one\'s is not', async () => {
    const kv = new MapKv();
    await lease(kv, 'a', { pid: 1, host: 'm' }).step();
    assert.equal((await lease(kv, 'a', { pid: 2, host: 'm', alive: true }).step()).holding, false, 'pid 1 alive');
    assert.equal((await lease(kv, 'a', { pid: 2, host: 'other', alive: false }).step()).holding, false, 'another machine');
    assert.deepEqual(await lease(kv, 'a', { pid: 2, host: 'm', alive: false }).step(), { holding: true, term: 2 });
  });
});

describe('term fence', () => {
  it('refuses a message of an older term than one seen, admits unstamped and newer ones', () => {
    const f = new TermFence();
    assert.ok(f.admit('queue', undefined));
    assert.ok(f.admit('queue', 2));
    assert.ok(f.admit('queue', 2));
    assert.equal(f.admit('queue', 1), false);
    assert.equal(f.refused.get('queue'), 1);
    assert.ok(f.admit('coordinator', 1), 'terms are per role');
    assert.equal(f.admit('queue', 'x'), false, 'a malformed term');
    assert.throws(() => f.check('queue', 1, 'lease message'), (e: unknown) => e instanceof StaleTermError && e.retryable && /term 1, older than term 2/.test(e.message));
  });

  it('a holder stamps its term only while it holds the role', () => {
    const f = new TermFence();
    f.hold('queue', 3);
    assert.equal(f.termOf('queue'), 3);
    assert.equal(f.newestOf('queue'), 3);
    f.drop('queue', 2);
    assert.equal(f.termOf('queue'), 3, 'dropping another term keeps this one');
    f.drop('queue', 3);
    assert.equal(f.termOf('queue'), undefined);
    assert.throws(() => f.hold('queue', 0), RangeError);
  });
});
