// ledger.jsonl (what `draftwire run` exports and `draftwire audit --ledger` reads): a signed
// ref's mac survives the round trip whether it is a Buffer (as msgpackr decodes it from the
// write-ahead log) or a plain Uint8Array, so the audit of an authenticated run's export is as
// clean as the run.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readLedgerJsonl, writeLedgerJsonl } from '../../cluster/commands/audit.ts';
import { auditEvents, LeaseLedger, type LedgerEvent } from '../../src/ledger/ledger.ts';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { sampleRef } from '../support/store-fixtures.ts';

describe('ledger.jsonl', () => {
  it('round-trips signed refs (Buffer or Uint8Array mac) to an equally clean audit', async () => {
    const auth = AuthPolicy.fromSecret('a-secret-of-at-least-16-bytes');
    const dir = mkdtempSync(join(tmpdir(), 'dw-jsonl-'));
    try {
      const q = new LeaseLedger({ leaseMs: 1000, maxDeliveries: 3 });
      const events: LedgerEvent[] = [];
      for (const i of [1, 2]) {
        const ref = auth.signRef(sampleRef({ sampleId: `row-${i}`, generation: i }));
        events.push(...q.put(ref, { key: `commit:row-${i}:${i}`, now: i }).events);
      }
      // The first put as the WAL gives it back: msgpackr decodes bytes as a Buffer.
      const put1 = events[0] as { ref: { mac: Uint8Array } };
      put1.ref = { ...put1.ref, mac: Buffer.from(put1.ref.mac) };
      const got = q.get(2, { key: 'credit', now: 3, partition: [0, 1], consumer: 'rank-0', epoch: q.currentEpoch() });
      events.push(...got.events);
      for (const l of got.leases) events.push(...q.ack(l.leaseId, l.epoch, { key: `ack:${l.leaseId}`, now: 4 }).events);
      assert.ok(auditEvents(events).ok);
      const path = join(dir, 'ledger.jsonl');
      await writeLedgerJsonl(path, events);
      assert.doesNotMatch(readFileSync(path, 'utf8'), /"type":"Buffer"/, 'a Buffer mac was written as its toJSON object');
      const back = readLedgerJsonl(path);
      const a = auditEvents(back);
      assert.deepEqual({ ok: a.ok, problems: a.problems, consumed: a.consumed }, { ok: true, problems: [], consumed: 2 });
      const macs = back.filter((e) => e.type === 'put').map((e) => Buffer.from((e as { ref: { mac: Uint8Array } }).ref.mac).toString('hex'));
      assert.deepEqual(macs, events.filter((e) => e.type === 'put').map((e) => Buffer.from((e as { ref: { mac: Uint8Array } }).ref.mac).toString('hex')));
    } finally { rmSync(dir, { recursive: true, force: true }); }
  });
});
