// The lease ledger's write-ahead log: a JetStream stream of records {f: WAL_RECORD, events},
// each one the events of one ledger call, appended before its reply is sent. The queue
// actor appends and replays it; `draftwire audit` and `run --resume` read it.
import type { Bus } from '../bus/bus.ts';
import { InvalidArgumentError } from '../errors.ts';
import type { LedgerEvent } from './events.ts';

export const WAL_RECORD = 'draftwire/ledger-events/1';

/** Reads every ledger event of the job's write-ahead log, in order. */
export async function readLedgerEvents(bus: Bus): Promise<LedgerEvent[]> {
  const s = bus.subjects;
  await bus.ensureStream(s.walStream, [s.walSubject]);
  const out: LedgerEvent[] = [];
  for await (const rec of bus.readAll<{ f: string; events: LedgerEvent[] }>(s.walStream, 1)) {
    if (rec.obj?.f !== WAL_RECORD || !Array.isArray(rec.obj.events)) throw new InvalidArgumentError(`ledger stream record #${rec.seq} is not a ledger-events record`);
    out.push(...rec.obj.events);
  }
  return out;
}
