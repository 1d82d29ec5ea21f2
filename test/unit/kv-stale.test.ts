// BusKv.get against a replica that stays behind (src/bus/kv.ts): a direct get keeps answering
// an older revision than one this reader already saw (a replica back from a freeze can, for
// minutes). The read asks again, then the stream's leader, instead of failing for as long as
// the replica lags. The KV and the Bus are in-memory stand-ins here (named as such): a real
// nats-server cannot be made to keep one replica behind on demand.
import { strict as assert } from 'node:assert';
import type { KV } from '@nats-io/kv';
import { BusKv, type KvHost } from '../../src/bus/kv.ts';
import { UnavailableError } from '../../src/errors.ts';

const enc = (value: unknown, version: number) => new TextEncoder().encode(JSON.stringify({ value, version }));

function stand(o: { directRevision: number; leaderRevision: number | null }) {
  const calls = { direct: 0, leader: 0 };
  const host = {
    _sealKv: (_b: string, _k: string, obj: unknown, version: number) => enc(obj, version),
    _openKv: (_b: string, _k: string, bytes: Uint8Array) => JSON.parse(new TextDecoder().decode(bytes)) as { value: unknown; version: number },
    _js: () => { throw new Error('not used'); },
    _jsm: async () => ({
      streams: {
        getMessage: async () => {
          calls.leader++;
          // The leader: every acknowledged write (or, with leaderRevision null, as far behind as the replica).
          const rev = o.leaderRevision ?? o.directRevision;
          return { data: enc({ epoch: rev }, rev), seq: rev, header: undefined };
        },
      },
    }),
    _jsOp: <T>(_what: string, fn: () => Promise<T>) => fn(),
    _warnBadRecord: () => {},
    streamInfo: async () => ({ lastSeq: 0 }),
  } as unknown as KvHost;
  const kv = {
    get: async () => { calls.direct++; return { value: enc({ epoch: o.directRevision }, o.directRevision), revision: o.directRevision, operation: 'PUT' }; },
  } as unknown as KV;
  return { bkv: new BusKv(host, 'dw_job', kv), calls };
}

describe('kv: a replica that stays behind', () => {
  it('a read that keeps getting an older revision than one already seen asks the stream leader', async () => {
    const { bkv, calls } = stand({ directRevision: 2, leaderRevision: 186 });
    assert.equal((await bkv.get('epoch', { leader: true }))!.revision, 186, 'the reader has seen revision 186');
    const v = await bkv.get<{ epoch: number }>('epoch');
    assert.equal(v!.revision, 186);
    assert.deepEqual(v!.value, { epoch: 186 });
    assert.equal(calls.direct, 3, 'the replica asked three times');
    assert.equal(calls.leader, 2, 'then the leader, once');
  });

  it('if the leader is behind too (a stale read it cannot settle), the read fails as retryable, after its retries', async () => {
    const { bkv } = stand({ directRevision: 186, leaderRevision: null });
    await bkv.get('epoch');
    const behind = stand({ directRevision: 2, leaderRevision: null });
    // The same reader's memory: seen 186, now everyone answers 2.
    (behind.bkv as unknown as { known: unknown }).known = (bkv as unknown as { known: unknown }).known;
    await assert.rejects(behind.bkv.get('epoch'), (e: unknown) => e instanceof UnavailableError && e.retryable && /behind revision 186/.test(e.message));
  });
});
