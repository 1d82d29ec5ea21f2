// The protocol table (src/wire/protocol.ts): subjects unique, the job's subject names derived
// from it, parsers that refuse bad fields by name, key rules; and, against a real nats-server
// with a node agent running the queue, coordinator and janitor, every request subject of the
// table has a responder that parses with the table (a table entry no actor serves fails here).
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { PROTOCOL, STORAGE, subjectOf, type EndpointName, type Endpoint } from '../../src/wire/protocol.ts';
import { subjects } from '../../src/wire/subjects.ts';
import { InvalidArgumentError, TimeoutError } from '../../src/errors.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { CoordinatorClient, HeartbeatPublisher, QueueClient } from '../../src/bus/clients.ts';
import { NodeAgent } from '../../cluster/node.ts';
import { withNats } from '../support/nats-server.ts';
import { testSpec } from '../support/jobs.ts';
import { sampleRef } from '../support/store-fixtures.ts';
import { wireTable } from '../../scripts/wire-table.ts';
import { LatestPerSender } from '../../src/wire/freshness.ts';

const names = Object.keys(PROTOCOL) as EndpointName[];
const E = (n: EndpointName) => PROTOCOL[n] as unknown as Endpoint<unknown, unknown, unknown[]>;
/** Example parameters of a parametrised subject. */
const PARAMS: Partial<Record<EndpointName, unknown[]>> = { 'node.spawn': ['n1'], 'node.stop': ['n1'], part: [4, 3], hb: ['rank-0'] };
const keyOf = (n: EndpointName, req: unknown) => E(n).key!(req);
const subjectFor = (job: string, n: EndpointName) => `dw.${job}.${E(n).tail(...(PARAMS[n] ?? []))}`;

