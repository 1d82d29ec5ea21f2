// A node frees the samples whose `store.free` it missed. The samples are written, committed,
// consumed and dead-lettered through a queue process while no node listens (as if the node
// were cut off or frozen); then a node agent takes the queue role over the same write-ahead
// log and store directory, and its periodic store reconcile (`queue.finished`) frees exactly
// the consumed and the dead-lettered files: a pending sample and a file no ledger knows stay.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { LeaseMessage } from '../../actors/queue.ts';
import { NodeAgent } from '../../cluster/node.ts';
import { Bus } from '../../src/bus/bus.ts';
import { QueueClient } from '../../src/bus/clients.ts';
import { InvalidArgumentError } from '../../src/errors.ts';
import type { Lease } from '../../src/ledger/ledger.ts';
import { SharedDirFeatureStore } from '../../src/store/shared-dir.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import type { SampleRef } from '../../src/wire/sampleref.ts';
import { until } from '../support/chaos.ts';
import { testSpec } from '../support/jobs.ts';
import { withNats } from '../support/nats-server.ts';
import { killChild, spawnTs, waitForLine } from '../support/procs.ts';
import { makeSample } from '../support/store-fixtures.ts';

describe('store reconcile: a node frees the finished samples whose store.free it missed', function () {
  this.timeout(120_000);
  const nats = withNats();

  it('frees the consumed and the dead-lettered files and a newer orphan copy of a consumed one, keeps a pending one and one in no ledger', async () => {
    const spec = testSpec('recon');
    mkdirSync(spec.runDir, { recursive: true });
    const auth = AuthPolicy.disabled();
    const advertise = { host: '127.0.0.1', port: 40_999 }; // the node's address in the refs (a label here)
    const producer = await SharedDirFeatureStore.attach({ dir: spec.storeDir, storeId: spec.storeId, job: spec.job, auth, producer: { node: 'n1', actor: 'test', incarnation: 1 } });
    producer.advertiseAt(advertise.host, advertise.port);
    const bus = await Bus.connect({ servers: nats.url, job: spec.job, auth, name: 'test' });
    let node: NodeAgent | null = null;
    const queueProc = spawnTs('test/support/queue-child.ts', [nats.url, spec.job, '1', '30000']);
    try {
      await waitForLine(queueProc, 'ready');
      const refs: Record<string, SampleRef> = {};
      for (const [i, id] of ['consumed-1', 'dead-1', 'pending-1', 'unknown-1'].entries()) refs[id] = await producer.put(id, makeSample(i + 1, 8, 16));
      const queue = new QueueClient(bus);
      refs['orphan-1'] = await producer.put('orphan-1', makeSample(9, 8, 16));
      for (const id of ['consumed-1', 'dead-1', 'pending-1', 'orphan-1']) await queue.commit(refs[id]!);
      // Lease two, ack one, dead-letter the other: the queue announces both on store.free, which no node hears.
      const got: Lease[] = [];
      const done = new Set<string>();
      const sub = bus.subscribe<LeaseMessage>(bus.subjects.part(1, 0), (m) => { got.push(...m.leases); }, { dedupe: false });
      await bus.flush();
      while (done.size < 3) {
        await queue.credit({ consumer: 'c0', partition: [0, 1], epoch: 1, max: 1 });
        await until('a lease', 5000, () => got.length > 0);
        for (const l of got.splice(0)) {
          if (l.sampleId === 'consumed-1' || l.sampleId === 'orphan-1') await queue.ack({ leaseId: l.leaseId, epoch: l.epoch });
          else if (l.sampleId === 'dead-1') await queue.fail({ leaseId: l.leaseId, epoch: l.epoch, retryable: false, reason: 'test' });
          else { await queue.release({ leaseId: l.leaseId, epoch: l.epoch }); continue; }
          done.add(l.sampleId);
        }
      }
      sub.unsubscribe();
      // A rollout that lost its role writes orphan-1 again after the ledger consumed it: a
      // newer generation than the ledger's, which it would refuse (the older file is retired).
      refs['orphan-1'] = await producer.put('orphan-1', makeSample(10, 8, 16));
      await killChild(queueProc, 'SIGTERM');
      const file = (id: string) => join(spec.storeDir, `${id}.g${refs[id]!.generation}.safetensors`);
      for (const id of Object.keys(refs)) assert.ok(existsSync(file(id)), `${id} is still on disk before any node ran`);

      node = await NodeAgent.start({ spec, nats: nats.url, nodeId: 'n1', roles: ['queue'], auth, storeDir: spec.storeDir, listen: { host: '127.0.0.1', port: 0 }, advertise });
      // Its own timer (every 5 s) frees them; nothing else runs that would.
      await until('the consumed and dead-lettered samples and the orphan freed by the node', 20_000, () => !existsSync(file('consumed-1')) && !existsSync(file('dead-1')) && !existsSync(file('orphan-1')));
      assert.ok(existsSync(file('pending-1')), 'a pending sample is not freed');
      assert.ok(existsSync(file('unknown-1')), 'a file no ledger knows is not freed by the reconcile');
      assert.equal(await node.reconcileStore(), 0, 'a second reconcile frees nothing');
      // The endpoint itself: any generation of a finished sample is finished; bad requests are refused by field.
      const asked = await queue.finished({ samples: [{ sampleId: 'consumed-1', generation: refs['consumed-1']!.generation }, { sampleId: 'consumed-1', generation: refs['consumed-1']!.generation + 1 }, { sampleId: 'pending-1', generation: refs['pending-1']!.generation }, { sampleId: 'nobody', generation: 0 }] });
      const g = refs['consumed-1']!.generation;
      assert.deepEqual(asked.finished, [{ sampleId: 'consumed-1', generation: g, why: 'consumed' }, { sampleId: 'consumed-1', generation: g + 1, why: 'consumed' }], 'a newer copy of a finished sample is finished (the ledger refuses it); a pending or unknown sample is not');
      assert.deepEqual((await queue.finished({ samples: [{ sampleId: 'dead-1', generation: 0 }] })).finished, [{ sampleId: 'dead-1', generation: 0, why: 'dead' }], 'an older copy of a finished sample is finished too');
      await assert.rejects(queue.finished({ samples: [] }), (e: unknown) => e instanceof InvalidArgumentError && /samples must be a list of 1\.\.1000/.test((e as Error).message));
      await assert.rejects(queue.finished({ samples: [{ sampleId: '../x', generation: 1 }] }), (e: unknown) => e instanceof InvalidArgumentError && /samples\[0\]: sampleId/.test((e as Error).message));
    } finally {
      await killChild(queueProc, 'SIGKILL');
      await node?.stop();
      await producer.close();
      await bus.close();
    }
  });
});
