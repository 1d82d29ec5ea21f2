// Replay guard for messages that carry no idempotency key (heartbeats): per sender, only a
// message newer than the last one taken counts. Order is (at, seq): `at` is the sender's clock
// in ms, `seq` its per-process counter (two beats in one millisecond still differ). A
// replayed copy is equal to one already taken, so it is refused. Bounded: the least recently
// heard senders are forgotten first.

export class LatestPerSender {
  private readonly last = new Map<string, { at: number; seq: number }>();
  constructor(private readonly maxSenders = 10_000) {}

  /** True (and remembered) if (at, seq) is newer than the last message taken from `sender`. */
  accept(sender: string, at: number, seq = 0): boolean {
    if (!Number.isFinite(at)) return false;
    const prev = this.last.get(sender);
    if (prev && (at < prev.at || (at === prev.at && seq <= prev.seq))) return false;
    this.last.delete(sender); // re-insert: Map order is recency
    this.last.set(sender, { at, seq });
    if (this.last.size > this.maxSenders) this.last.delete(this.last.keys().next().value as string);
    return true;
  }

  get size(): number { return this.last.size; }
}