describe('protocol table', () => {
  it('every pattern and every concrete subject is unique, and every entry is complete', () => {
    assert.equal(new Set(names.map((n) => E(n).pattern)).size, names.length);
    assert.equal(new Set(names.map((n) => subjectFor('j', n))).size, names.length);
    for (const n of names) {
      const e = E(n);
      assert.ok(['request', 'publish', 'broadcast'].includes(e.kind), n);
      assert.ok(e.publisher && e.subscriber && e.keyRule, `${n} lacks publisher/subscriber/keyRule`);
      if (e.kind === 'request') assert.ok(e.timeoutMs > 0 && e.retries >= 0, `${n}: a request needs a timeout`);
      else assert.equal(e.key, null, `${n}: a message has no idempotency key`);
      // The pattern's parameters are what the subject builder fills in.
      const filled = e.pattern.replace(/<[^>]+>/g, (_, i) => String(i));
      assert.equal(filled.split('.').length, subjectFor('j', n).split('.').length - 2, n);
    }
  });

  it('subjects(job) (bus.subjects) is derived from the table', () => {
    const s = subjects('job1');
    const want: [string, string][] = [
      [s.queue.commit, 'queue.commit'], [s.queue.credit, 'queue.credit'], [s.queue.ack, 'queue.ack'], [s.queue.release, 'queue.release'],
      [s.queue.fail, 'queue.fail'], [s.queue.renew, 'queue.renew'], [s.queue.revoke, 'queue.revoke'], [s.queue.status, 'queue.status'],
      [s.queue.committed, 'queue.committed'], [s.queue.finished, 'queue.finished'], [s.coord.scale, 'coord.scale'], [s.coord.regroup, 'coord.regroup'], [s.coord.status, 'coord.status'],
      [s.janitorStatus, 'janitor.status'], [s.storeFree, 'store.free'], [s.ctlEpoch, 'ctl.epoch'], [s.ctlDead, 'ctl.dead'], [s.metrics, 'metrics'], [s.rankDone, 'rank.done'],
    ];
    for (const [got, n] of want) assert.equal(got, subjectOf('job1', n as 'queue.commit'), n);
    assert.equal(s.part(4, 3), subjectOf('job1', 'part', 4, 3));
    assert.equal(s.nodeSpawn('n-1'), subjectOf('job1', 'node.spawn', 'n-1'));
    assert.equal(s.nodeStop('n-1'), 'dw.job1.node.n-1.stop');
    assert.equal(s.hb('rank_0'), subjectOf('job1', 'hb', 'rank_0'));
    assert.equal(s.kvBucket, STORAGE.kvBucket('job1'));
    assert.equal(s.walStream, 'dw_job1_wal');
    assert.throws(() => subjectOf('a.b', 'queue.ack'), InvalidArgumentError);
    assert.throws(() => subjectOf('j', 'part', 2, 2), InvalidArgumentError);
  });

  it('parsers refuse a bad message with InvalidArgumentError naming the field', () => {
    for (const n of names) {
      if (n.endsWith('status') || n === 'queue.committed') { assert.deepEqual(E(n).parse({}), {}); continue; }
      assert.throws(() => E(n).parse(null), InvalidArgumentError, `${n} accepted null`);
      assert.throws(() => E(n).parse([1]), InvalidArgumentError, `${n} accepted a list`);
    }
    const named = (n: EndpointName, msg: unknown, field: RegExp) => assert.throws(() => E(n).parse(msg), (e: unknown) => e instanceof InvalidArgumentError && field.test((e as Error).message), n);
    named('queue.ack', { leaseId: 'L1', epoch: -1 }, /ack: epoch must be an integer >= 0/);
    named('queue.ack', { epoch: 1 }, /ack: leaseId must be a non-empty string/);
    named('queue.credit', { consumer: 'c', partition: [2, 2], epoch: 1, max: 1 }, /credit: partition must be \[index, num\]/);
    named('queue.credit', { consumer: 'c', partition: [0, 2], epoch: 1, max: 1.5 }, /credit: max must be/);
    named('queue.revoke', { consumer: 'c', beforeEpoch: 'x' }, /revoke: beforeEpoch/);
    named('coord.regroup', { remove: 'x' }, /remove must be a rank id/);
    named('coord.scale', { dp: 'three' }, /scale: needs dp/);
    named('hb', { rank: 1, pid: 2, at: 'now' }, /heartbeat: at must be a finite number/);
    named('ctl.epoch', { epoch: 1 }, /ctl.epoch: partitions must be/);
    assert.throws(() => E('queue.commit').parse({ ref: { v: 2 } }), (e: Error & { code?: string }) => e.code === 'DECODE');
    assert.deepEqual(E('queue.fail').parse({ leaseId: 'L', epoch: 2 }), { leaseId: 'L', epoch: 2, retryable: true, reason: '' });
  });

  it('scripts/wire-table.ts prints one row per table entry', () => {
    const rows = wireTable().split('\n').filter((l) => l.startsWith('| `dw.'));
    assert.equal(rows.length, names.length);
    for (const n of names) assert.ok(rows.some((r) => r.startsWith(`| \`dw.<job>.${E(n).pattern}\` | ${E(n).kind} |`)), n);
  });

  it('docs/wire.md carries the table as scripts/wire-table.ts prints it (the document cannot drift)', () => {
    const doc = readFileSync(new URL('../../docs/wire.md', import.meta.url), 'utf8');
    const m = /<!-- subjects:begin[^\n]*-->\n([\s\S]*?)<!-- subjects:end -->/.exec(doc);
    assert.ok(m, 'docs/wire.md has the subjects:begin / subjects:end markers');
    assert.equal(m[1], wireTable(), 'regenerate it: node --import tsx scripts/wire-table.ts');
  });

  it('idempotency keys follow the documented rules', () => {
    const ref = sampleRef({ job: 'j', sampleId: 's-1', generation: 7 });
    assert.equal(keyOf('queue.commit', { ref }), 'commit:s-1:7');
    assert.equal(keyOf('queue.ack', { leaseId: 'L9', epoch: 1 }), 'ack:L9');
    assert.equal(keyOf('queue.release', { leaseId: 'L9', epoch: 1 }), 'release:L9');
    assert.equal(keyOf('queue.fail', { leaseId: 'L9', epoch: 1, retryable: true, reason: '' }), 'fail:L9');
    assert.equal(keyOf('coord.regroup', { rank: 3, fromEpoch: 5 }), 'regroup:3:5');
    assert.equal(keyOf('coord.regroup', { rank: 3, fromEpoch: 5, by: 'node' }), null);
    assert.equal(keyOf('node.spawn', { rank: 2, minEpoch: 4 }), 'spawn:2:4');
    assert.equal(keyOf('coord.scale', { dp: 2, at: 99 }), 'scale:2:99');
    assert.equal(PROTOCOL['queue.renew'].key, null, 'a renewal must never be answered from the reply cache');
  });
});

