// Handler-side replay guards (issue 10, item 6): a message that has no idempotency key must
// be harmless when it arrives again. The queue ignores an epoch record not newer than the one
// it grants under (a rolled-back KV value); the janitor frees a sample once however often
// `store.free` announces it. (The coordinator's heartbeat guard: coordinator.test.ts.)
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startQueue } from '../../actors/queue.ts';
import { startJanitor } from '../../actors/janitor.ts';
import { changeEpoch, ensureEpoch } from '../../src/job/epoch.ts';
import { ActorSystem } from '../../src/runtime/actor-system.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { JanitorClient, QueueClient, publish } from '../../src/bus/clients.ts';
import { InvalidArgumentError, StaleEpochError } from '../../src/errors.ts';
import { SharedDirFeatureStore } from '../../src/store/shared-dir.ts';
import { withNats } from '../support/nats-server.ts';
import { makeSample } from '../support/store-fixtures.ts';

const until = async (ok: () => Promise<boolean>, ms = 10_000) => {
  const end = Date.now() + ms;
  while (!(await ok())) { if (Date.now() > end) throw new Error('condition not met in time'); await new Promise((r) => setTimeout(r, 25)); }
};

describe('replay guards of the handlers (real nats-server)', function () {
  this.timeout(30_000);
  const nats = withNats();

  it('queue: an epoch record not newer than the current one is ignored', async () => {
    const bus = await Bus.connect({ servers: nats.url, job: 'rg-epoch', auth: AuthPolicy.disabled(), name: 'test' });
    const system = new ActorSystem('rg');
    try {
      await ensureEpoch(bus, 2);
      const q = startQueue(system, { bus, tickMs: 1000 });
      const queue = new QueueClient(bus);
      await changeEpoch(bus, () => [0, 1]); // epoch 2
      await changeEpoch(bus, () => [0, 1]); // epoch 3
      await until(async () => (await queue.status()).epoch === 3);
      // A captured older record put back (the KV value rolled back to epoch 2).
      const kv = await bus.kv(bus.subjects.kvBucket);
      await kv.put('epoch', { epoch: 2, partitions: 2, members: [0, 1], cellSize: 1 });
      await new Promise((r) => setTimeout(r, 400));
      assert.equal((await queue.status()).epoch, 3, 'the queue went back to an older epoch');
      await assert.rejects(queue.credit({ consumer: 'c', partition: [0, 2], epoch: 2, max: 1 }, { retries: 0 }), StaleEpochError);
      assert.equal((await queue.credit({ consumer: 'c', partition: [0, 2], epoch: 3, max: 1 })).epoch, 3);
      // A malformed request is refused by the table's parser, naming the field.
      await assert.rejects(bus.request(bus.subjects.queue.credit, { consumer: 'c', partition: [0, 2], epoch: 'three', max: 1 }, { retries: 0 }),
        (e: unknown) => e instanceof InvalidArgumentError && /credit: epoch must be an integer >= 0/.test((e as Error).message));
      await q.stop();
    } finally { await system.shutdown(); await bus.close(); }
  });

  it('janitor: a repeated store.free frees the sample once and never a newer generation', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dw-rg-'));
    const bus = await Bus.connect({ servers: nats.url, job: 'rg-free', auth: AuthPolicy.disabled(), name: 'test' });
    const store = await SharedDirFeatureStore.attach({ dir, storeId: 'rg', job: 'rg-free', auth: AuthPolicy.disabled(), producer: { node: 't', actor: 'test', incarnation: 1 } });
    const system = new ActorSystem('rg-j');
    try {
      const j = startJanitor(system, { bus, store, gcEveryMs: 60_000 });
      const janitor = new JanitorClient(bus);
      const a = await store.put('row-1', makeSample(1, 4, 8));
      const b = await store.put('row-2', makeSample(2, 4, 8));
      for (let i = 0; i < 3; i++) publish.storeFree(bus, { ref: a, why: 'consumed' });
      await until(async () => (await janitor.status()).freed >= 1);
      await new Promise((r) => setTimeout(r, 200));
      const st = await janitor.status();
      assert.equal(st.freed, 1, 'freed more than once');
      assert.equal(st.usage.samples, 1, 'the other sample must survive');
      await assert.rejects(store.get(a), /gone|released|SAMPLE_GONE/i);
      assert.ok(Object.keys(await store.get(b)).length > 0, "the other sample is readable");
      // A dead-letter notice of generation 1, replayed after row-2 was put again (generation 2),
      // must not free the newer generation.
      const b2 = await store.put('row-2', makeSample(3, 4, 8));
      assert.ok(b2.generation > b.generation);
      for (let i = 0; i < 3; i++) publish.storeFree(bus, { ref: b, why: 'dead' });
      await new Promise((r) => setTimeout(r, 300));
      assert.equal((await janitor.status()).aborted, 0, 'an old dead-letter notice aborted a newer generation');
      assert.ok(Object.keys(await store.get(b2)).length > 0, 'the newer generation is readable');
      publish.storeFree(bus, { ref: b2, why: 'dead' });
      await until(async () => (await janitor.status()).aborted === 1);
      await assert.rejects(store.get(b2), /gone|aborted|SAMPLE_GONE/i);
      await j.stop();
    } finally { await system.shutdown(); await store.close(); await bus.close(); rmSync(dir, { recursive: true, force: true }); }
  });
});
