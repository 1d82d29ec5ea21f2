// An embedder's program, run by test/package/pack.test.ts with plain node (no tsx) against
// the packed and installed package: it imports only 'draftwire' and prints what it saw as JSON.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as dw from 'draftwire';

const out = { exports: Object.keys(dw).sort() };
const auth = dw.AuthPolicy.fromEnv({ DRAFTWIRE_SECRET: 'a-secret-of-at-least-16-bytes' });
const dir = mkdtempSync(join(tmpdir(), 'dw-consumer-'));
try {
  const store = await dw.SharedDirFeatureStore.attach({ dir, storeId: 'store-a', job: 'job-a', auth, producer: { node: 'n1', actor: 'producer', incarnation: 1 } });
  const ref = await store.put('row-1', {
    ids: dw.tensor('i32', [4], Int32Array.from([1, 2, 3, 4])),
    aux: dw.tensor('f32', [4, 6], new Float32Array(24).fill(0.5)),
  });
  const bytes = dw.encodeSampleRef(ref);
  const back = dw.decodeSampleRef(bytes);
  const got = await store.get(back, { names: ['ids'] });
  out.ids = Array.from(got.ids.data);
  out.refBytes = bytes.length;
  out.partition = dw.dpPartition(ref.sampleId, 8);
  const ledger = new dw.LeaseLedger({ leaseMs: 1000, maxDeliveries: 3 });
  const events = [];
  events.push(...ledger.put(back, { key: `commit:${ref.sampleId}:${ref.generation}`, now: 1 }).events);
  const granted = ledger.get(1, { key: 'credit:1', now: 2, partition: [0, 1], consumer: 'rank-0', epoch: ledger.currentEpoch() });
  events.push(...granted.events);
  const lease = granted.leases[0];
  events.push(...ledger.ack(lease.leaseId, lease.epoch, { key: `ack:${lease.leaseId}`, now: 3 }).events);
  const report = dw.auditEvents(events);
  out.audit = { ok: report.ok, committed: report.committed, consumed: report.consumed };
  await store.release(back);
  try { await store.get(back); out.afterRelease = 'no error'; } catch (e) {
    out.afterRelease = { sampleGone: e instanceof dw.SampleGoneError, draftwireError: e instanceof dw.DraftwireError, code: e.code, retryable: e.retryable };
  }
  try { dw.decodeSampleRef(Uint8Array.from([0xc1])); out.badRef = 'no error'; } catch (e) { out.badRef = { decode: e instanceof dw.DecodeError, code: e.code }; }
  if (process.env.NATS_URL) {
    const bus = await dw.Bus.connect({ servers: process.env.NATS_URL, job: 'job-a', auth, credentials: null });
    const sub = bus.subscribe('dw.job-a.echo', (m) => ({ echoed: m.x }));
    out.echo = await bus.request('dw.job-a.echo', { x: 42 }, { timeoutMs: 5000 });
    sub.unsubscribe();
    await bus.close();
  }
  await store.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
console.log(JSON.stringify(out));
