// The audit of a ledger log (DESIGN.md §2): checks the lease protocol's guarantees from the
// events alone, without the state machine's code, so a bug there cannot hide itself here.
// Used by the tests, the chaos suite and `draftwire audit`; ledger.ts re-exports it.

import { dpPartition } from './partition.ts';
import { ledgerEventProblem, type LedgerEvent, type WalFindings } from './events.ts';

export interface AuditReport {
  ok: boolean;
  problems: string[];
  /** Distinct samples put. */
  committed: number;
  /** Samples consumed exactly once. */
  consumed: number;
  dead: number;
  /** Still pending / leased at the end of the log (job incomplete, not a problem). */
  pending: number;
  leased: number;
  /** True when every committed sample is consumed or dead. */
  complete: boolean;
  /** What replay found in the write-ahead log (when given): bad records are also problems. */
  wal: WalFindings;
}

/**
 * Checks a ledger log independently of the ledger's own code: every committed sample is
 * consumed exactly once or dead-lettered (or still pending/leased: reported, not a problem),
 * no sample has two overlapping leases, no sample is leased after it is consumed or dead,
 * only the current holder's ack/release/fail/renew is accepted, leases are granted only
 * under the current epoch and to the partition that owns the sample, seq is contiguous, and
 * once the input closes no new sample is committed and no producer opens.
 * An event of the wrong shape is a problem (and not applied), never a TypeError. `wal`: the
 * log's bad records (each a problem, by stream seq), operator-skipped ones and replayed
 * copies (reported, not problems: replay ignores them).
 */
export function auditEvents(events: Iterable<LedgerEvent>, wal: WalFindings = { bad: [], skipped: [], duplicates: [] }): AuditReport {
  const problems: string[] = [];
  const s = new Map<string, { live: string | null; consumed: number; dead: boolean }>();
  let epoch: number | null = null;
  let closedAt: number | null = null;
  const producers = new Map<string, string>();
  let lastSeq = 0;
  const p = (msg: string) => { if (problems.length < 1000) problems.push(msg); };
  const holder = (ev: { seq: number; type: string; leaseId: string; sampleId: string }) => {
    const x = s.get(ev.sampleId);
    if (!x) { p(`#${ev.seq} ${ev.type} of uncommitted sample "${ev.sampleId}"`); return null; }
    if (x.live !== ev.leaseId) p(`#${ev.seq} ${ev.type} of lease ${ev.leaseId} accepted, but the holder of "${ev.sampleId}" is ${x.live ?? 'nobody'}`);
    return x;
  };
  for (const b of wal.bad) p(`write-ahead log record at stream seq ${b.streamSeq} ${b.reason}`);
  let n = 0;
  for (const ev of events) {
    n++;
    const shape = ledgerEventProblem(ev);
    if (shape) { p(`event ${n}${typeof (ev as { seq?: unknown })?.seq === 'number' ? ` (#${ev.seq})` : ''} is malformed: ${shape}`); continue; }
    if (ev.seq !== lastSeq + 1) p(`seq ${ev.seq} follows ${lastSeq}`);
    lastSeq = ev.seq;
    switch (ev.type) {
      case 'put': {
        const x = s.get(ev.ref.sampleId);
        if (!x) {
          if (closedAt !== null) p(`#${ev.seq} put of new sample "${ev.ref.sampleId}" after the input closed at #${closedAt}`);
          s.set(ev.ref.sampleId, { live: null, consumed: 0, dead: false });
        } else if (x.consumed > 0 || x.dead) p(`#${ev.seq} put of "${ev.ref.sampleId}" after it was ${x.dead ? 'dead' : 'consumed'}`);
        break;
      }
      case 'lease': {
        if (epoch !== null && ev.epoch !== epoch) p(`#${ev.seq} lease granted under epoch ${ev.epoch} while the epoch is ${epoch}`);
        const [index, num] = ev.partition;
        for (const g of ev.leases) {
          const x = s.get(g.sampleId);
          if (!x) { p(`#${ev.seq} lease of uncommitted sample "${g.sampleId}"`); continue; }
          if (x.consumed > 0 || x.dead) p(`#${ev.seq} lease ${g.leaseId} of "${g.sampleId}" after it was ${x.dead ? 'dead' : 'consumed'}`);
          if (x.live !== null) p(`#${ev.seq} lease ${g.leaseId} of "${g.sampleId}" overlaps live lease ${x.live}`);
          if (dpPartition(g.sampleId, num) !== index) p(`#${ev.seq} lease ${g.leaseId} of "${g.sampleId}" went to partition ${index}/${num}, which does not own it`);
          x.live = g.leaseId;
        }
        break;
      }
      case 'ack': {
        const x = holder(ev);
        if (x) {
          if (x.consumed > 0) p(`#${ev.seq} "${ev.sampleId}" consumed twice`);
          x.consumed++;
          x.live = null;
        }
        break;
      }
      case 'release': case 'fail': {
        const x = holder(ev);
        if (x) x.live = null;
        break;
      }
      case 'renew': holder(ev); break;
      case 'expire':
        for (const l of ev.leases) { const x = holder({ seq: ev.seq, type: 'expire', leaseId: l.leaseId, sampleId: l.sampleId }); if (x) x.live = null; }
        break;
      case 'dead': {
        const x = s.get(ev.sampleId);
        if (!x) { p(`#${ev.seq} dead letter of uncommitted sample "${ev.sampleId}"`); break; }
        if (x.live !== null) p(`#${ev.seq} "${ev.sampleId}" dead-lettered while leased as ${x.live}`);
        if (x.consumed > 0) p(`#${ev.seq} "${ev.sampleId}" dead-lettered after it was consumed`);
        x.dead = true;
        break;
      }
      case 'epoch':
        if (epoch !== null && ev.epoch < epoch) p(`#${ev.seq} epoch went back from ${epoch} to ${ev.epoch}`);
        epoch = ev.epoch;
        break;
      case 'input':
        if (ev.state === 'open' && closedAt !== null) p(`#${ev.seq} producer "${ev.producer}" opened after the input closed at #${closedAt}`);
        producers.set(ev.producer, ev.state);
        break;
      case 'close':
        if (closedAt !== null) p(`#${ev.seq} the input closed again (first at #${closedAt})`);
        if (ev.samples !== s.size) p(`#${ev.seq} the input closed at ${ev.samples} samples, ${s.size} were committed`);
        if (ev.reason === 'producers' && [...producers.values()].some((st) => st === 'open')) p(`#${ev.seq} the input closed for its producers while one was still open`);
        closedAt = ev.seq;
        break;
      default:
        p(`#${(ev as LedgerEvent).seq} unknown event type`);
    }
  }
  let consumed = 0, dead = 0, pending = 0, leased = 0;
  for (const x of s.values()) {
    if (x.dead) dead++;
    else if (x.consumed === 1) consumed++;
    else if (x.live !== null) leased++;
    else if (x.consumed === 0) pending++;
  }
  return { ok: problems.length === 0, problems, committed: s.size, consumed, dead, pending, leased, complete: pending + leased === 0, wal };
}
