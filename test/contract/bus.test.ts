import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { jetstreamManager } from '@nats-io/jetstream';
import { withNats } from '../support/nats-server.ts';
import { Bus, subjects, errorFromWire } from '../../src/bus/bus.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import {
  AuthError, BackpressureError, ConflictError, DraftwireError, InvalidArgumentError, StaleEpochError, TimeoutError, UnavailableError, DecodeError,
} from '../../src/errors.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(pred: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) { if (Date.now() > end) throw new Error('condition not reached in time'); await sleep(10); }
}

const SECRET = 'bus-contract-test-secret-0123456789';

describe('subjects(job)', () => {
  it('builds the documented subjects and rejects bad tokens', () => {
    const s = subjects('job1');
    assert.equal(s.queue.commit, 'dw.job1.queue.commit');
    assert.equal(s.queue.renew, 'dw.job1.queue.renew');
    assert.equal(s.part(4, 3), 'dw.job1.part.4.3');
    assert.equal(s.partAll(4), 'dw.job1.part.4.*');
    assert.equal(s.storeFree, 'dw.job1.store.free');
    assert.equal(s.ctlEpoch, 'dw.job1.ctl.epoch');
    assert.equal(s.nodeSpawn('n-1'), 'dw.job1.node.n-1.spawn');
    assert.equal(s.hb('rank_0'), 'dw.job1.hb.rank_0');
    assert.equal(s.kvBucket, 'dw_job1');
    assert.throws(() => subjects('a.b'), InvalidArgumentError);
    assert.throws(() => subjects('*'), InvalidArgumentError);
    assert.throws(() => s.part(4, 4), InvalidArgumentError);
    assert.throws(() => s.nodeSpawn('x>'), InvalidArgumentError);
  });

  it('rebuilds unknown remote error codes as DraftwireError and known ones as their class', () => {
    const e1 = errorFromWire({ code: 'STALE_EPOCH', message: 'm', retryable: false, detail: { epoch: 3 } }, 's');
    assert.ok(e1 instanceof StaleEpochError);
    assert.equal(e1.detail?.epoch, 3);
    const e2 = errorFromWire({ code: 'MY_CODE', message: 'm', retryable: true }, 's');
    assert.ok(e2 instanceof DraftwireError && e2.code === 'MY_CODE' && e2.retryable);
  });
});