describe('LatestPerSender (the heartbeat replay guard)', () => {
  it('takes only a message newer than the last one from its sender, ordered by (at, seq)', () => {
    const g = new LatestPerSender(2);
    assert.equal(g.accept('a', 100, 1), true);
    assert.equal(g.accept('a', 100, 1), false, 'an exact replay');
    assert.equal(g.accept('a', 99, 9), false, 'older');
    assert.equal(g.accept('a', 100, 2), true, 'same ms, next seq');
    assert.equal(g.accept('b', 1), true, 'senders are independent');
    assert.equal(g.accept('a', Number.NaN), false);
    assert.equal(g.accept('c', 5), true);
    assert.equal(g.size, 2, 'bounded');
  });
});

describe('protocol table against the actors (real nats-server, node agent)', function () {
  this.timeout(60_000);
  const nats = withNats();

  it('every request subject of the table has a responder that parses with the table', async () => {
    const spec = testSpec('proto');
    mkdirSync(spec.runDir, { recursive: true });
    const node = await NodeAgent.start({ spec, nats: nats.url, nodeId: 'n1', roles: ['coordinator', 'queue', 'janitor'], auth: AuthPolicy.disabled() });
    const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth: AuthPolicy.disabled(), name: 'test' });
    try {
      await bus.flush();
      for (const n of names.filter((x) => E(x).kind === 'request')) {
        const subject = subjectFor(spec.job, n);
        const readOnly = n.endsWith('status') || n === 'queue.committed';
        // A message no parser accepts (a list): a responder refuses it by the table, nobody times out.
        const r = await bus.request(subject, readOnly ? {} : [1], { timeoutMs: 3000, retries: 1 }).then((x: unknown) => ({ ok: x }), (e: unknown) => ({ err: e }));
        if ('err' in r) {
          assert.ok(!(r.err instanceof TimeoutError), `${n} (${subject}): no responder`);
          assert.ok(r.err instanceof InvalidArgumentError, `${n}: ${(r.err as Error).message}`);
          assert.match((r.err as Error).message, /message must be a map/, n);
        } else assert.ok(readOnly && r.ok && typeof r.ok === 'object', `${n} answered a malformed request`);
      }
      // The broadcast subjects the coordinator reads: a heartbeat through the client is seen.
      new HeartbeatPublisher(bus).rank(5, { pid: process.pid, step: 1, state: 'training', held: 0, epoch: 1 });
      const coord = new CoordinatorClient(bus);
      for (let i = 0; i < 100 && !(await coord.status()).members.some((m) => m.rank === 5); i++) await new Promise((r) => setTimeout(r, 20));
      assert.ok((await coord.status()).members.some((m) => m.rank === 5), 'the coordinator did not take a heartbeat on the table\'s subject');
      assert.equal((await new QueueClient(bus).status()).samples, 0);
    } finally {
      await bus.close();
      await node.stop();
      rmSync(spec.runDir, { recursive: true, force: true });
    }
  });
});
