// Two queues on one write-ahead log (an old holder of the queue role still running while the
// new one took over, e.g. its host cut off the network): the second writer's record makes the
// first queue's next append fail, that queue rebuilds its ledger from the log, and nothing it
// was told is lost with the append, the epoch above all (the epoch watch tells each change
// once). Real nats-server; the second writer is a ledger rebuilt from the same log.
import assert from 'node:assert/strict';
import { startQueue, type QueueMsg } from '../../actors/queue.ts';
import { ActorSystem } from '../../src/runtime/actor-system.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { UnavailableError } from '../../src/errors.ts';
import { auditEvents } from '../../src/ledger/audit.ts';
import { readLedgerEvents, rebuildLedger, WAL_RECORD } from '../../src/ledger/wal.ts';
import { withNats } from '../support/nats-server.ts';
import { sampleRef } from '../support/store-fixtures.ts';

describe('write-ahead log fence: a second queue writing to the same log (real server)', function () {
  this.timeout(60_000);
  const nats = withNats();
  let bus: Bus;
  let system: ActorSystem;
  let q: ReturnType<typeof startQueue>;
  before(async () => {
    bus = await Bus.connect({ servers: nats.url, job: 'walfence', auth: AuthPolicy.disabled(), name: 'test' });
    system = new ActorSystem('walfence');
    q = startQueue(system, { bus, tickMs: 60_000 });
  });
  after(async () => { await q.stop(); await system.shutdown(); await bus.close(); });

  const ask = (m: QueueMsg) => system.query(q.ref, m, 10_000);
  const ref = (i: number) => sampleRef({ job: bus.job, sampleId: `s-${i}`, generation: 1 });

  it('the queue\'s append after another writer\'s record fails; the rebuilt ledger holds that record and the epoch it was told', async () => {
    assert.equal(((await ask({ op: 'commit', ref: ref(0), key: 'commit:s-0' })) as { status: string }).status, 'added');
    // The other queue: its own ledger from the log, one commit appended where the log ends.
    const { ledger: other, replay } = await rebuildLedger(bus);
    const put = other.put(ref(1), { key: 'commit:s-1', now: Date.now() });
    await bus.append(bus.subjects.walSubject, { f: WAL_RECORD, events: put.events }, { expectedLastSeq: replay.lastStreamSeq });

    // Told the new epoch now, this queue applies it, and its append is refused: the caller
    // learns it was lost (retryable), not that it took.
    await assert.rejects(ask({ op: 'epoch', epoch: 2, num: 2 }), (e: unknown) => e instanceof UnavailableError && /moved under this queue/.test(e.message));

    // The next request finds the ledger rebuilt: the other queue's sample is in it, and so is
    // the epoch (an older one told now changes nothing).
    assert.deepEqual(await ask({ op: 'epoch', epoch: 1, num: 1 }), { epoch: 2, num: 2 });
    const committed = (await ask({ op: 'committed' })) as { sampleIds: string[] };
    assert.deepEqual(committed.sampleIds.sort(), ['s-0', 's-1']);
    const status = (await ask({ op: 'status' })) as { rebuilds: number };
    assert.equal(status.rebuilds, 1);

    // The log: this queue's put, the other's, then the epoch, once; the audit is clean.
    const events = await readLedgerEvents(bus);
    assert.deepEqual(events.map((e) => e.type), ['put', 'put', 'epoch']);
    const audit = auditEvents(events);
    assert.deepEqual(audit.problems, []);
  });
});