describe('Bus over a real nats-server (auth on)', function () {
  this.timeout(60_000);
  const auth = () => AuthPolicy.fromSecret(SECRET);
  const nats = withNats({ auth: AuthPolicy.fromSecret(SECRET).natsCredentials()! });
  const job = 'bt';
  const S = subjects(job);
  let a: Bus, b: Bus, raw: NatsConnection;
  beforeEach(async () => {
    a = await Bus.connect({ servers: nats.url, job, auth: auth(), name: 'requester' });
    b = await Bus.connect({ servers: nats.url, job, auth: auth(), name: 'responder' });
    raw = await connect(nats.connectOptions);
  });
  afterEach(async () => { await a.close(); await b.close(); await raw.close(); });

  it('request/reply and publish round-trip msgpack bodies (bytes included)', async () => {
    b.subscribe(S.queue.commit, async (m: { n: number; blob: Uint8Array }) => ({ n: m.n + 1, len: m.blob.byteLength }));
    const got: unknown[] = [];
    b.subscribe(S.storeFree, (m) => { got.push(m); });
    await b.flush();
    assert.deepEqual(await a.request(S.queue.commit, { n: 41, blob: new Uint8Array(1000) }), { n: 42, len: 1000 });
    a.publish(S.storeFree, { bytes: 7 });
    await until(() => got.length === 1);
    assert.deepEqual(got, [{ bytes: 7 }]);
    assert.equal(a.stats().attempts, 1);
  });

  it('retries with the same idempotency key after a dropped reply; the reply cache runs the handler once', async () => {
    const keys: Array<[string | undefined, number | undefined]> = [];
    let drops = 1;
    b.faults = { dropReply: () => drops-- > 0 };
    b.subscribe(S.queue.ack, (m: { x: number }, meta) => { keys.push([meta.idempotencyKey, meta.attempt]); return { ok: m.x }; });
    await b.flush();
    const r = await a.request(S.queue.ack, { x: 1 }, { timeoutMs: 600, retries: 3, idempotencyKey: 'ack-1' });
    assert.deepEqual(r, { ok: 1 });
    assert.deepEqual(keys, [['ack-1', 0]]); // handler ran once
    assert.equal(a.stats().retries, 1);
    assert.equal(a.stats().timeouts, 1);
    assert.equal(b.stats().repliesFromCache, 1);
    assert.equal(b.stats().droppedByFault, 1);
  });

  it('without the reply cache the handler sees the same key on the retry', async () => {
    const keys: Array<[string | undefined, number | undefined]> = [];
    let drops = 1;
    b.faults = { dropReply: () => drops-- > 0 };
    b.subscribe(S.queue.renew, (m: { x: number }, meta) => { keys.push([meta.idempotencyKey, meta.attempt]); return m.x; }, { dedupe: false });
    await b.flush();
    assert.equal(await a.request(S.queue.renew, { x: 5 }, { timeoutMs: 600, idempotencyKey: 'renew-7' }), 5);
    assert.deepEqual(keys, [['renew-7', 0], ['renew-7', 1]]);
  });

  it('a dropped request (requester side) is retried; delayMs faults slow both sides', async () => {
    let n = 0;
    b.subscribe(S.queue.credit, () => ++n);
    await b.flush();
    let drops = 2;
    a.faults = { dropRequest: (s) => s === S.queue.credit && drops-- > 0 };
    assert.equal(await a.request(S.queue.credit, {}, { timeoutMs: 100, retries: 3, backoffMs: 10 }), 1);
    assert.equal(a.stats().droppedByFault, 2);
    a.faults = {};
    b.faults = { delayMs: () => 150 };
    const t0 = Date.now();
    assert.equal(await a.request(S.queue.credit, {}, { timeoutMs: 1000 }), 2);
    assert.ok(Date.now() - t0 >= 140);
  });

  it('rejects with TimeoutError when nobody answers (no responders, retried with backoff)', async () => {
    const t0 = Date.now();
    await assert.rejects(a.request(S.queue.fail, { x: 1 }, { timeoutMs: 100, retries: 2, backoffMs: 20, idempotencyKey: 'k9' }), (e: unknown) => {
      assert.ok(e instanceof TimeoutError);
      assert.equal(e.retryable, true);
      assert.equal(e.detail?.idempotencyKey, 'k9');
      assert.equal(e.detail?.attempts, 3);
      return true;
    });
    assert.ok(Date.now() - t0 >= 40);
    assert.equal(a.stats().noResponders, 3);
  });

  it('typed errors round-trip: DraftwireError subclasses, unknown codes, plain Errors', async () => {
    b.subscribe(S.queue.release, (m: { kind: string }) => {
      if (m.kind === 'stale') throw new StaleEpochError('lease echoes epoch 3, queue is at 4', { detail: { have: 3, want: 4 } });
      if (m.kind === 'custom') throw new DraftwireError('CUSTOM_X', 'custom', true);
      throw new Error('a bug');
    });
    await b.flush();
    await assert.rejects(a.request(S.queue.release, { kind: 'stale' }), (e: unknown) => {
      assert.ok(e instanceof StaleEpochError, `got ${(e as Error)?.constructor?.name}`);
      assert.equal(e.code, 'STALE_EPOCH');
      assert.equal(e.retryable, false);
      assert.equal(e.message, 'lease echoes epoch 3, queue is at 4');
      assert.equal(e.detail?.want, 4);
      return true;
    });
    await assert.rejects(a.request(S.queue.release, { kind: 'custom' }), (e: unknown) => e instanceof DraftwireError && e.code === 'CUSTOM_X' && e.retryable);
    await assert.rejects(a.request(S.queue.release, { kind: 'bug' }), (e: unknown) => e instanceof DraftwireError && e.code === 'INTERNAL' && /a bug/.test(e.message));
    assert.equal(b.stats().handlerErrors, 3);
  });

  it('retryable errors are not cached: a retry under the same key runs the handler again', async () => {
    let calls = 0;
    b.subscribe(S.queue.commit, () => { calls++; if (calls === 1) throw new BackpressureError('store full'); return 'ok'; });
    await b.flush();
    await assert.rejects(a.request(S.queue.commit, {}, { idempotencyKey: 'c1' }), BackpressureError);
    assert.equal(await a.request(S.queue.commit, {}, { idempotencyKey: 'c1' }), 'ok');
    assert.equal(await a.request(S.queue.commit, {}, { idempotencyKey: 'c1' }), 'ok'); // cached success
    assert.equal(calls, 2);
  });

  it('retryErrors: a retryable error reply is retried while attempts are left; a non-retryable one, or the last, is the answer', async () => {
    let calls = 0;
    b.subscribe(S.coord.scale, (m: { fail: number }) => { calls++; if (calls <= m.fail) throw new UnavailableError(`down ${calls}`); return `ok after ${calls}`; });
    b.subscribe(S.coord.status, () => { calls++; throw new InvalidArgumentError('bad'); });
    await b.flush();
    assert.equal(await a.request(S.coord.scale, { fail: 2 }, { idempotencyKey: 'r1', retries: 3, retryErrors: true, backoffMs: 1 }), 'ok after 3');
    calls = 0;
    await assert.rejects(a.request(S.coord.scale, { fail: 9 }, { idempotencyKey: 'r2', retries: 2, retryErrors: true, backoffMs: 1 }), (e: unknown) => e instanceof UnavailableError && /down 3/.test((e as Error).message));
    calls = 0;
    await assert.rejects(a.request(S.coord.scale, { fail: 1 }, { idempotencyKey: 'r3', retries: 3, backoffMs: 1 }), UnavailableError); // off by default
    assert.equal(calls, 1);
    calls = 0;
    await assert.rejects(a.request(S.coord.status, {}, { idempotencyKey: 'r4', retries: 3, retryErrors: true, backoffMs: 1 }), InvalidArgumentError);
    assert.equal(calls, 1);
  });

  it('drops (and counts) tampered, replayed, re-addressed, forged and garbage messages without crashing', async () => {
    const seen: unknown[] = [];
    b.subscribe(S.ctlEpoch, (m) => { seen.push(m); });
    const captured: Uint8Array[] = [];
    const spy = raw.subscribe(S.ctlEpoch, { callback: (_e, m) => { captured.push(new Uint8Array(m.data)); } });
    await raw.flush(); await b.flush();
    a.publish(S.ctlEpoch, { epoch: 1 });
    await until(() => seen.length === 1 && captured.length === 1);
    spy.unsubscribe();
    const good = captured[0];
    // 1. replay of the exact bytes
    raw.publish(S.ctlEpoch, good);
    // 2. tampered: flip a byte of the body
    const bad = new Uint8Array(good); bad[bad.length - 40] ^= 0x01;
    raw.publish(S.ctlEpoch, bad);
    // 3. forged with another secret
    const forged = AuthPolicy.fromSecret('some-other-secret-0123456789').seal(new Uint8Array([0x80]));
    raw.publish(S.ctlEpoch, forged);
    // 4. garbage
    raw.publish(S.ctlEpoch, new Uint8Array([0xc1, 0xff, 0x00]));
    raw.publish(S.ctlEpoch, new Uint8Array(0));
    await raw.flush();
    await until(() => b.stats().rejectedAuth + b.stats().rejectedDecode >= 5);
    assert.equal(b.stats().rejectedAuth, 3, JSON.stringify(b.stats()));
    assert.equal(b.stats().rejectedDecode, 2);
    // 5. a sealed message moved to another subject, to a process that never saw its nonce
    const c = await Bus.connect({ servers: nats.url, job, auth: auth(), name: 'other' });
    try {
      const other: unknown[] = [];
      c.subscribe(S.storeFree, (m) => { other.push(m); });
      await c.flush();
      raw.publish(S.storeFree, good);
      await raw.flush();
      await until(() => c.stats().rejectedDecode + c.stats().rejectedAuth === 1);
      assert.equal(c.stats().rejectedDecode, 1, 'subject binding');
      assert.deepEqual(other, []);
    } finally { await c.close(); }
    assert.deepEqual(seen, [{ epoch: 1 }]);
    // Still serving.
    a.publish(S.ctlEpoch, { epoch: 2 });
    await until(() => seen.length === 2);
  });

  it('a requester with the wrong secret gets no answer (TimeoutError), and the responder counts it', async () => {
    let calls = 0;
    b.subscribe(S.queue.commit, () => ++calls);
    await b.flush();
    const creds = AuthPolicy.fromSecret(SECRET).natsCredentials();
    const evil = await Bus.connect({ servers: nats.url, job, auth: AuthPolicy.fromSecret('not-the-job-secret-0123456789'), credentials: creds });
    try {
      await assert.rejects(evil.request(S.queue.commit, {}, { timeoutMs: 100, retries: 1 }), TimeoutError);
      await until(() => b.stats().rejectedAuth === 2);
      assert.equal(calls, 0);
    } finally { await evil.close(); }
  });

  it('refuses bad NATS credentials with AuthError and a dead address with UnavailableError', async () => {
    await assert.rejects(Bus.connect({ servers: nats.url, job, credentials: { user: 'x', pass: 'y' } }), AuthError);
    await assert.rejects(Bus.connect({ servers: nats.url, job, auth: AuthPolicy.disabled() }), AuthError);
    await assert.rejects(Bus.connect({ servers: 'nats://127.0.0.1:1', job, reconnect: false, connectTimeoutMs: 1000 }), UnavailableError);
    assert.throws(() => a.publish('bad subject', {}), InvalidArgumentError);
    assert.throws(() => a.publish(S.storeFree, { d: new Date() }), InvalidArgumentError);
  });

  it('KV: create/update compare-and-set, conflicts are ConflictError, watch sees changes', async () => {
    const kv1 = await a.kv(S.kvBucket);
    const kv2 = await b.kv(S.kvBucket);
    const rev1 = await kv1.create('epoch', { epoch: 1, num: 2 });
    await assert.rejects(kv2.create('epoch', { epoch: 9 }), ConflictError);
    const w = await kv2.watch({ key: 'epoch' });
    const changes: unknown[] = [];
    // A watch delivers the latest value, not every value (history 1): stop at the final one.
    const done = (async () => { for await (const c of w) { changes.push([c.op, c.value, c.revision]); if ((c.value as { epoch?: number })?.epoch === 3) break; } })();
    // Both read rev1 and race to update: exactly one wins.
    const results = await Promise.allSettled([kv1.update('epoch', { epoch: 2, num: 4 }, rev1), kv2.update('epoch', { epoch: 2, num: 3 }, rev1)]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.ok(lost.reason instanceof ConflictError, String(lost.reason));
    const cur = await kv1.get<{ epoch: number }>('epoch');
    assert.equal(cur?.value.epoch, 2);
    assert.equal(cur?.revision, rev1 + 1);
    await kv1.update('epoch', { epoch: 3, num: 4 }, cur!.revision);
    await done;
    w.stop();
    const revs = changes.map((c) => (c as unknown[])[2] as number);
    assert.ok(changes.length >= 1 && changes.every((c) => (c as unknown[])[0] === 'PUT'));
    assert.deepEqual(revs, [...revs].sort((x, y) => x - y), 'revisions in order');
    assert.deepEqual(changes.at(-1), ['PUT', { epoch: 3, num: 4 }, rev1 + 2]);
    assert.equal(await kv1.get('missing'), null);
    // The same through the stream leader (STREAM.MSG.GET, not a direct get): value, revision, absence, delete.
    assert.deepEqual(await kv2.get('epoch', { leader: true }), { key: 'epoch', value: { epoch: 3, num: 4 }, revision: rev1 + 2 });
    assert.equal(await kv2.get('missing', { leader: true }), null);
    await kv1.delete('epoch');
    assert.equal(await kv1.get('epoch'), null);
    assert.equal(await kv2.get('epoch', { leader: true }), null, 'a deleted key reads as absent from the leader too');
  });

  it('KV: watch(updatesOnly) starts at the call; a full watch folds history to the latest per key', async () => {
    const kv = await a.kv('bt_watch', { history: 5 });
    await kv.put('x', 1); await kv.put('x', 2); await kv.put('y', 10); await kv.put('z', 0); await kv.delete('z');
    const full = await kv.watch();
    const upd = await kv.watch({ updatesOnly: true });
    await kv.put('x', 3);
    const seenFull: Array<[string, unknown]> = [];
    for await (const c of full) { seenFull.push([c.key, c.value]); if (c.value === 3) break; }
    const seenUpd: Array<[string, unknown]> = [];
    for await (const c of upd) { seenUpd.push([c.key, c.value]); break; }
    full.stop(); upd.stop();
    assert.deepEqual(seenFull, [['x', 2], ['y', 10], ['x', 3]]);
    assert.deepEqual(seenUpd, [['x', 3]]);
  });

  it('KV: a value written without the MAC is refused by get and skipped by watch', async () => {
    const kv = await a.kv(S.kvBucket);
    await kv.put('good', { v: 1 });
    const rawKv = await new Kvm(raw).open(S.kvBucket);
    await rawKv.put('evil', new Uint8Array([0x81, 0xa1, 0x62, 0xc4, 0x01, 0x90])); // {b: <bytes>} without m
    await kv.put('good2', { v: 2 });
    await assert.rejects(kv.get('evil'), AuthError);
    await assert.rejects(kv.get('evil', { leader: true }), AuthError);
    const w = await kv.watch();
    const keys: string[] = [];
    for await (const c of w) { if (c.op === 'PUT') keys.push(c.key); if (c.key === 'good2') break; }
    w.stop();
    assert.deepEqual(keys, ['good', 'good2']);
    assert.ok(a.stats().rejectedAuth >= 1);
  });

  it('streams: a read whose consumer delivers nothing more reads the rest from the stream leader', async () => {
    // The consumer ends its deliveries at seq 4 while the stream's last seq is 5 (deleted): what
    // a consumer on a replica that stays behind looks like. The read must end, not wait.
    const st = 'bt_stream_stall';
    await a.ensureStream(st, ['bt.sst.>']);
    for (let i = 0; i < 5; i++) await a.append('bt.sst.x', { i });
    const jsm = await jetstreamManager(raw);
    await jsm.streams.deleteMessage(st, 5);
    await jsm.streams.deleteMessage(st, 3);
    const got: number[] = [];
    const t0 = Date.now();
    for await (const r of b.readAll<{ i: number }>(st, 1, { stallMs: 300 })) got.push(r.obj.i);
    assert.deepEqual(got, [0, 1, 3]);
    assert.ok(Date.now() - t0 < 5000, `ended after ${Date.now() - t0} ms`);
  });

  it('streams: an append fenced on the last record\'s id is refused once another record came after it', async () => {
    // The write-ahead log's pipeline (GroupCommit): each record names the one it follows.
    const st = 'bt_stream_msgid';
    await a.ensureStream(st, ['bt.smi.>']);
    assert.equal(await a.append('bt.smi.x', { i: 0 }, { msgId: 'r-0', expectedLastSeq: 0 }), 1);
    assert.equal(await a.append('bt.smi.x', { i: 1 }, { msgId: 'r-1', expectedLastMsgId: 'r-0' }), 2);
    await b.append('bt.smi.x', { i: 2 }); // another writer
    await assert.rejects(a.append('bt.smi.x', { i: 3 }, { msgId: 'r-2', expectedLastMsgId: 'r-1' }), ConflictError);
    // A retry of an append that landed is a duplicate, not a conflict.
    assert.deepEqual(await a.appendAck('bt.smi.x', { i: 1 }, { msgId: 'r-1', expectedLastMsgId: 'r-0' }), { seq: 2, duplicate: true });
    assert.equal((await a.streamInfo(st)).lastSeq, 3);
  });

  it('streams: append returns seq, expected-last-seq conflicts, readAll ends, purge', async () => {
    const st = 'bt_stream1';
    await a.ensureStream(st, ['bt.s1.>']);
    await a.ensureStream(st, ['bt.s1.>']); // idempotent
    const seqs: number[] = [];
    for (let i = 0; i < 10; i++) seqs.push(await a.append(`bt.s1.${i % 2 ? 'odd' : 'even'}`, { i }));
    assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    await assert.rejects(a.append('bt.s1.even', { i: 99 }, { expectedLastSeq: 7 }), ConflictError);
    assert.equal(await a.append('bt.s1.even', { i: 10 }, { expectedLastSeq: 10 }), 11);
    // same msgId twice: one record; the dedupe check wins over expected-last-seq, so a
    // retried conditional append (first ack lost) returns the original seq, not a conflict.
    assert.deepEqual(await a.appendAck('bt.s1.even', { i: 11 }, { msgId: 'm-11', expectedLastSeq: 11 }), { seq: 12, duplicate: false });
    assert.deepEqual(await a.appendAck('bt.s1.even', { i: 11 }, { msgId: 'm-11', expectedLastSeq: 11 }), { seq: 12, duplicate: true });
    const all: Array<[number, unknown]> = [];
    for await (const r of b.readAll<{ i: number }>(st)) all.push([r.seq, r.obj.i]);
    assert.deepEqual(all, Array.from({ length: 12 }, (_, i) => [i + 1, i]));
    const tail: number[] = [];
    for await (const r of b.readAll(st, 11)) tail.push(r.seq);
    assert.deepEqual(tail, [11, 12]);
    const none: number[] = [];
    for await (const r of b.readAll(st, 13)) none.push(r.seq);
    assert.deepEqual(none, []);
    assert.equal(await a.purge(st, { upToSeq: 11 }), 10);
    const after: number[] = [];
    for await (const r of b.readAll(st, 1)) after.push(r.seq);
    assert.deepEqual(after, [11, 12]);
    assert.equal(await a.purge(st), 2);
    for await (const r of b.readAll(st, 1)) assert.fail(`stream should be empty, got ${r.seq}`);
    // A forged record (raw publish, no MAC) stops readAll with AuthError, or is skipped on request.
    await a.append('bt.s1.even', { i: 100 });
    raw.publish('bt.s1.even', new Uint8Array([0x81, 0xa1, 0x62, 0xc4, 0x01, 0x90]));
    await raw.flush();
    await a.append('bt.s1.even', { i: 101 });
    await assert.rejects((async () => { for await (const _ of b.readAll(st, 1)) { /* read */ } })(), (e: unknown) => e instanceof AuthError && e.detail?.seq === 14);
    const ok: unknown[] = [];
    for await (const r of b.readAll(st, 1, { skipInvalid: true })) ok.push(r.obj);
    assert.deepEqual(ok, [{ i: 100 }, { i: 101 }]);
  });

  it('readAll reads thousands of records and terminates', async () => {
    const st = 'bt_stream2';
    await a.ensureStream(st, ['bt.s2']);
    const n = 2000;
    await Promise.all(Array.from({ length: n }, (_, i) => a.append('bt.s2', { i })));
    let count = 0, last = 0;
    for await (const r of b.readAll(st, 1, { batch: 100 })) { assert.ok(r.seq > last); last = r.seq; count++; }
    assert.equal(count, n);
  });
});

describe('Bus replay and rollback hardening (a raw client with the NATS credentials, not the secret)', function () {
  this.timeout(60_000);
  const auth = () => AuthPolicy.fromSecret(SECRET, { skewMs: 200 });
  const nats = withNats({ auth: AuthPolicy.fromSecret(SECRET).natsCredentials()! });
  const job = 'rp';
  const S = subjects(job);
  let a: Bus, b: Bus, raw: NatsConnection;
  const extra: Bus[] = [];
  const connectBus = async (name: string) => { const x = await Bus.connect({ servers: nats.url, job, auth: auth(), name }); extra.push(x); return x; };
  beforeEach(async () => {
    a = await Bus.connect({ servers: nats.url, job, auth: auth(), name: 'sender' });
    b = await Bus.connect({ servers: nats.url, job, auth: auth(), name: 'first' });
    raw = await connect(nats.connectOptions);
  });
  afterEach(async () => {
    await a.close(); await b.close(); await raw.close();
    for (const x of extra.splice(0)) await x.close();
  });

  /** Captures the next n messages on `subject` with the raw client. */
  function capture(subject: string, n = 1): Promise<Array<{ data: Uint8Array; reply?: string }>> {
    return new Promise((res) => {
      const got: Array<{ data: Uint8Array; reply?: string }> = [];
      const sub = raw.subscribe(subject, { callback: (_e, m) => { got.push({ data: new Uint8Array(m.data), reply: m.reply }); if (got.length === n) { sub.unsubscribe(); res(got); } } });
    });
  }

  it('a broadcast replayed to a second subscriber, or to a restarted one, is refused; fresh traffic still arrives', async () => {
    for (const subject of [S.ctlEpoch, S.hb('rank-0'), S.storeFree, S.part(2, 1)]) {
      const seenB: unknown[] = [];
      const subB = b.subscribe(subject, (m) => { seenB.push(m); });
      const cap = capture(subject);
      await raw.flush(); await b.flush();
      a.publish(subject, { epoch: 5, subject });
      const [good] = await cap;
      await until(() => seenB.length === 1);
      // A second subscriber process (its own Bus and AuthPolicy: no shared nonce cache) and a
      // restart of the first (same name, new Bus): both subscribe after the message was sealed.
      subB.unsubscribe();
      // Subscriptions accept what was sealed up to skewMs before they started: wait that out.
      await sleep((auth().skewMs ?? 200) + 50);
      const second = await connectBus('second');
      const restarted = await connectBus('first');
      const seen2: unknown[] = [], seenR: unknown[] = [];
      second.subscribe(subject, (m) => { seen2.push(m); });
      restarted.subscribe(subject, (m) => { seenR.push(m); });
      await second.flush(); await restarted.flush();
      raw.publish(subject, good!.data);
      await raw.flush();
      await until(() => second.stats().rejectedAuth === 1 && restarted.stats().rejectedAuth === 1);
      assert.equal(second.stats().rejectedReplay, 1);
      assert.equal(restarted.stats().rejectedReplay, 1);
      assert.deepEqual([seen2, seenR], [[], []], `replay on ${subject} reached a handler`);
      a.publish(subject, { epoch: 6 });
      await until(() => seen2.length === 1 && seenR.length === 1);
      assert.deepEqual(seen2, [{ epoch: 6 }]);
      await second.close(); await restarted.close();
    }
  });

  it('a captured request replayed to a restarted responder is refused, with its own or another reply subject', async () => {
    let calls = 0;
    const sub = b.subscribe(S.queue.commit, (m: { x: number }) => { calls++; return { got: m.x }; });
    const cap = capture(S.queue.commit);
    await raw.flush(); await b.flush();
    assert.deepEqual(await a.request(S.queue.commit, { x: 1 }, { idempotencyKey: 'commit:s1:1' }), { got: 1 });
    const [req] = await cap;
    assert.ok(req!.reply, 'a request has a reply subject');
    await sub.drain();
    await sleep((auth().skewMs ?? 200) + 50); // the restart comes later than the skew allowance
    const restarted = await connectBus('first');
    restarted.subscribe(S.queue.commit, (m: { x: number }) => { calls++; return { got: m.x }; });
    await restarted.flush();
    // Re-addressed: the replayer asks for the answer on its own inbox (caught before the age check).
    await assert.rejects(raw.request(S.queue.commit, req!.data, { timeout: 500 }), (e: unknown) => /timeout|TIMEOUT/i.test(String((e as Error)?.message ?? e)));
    await until(() => restarted.stats().rejectedAuth === 1);
    assert.equal(restarted.stats().rejectedReplay, 0, 'refused for the reply subject, not for its age');
    // The same bytes on their own reply subject: sealed before the subscription started.
    raw.publish(S.queue.commit, req!.data, { reply: req!.reply });
    await raw.flush();
    await until(() => restarted.stats().rejectedAuth === 2);
    assert.equal(restarted.stats().rejectedReplay, 1);
    assert.equal(calls, 1, 'the handler ran for the legitimate request only');
    assert.deepEqual(await a.request(S.queue.commit, { x: 2 }), { got: 2 });
    assert.equal(calls, 2);
  });

  it('a captured reply injected into a later request under the same idempotency key is refused', async () => {
    let n = 0;
    b.subscribe(S.queue.renew, async () => { n++; if (n === 2) await sleep(300); return { n }; }, { dedupe: false });
    const replies = capture('_INBOX.>');
    await raw.flush(); await b.flush();
    assert.deepEqual(await a.request(S.queue.renew, {}, { idempotencyKey: 'renew:L1' }), { n: 1 });
    const [oldReply] = await replies;
    // The attacker sees the next request and answers it first with the old reply.
    const sub = raw.subscribe(S.queue.renew, { max: 1, callback: (_e, m) => { if (m.reply) raw.publish(m.reply, oldReply!.data); } });
    await raw.flush();
    // Asked again under the same key by a restarted requester (which never saw the old reply).
    // The forged reply ends that attempt (its inbox is single-use); the retry gets a fresh answer.
    const again = await connectBus('sender');
    const r = await again.request<{ n: number }>(S.queue.renew, {}, { idempotencyKey: 'renew:L1', timeoutMs: 2000 });
    sub.unsubscribe();
    assert.ok(r.n >= 2, `got the replayed reply ${JSON.stringify(r)}`);
    assert.equal(again.stats().rejectedAuth, 1);
    assert.equal(again.stats().badReplies, 1);
  });

  it('KV: an older record re-put by a raw client is refused by get and skipped by watch, for readers that saw the newer one', async () => {
    const writer = await a.kv(S.kvBucket);
    const reader = await b.kv(S.kvBucket);
    const rev1 = await writer.create('epoch', { epoch: 1, num: 2 });
    const rawKv = await new Kvm(raw).open(S.kvBucket);
    const old = (await rawKv.get('epoch'))!.value.slice();
    const rev2 = await writer.update('epoch', { epoch: 2, num: 4 }, rev1);
    assert.deepEqual((await reader.get('epoch'))?.value, { epoch: 2, num: 4 });
    const w = await reader.watch({ key: 'epoch' });
    const seen: unknown[] = [];
    const done = (async () => { for await (const c of w) { seen.push(c.value); if ((c.value as { epoch: number }).epoch === 3) break; } })();
    await until(() => seen.length === 1);
    await rawKv.put('epoch', old); // the rollback: a validly MAC'd epoch-1 record, now the latest
    const isRollback = (e: unknown) => e instanceof AuthError && e.detail?.rollback === true && /older than version/.test((e as Error).message);
    await assert.rejects(reader.get('epoch'), isRollback);
    await assert.rejects(writer.get('epoch'), isRollback);
    assert.ok(b.stats().rejectedAuth >= 1);
    // A compare-and-set on top of the rolled-back record is refused too; a legitimate write on the real chain goes on.
    await assert.rejects(writer.update('epoch', { epoch: 9, num: 1 }, rev2 + 1), isRollback);
    const cur = await rawKv.get('epoch');
    await writer.put('epoch', { epoch: 3, num: 4 });
    await done;
    w.stop();
    assert.deepEqual(seen, [{ epoch: 2, num: 4 }, { epoch: 3, num: 4 }], 'the watch skipped the re-put epoch 1');
    assert.deepEqual((await reader.get('epoch'))?.value, { epoch: 3, num: 4 });
    assert.ok(cur && cur.revision > rev2);
    // Deleted and created again by another process: a newer version, accepted.
    await writer.delete('epoch');
    const other = await (await connectBus('other')).kv(S.kvBucket);
    await other.create('epoch', { epoch: 4, num: 1 });
    assert.deepEqual((await reader.get('epoch'))?.value, { epoch: 4, num: 1 });
  });
});

describe('Bus across server restarts', function () {
  this.timeout(60_000);
  const nats = withNats();
  const job = 'rs';
  const S = subjects(job);

  it('stream append/readAll survive a restart; the client reconnects and subscriptions keep working', async () => {
    const a = await Bus.connect({ servers: nats.url, job, name: 'a' });
    const b = await Bus.connect({ servers: nats.url, job, name: 'b' });
    try {
      let calls = 0;
      b.subscribe(S.queue.commit, (m: { x: number }) => { calls++; return m.x * 2; });
      await b.flush();
      assert.equal(await a.request(S.queue.commit, { x: 1 }), 2);
      await a.ensureStream(S.walStream, [S.walSubject]);
      for (let i = 0; i < 5; i++) await a.append(S.walSubject, { op: 'grant', i });

      await nats.restart(); // graceful
      await until(() => a.stats().reconnects >= 1 && b.stats().reconnects >= 1, 10_000);
      assert.equal(await a.request(S.queue.commit, { x: 2 }, { timeoutMs: 1000, retries: 5 }), 4);
      assert.equal(await a.append(S.walSubject, { op: 'ack', i: 5 }), 6);
      const ops: unknown[] = [];
      for await (const r of b.readAll<{ i: number }>(S.walStream)) ops.push(r.obj.i);
      assert.deepEqual(ops, [0, 1, 2, 3, 4, 5]);

      await nats.kill('SIGKILL'); // hard
      // A request while the server is down fails over to retries, then works once it is back.
      const pending = a.request(S.queue.commit, { x: 3 }, { timeoutMs: 500, retries: 20, backoffMs: 100 });
      await sleep(300);
      await nats.restart();
      assert.equal(await pending, 6);
      assert.ok(a.stats().disconnects >= 2);
      assert.equal(await a.append(S.walSubject, { op: 'ack', i: 6 }, { retries: 10 }), 7);
      const after: unknown[] = [];
      for await (const r of a.readAll<{ i: number }>(S.walStream, 6)) after.push(r.obj.i);
      assert.deepEqual(after, [5, 6]);
      assert.ok(calls >= 3);
      const kv = await a.kv(S.kvBucket);
      await kv.put('k', 1);
      await nats.restart();
      assert.equal((await (await b.kv(S.kvBucket)).get('k'))?.value, 1);
    } finally { await a.close(); await b.close(); }
  });

  it('close() lets handlers in flight finish and reply', async () => {
    const a = await Bus.connect({ servers: nats.url, job, name: 'a2' });
    const b = await Bus.connect({ servers: nats.url, job, name: 'b2' });
    b.subscribe(S.queue.fail, async () => { await sleep(200); return 'done'; });
    await b.flush();
    const p = a.request(S.queue.fail, {}, { timeoutMs: 2000, retries: 0 });
    await sleep(50);
    await b.close();
    assert.equal(await p, 'done');
    await a.close();
    await assert.rejects(a.request(S.queue.fail, {}), UnavailableError);
  });
});

describe('Bus without auth', function () {
  this.timeout(30_000);
  const nats = withNats();
  it('works with AuthPolicy.disabled() and still drops garbage', async () => {
    const a = await Bus.connect({ servers: nats.url, job: 'na' });
    const raw = await connect(nats.connectOptions);
    try {
      const seen: unknown[] = [];
      a.subscribe('dw.na.hb.x', (m) => { seen.push(m); });
      await a.flush();
      raw.publish('dw.na.hb.x', new Uint8Array([1, 2, 3]));
      a.publish('dw.na.hb.x', { ok: true });
      await until(() => seen.length === 1 && a.stats().rejectedDecode === 1);
      assert.deepEqual(seen, [{ ok: true }]);
      assert.ok(!(errorFromWire(null, 'x') instanceof StaleEpochError));
      assert.ok(errorFromWire(null, 'x') instanceof DecodeError);
    } finally { await a.close(); await raw.close(); }
  });
});
