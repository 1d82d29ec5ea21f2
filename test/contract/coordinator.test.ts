// The coordinator against a real nats-server: the epoch record is changed only by
// compare-and-set, regroups after a failure move one epoch however many ranks ask, a rank can
// be dropped (shrink), scale-ups ask a node agent to spawn the new ranks, and bad requests get
// typed errors.
import assert from 'node:assert/strict';
import { startCoordinator } from '../../actors/coordinator.ts';
import { bumpEpoch, epochMembers, withoutGroupOf } from '../../src/job/epoch.ts';
import type { EpochInfo } from '../../src/job/epoch.ts';
import { ActorSystem } from '../../src/runtime/actor-system.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { Bus } from '../../src/bus/bus.ts';
import { InvalidArgumentError, UnavailableError } from '../../src/errors.ts';
import { withNats } from '../support/nats-server.ts';
import { CoordinatorClient, HeartbeatPublisher } from '../../src/bus/clients.ts';

describe('coordinator (real nats-server)', function () {
  this.timeout(30_000);
  const nats = withNats();
  let bus: Bus;
  let system: ActorSystem;
  let coord: ReturnType<typeof startCoordinator>;
  let job = 0;

  beforeEach(async () => {
    const name = `coord${++job}`;
    bus = await Bus.connect({ servers: nats.url, job: name, auth: AuthPolicy.disabled(), name: 'test' });
    system = new ActorSystem('coord-test');
    coord = startCoordinator(system, { bus, dp: 2, deadAfterMs: 2000 });
    await coord.ready;
  });
  afterEach(async () => { await coord.stop(); await system.shutdown(); await bus.close(); });

  const epoch = async () => (await (await bus.kv(bus.subjects.kvBucket)).get<EpochInfo>('epoch'))!.value;
  const regroup = (m: Record<string, unknown>) => bus.request<{ from: EpochInfo; to: EpochInfo; changed: boolean }>(bus.subjects.coord.regroup, m, { timeoutMs: 5000 });

  it('creates epoch 1 with members 0..dp-1 and bumps by compare-and-set', async () => {
    assert.deepEqual(await epoch(), { epoch: 1, partitions: 2, members: [0, 1], cellSize: 1 });
    const r = await bumpEpoch(bus, 3);
    assert.deepEqual(r.to, { epoch: 2, partitions: 3, members: [0, 1, 2], cellSize: 1 });
    assert.deepEqual(await epoch(), r.to);
    await assert.rejects(bumpEpoch(bus, 0), (e: unknown) => e instanceof InvalidArgumentError && /dp must be an integer in \[1, 64\], got 0/.test((e as Error).message));
    await assert.rejects(bumpEpoch(bus, 2.5), InvalidArgumentError);
  });

  it('a regroup from an epoch moves exactly one epoch, however many ranks ask', async () => {
    const rs = await Promise.all([0, 1].map((rank) => regroup({ fromEpoch: 1, rank })));
    assert.equal(rs.filter((r) => r.changed).length, 1, 'one of the two requests changed the epoch');
    assert.deepEqual(await epoch(), { epoch: 2, partitions: 2, members: [0, 1], cellSize: 1 }, 'same members (policy replace)');
    const late = await regroup({ fromEpoch: 1, rank: 0 });
    assert.equal(late.changed, false);
    assert.equal(late.to.epoch, 2);
  });

  it('drops a lost rank (shrink) but never empties the world', async () => {
    const r = await regroup({ rank: 0, remove: 0 });
    assert.deepEqual(r.to, { epoch: 2, partitions: 1, members: [1], cellSize: 1 });
    assert.deepEqual(epochMembers(r.to), [1], 'rank 1 is world rank 0 now (partition 0 of 1)');
    const last = await regroup({ rank: 1, remove: 1 });
    assert.equal(last.changed, false, 'the last member is kept');
    await assert.rejects(regroup({ remove: 'x' }), (e: unknown) => e instanceof InvalidArgumentError && /remove must be a rank id/.test((e as Error).message));
  });

  it('with TP/SP cells (group 2): scale and shrink move whole cells', async () => {
    const kv = await bus.kv(bus.subjects.kvBucket);
    const cur = await kv.get<EpochInfo>('epoch');
    await kv.update('epoch', { epoch: 5, partitions: 2, members: [0, 1, 2, 3], cellSize: 2 }, cur!.revision);
    const up = await bumpEpoch(bus, 3);
    assert.deepEqual(up.to, { epoch: 6, partitions: 3, members: [0, 1, 2, 3, 4, 5], cellSize: 2 }, 'three cells of two ranks');
    const r = await regroup({ rank: 3, remove: 3 });
    assert.deepEqual(r.to, { epoch: 7, partitions: 2, members: [0, 1, 4, 5], cellSize: 2 }, 'rank 3 lost: its cell (ranks 2, 3) leaves');
    assert.deepEqual(withoutGroupOf(r.to, 9), [0, 1, 4, 5], 'a rank that is not a member changes nothing');
  });

  it('a job whose backend trains one rank (maxDp 1) refuses a scale past it by name and changes nothing', async () => {
    await coord.stop();
    coord = startCoordinator(system, { bus, dp: 2, deadAfterMs: 2000, maxDp: 1 });
    await coord.ready;
    const before = await epoch();
    await assert.rejects(bus.request(bus.subjects.coord.scale, { dp: 2 }, { timeoutMs: 15_000 }),
      (e: unknown) => e instanceof InvalidArgumentError && /scale: this job's backend trains at most dp 1 \(one unsharded rank\), got dp 2/.test((e as Error).message));
    assert.deepEqual(await epoch(), before);
  });

  it('scale-up spreads the new ranks over the node agents, fewest ranks first; without one it refuses and changes nothing', async () => {
    await assert.rejects(bus.request(bus.subjects.coord.scale, { dp: 3 }, { timeoutMs: 15_000 }), (e: unknown) => e instanceof UnavailableError && /no node agent/.test((e as Error).message));
    assert.deepEqual(await epoch(), { epoch: 1, partitions: 2, members: [0, 1], cellSize: 1 }, 'a refused scale changes nothing');
    // Two node agents (their heartbeats), each answering spawn requests.
    const spawned: { node: string; rank: number; minEpoch: number }[] = [];
    const subs = ['a', 'b'].map((node) => bus.subscribe<{ rank: number; minEpoch: number }>(bus.subjects.nodeSpawn(node), (m) => { spawned.push({ node, ...m }); return { pid: 1 }; }));
    const beats = new HeartbeatPublisher(bus);
    beats.node('a', { pid: 1, ranks: [0, 1] });
    beats.node('b', { pid: 2, ranks: [] });
    await bus.flush();
    await new Promise((r) => setTimeout(r, 200));
    const r = await bus.request<{ to: EpochInfo; spawned: { rank: number; node: string }[] }>(bus.subjects.coord.scale, { dp: 5 }, { timeoutMs: 15_000 });
    assert.equal(r.to.partitions, 5);
    assert.deepEqual(r.spawned.map((s) => s.rank), [2, 3, 4]);
    // b hosts none, a two: b gets ranks 2 and 3, then the tie goes to a.
    assert.deepEqual(spawned, [{ node: 'b', rank: 2, minEpoch: r.to.epoch }, { node: 'b', rank: 3, minEpoch: r.to.epoch }, { node: 'a', rank: 4, minEpoch: r.to.epoch }]);
    const down = await bus.request<{ to: EpochInfo; retiring: number[] }>(bus.subjects.coord.scale, { dp: 1 }, { timeoutMs: 15_000 });
    assert.deepEqual(down.retiring, [1, 2, 3, 4]);
    assert.deepEqual(down.to.members, [0]);
    await assert.rejects(bus.request(bus.subjects.coord.scale, { dp: 'three' }, { timeoutMs: 5000 }), InvalidArgumentError);
    for (const s of subs) s.unsubscribe();
  });

  it('ignores a heartbeat not newer than the last one from its sender (a replay keeps no rank alive)', async () => {
    const coordClient = new CoordinatorClient(bus);
    const member = async () => (await coordClient.status()).members.find((m) => m.rank === 7);
    const until = async (ok: () => Promise<boolean>) => { for (let i = 0; i < 100 && !(await ok()); i++) await new Promise((r) => setTimeout(r, 20)); };
    // Raw publishes: a captured beat is re-sent byte for byte (same at, same seq).
    const beat = { rank: 7, pid: 4242, step: 5, state: 'training', held: 0, epoch: 1, at: Date.now(), seq: 3 };
    bus.publish(bus.subjects.hb('rank-7'), beat);
    await until(async () => (await member())?.step === 5);
    assert.equal((await member())?.step, 5);
    bus.publish(bus.subjects.hb('rank-7'), { ...beat, step: 2, at: beat.at - 1000, seq: 1 }); // older
    await new Promise((r) => setTimeout(r, 600));
    bus.publish(bus.subjects.hb('rank-7'), beat); // the same beat again
    await bus.flush();
    await new Promise((r) => setTimeout(r, 100));
    const m = (await member())!;
    assert.equal(m.step, 5, 'the older beat changed nothing');
    assert.ok(m.silentMs >= 600, `a replayed beat refreshed the rank (silent ${m.silentMs} ms)`);
    bus.publish(bus.subjects.hb('rank-7'), { ...beat, step: 6, seq: 4 }); // same ms, next seq: newer
    await until(async () => (await member())?.step === 6);
    assert.equal((await member())?.step, 6);
  });
});
