// The term fence of the singleton roles (queue, coordinator, janitor, rollout). A node runs
// a role only while it holds the role's leader lease (src/bus/role-lease.ts), whose term
// grows by one at every change of holder. Every message a role sends (its announcements,
// its requests and its replies, as the protocol table's `roles` says) carries the sender's
// term, and every process keeps the newest term it has seen per role: a message of an older
// term is an old holder's (frozen, cut off, resurrected) and is refused. Messages without a
// term (a role run without a lease, as some tests do, or an older peer) are not fenced.
//
// Per process, on the Bus: `hold` when a lease is won (stamped on what this process sends
// for the role), `drop` when it is lost, `admit` on what arrives.
import { StaleTermError } from '../errors.ts';
import type { Role } from '../wire/protocol.ts';

export class TermFence {
  private readonly held = new Map<Role, number>();
  private readonly newest = new Map<Role, number>();
  /** Messages refused as an older term's, per role. */
  readonly refused = new Map<Role, number>();

  /** This process now holds `role` at `term` (it has seen that term, too). */
  hold(role: Role, term: number): void {
    if (!Number.isSafeInteger(term) || term < 1) throw new RangeError(`term of ${role} must be a positive integer, got ${term}`);
    this.held.set(role, term);
    this.see(role, term);
  }

  /** This process no longer holds `role` (lease lost or released): it stamps nothing more for it. */
  drop(role: Role, term?: number): void {
    if (term === undefined || this.held.get(role) === term) this.held.delete(role);
  }

  /** The term this process holds `role` at, if it does. */
  termOf(role: Role): number | undefined { return this.held.get(role); }

  /** The newest term seen for `role` (0 when none). */
  newestOf(role: Role): number { return this.newest.get(role) ?? 0; }

  /** Records a term seen elsewhere (e.g. read from the lease record). */
  see(role: Role, term: number): void {
    if (term > (this.newest.get(role) ?? 0)) this.newest.set(role, term);
  }

  /**
   * Whether a message of `role` stamped with `term` may be taken: true when unstamped or not
   * older than the newest seen (which it then raises); false, and counted, when older.
   */
  admit(role: Role, term: unknown): boolean {
    if (term === undefined || term === null) return true;
    if (typeof term !== 'number' || !Number.isSafeInteger(term) || term < 1) return false;
    if (term < this.newestOf(role)) {
      this.refused.set(role, (this.refused.get(role) ?? 0) + 1);
      return false;
    }
    this.see(role, term);
    return true;
  }

  /** admit() that throws StaleTermError naming the role and terms. */
  check(role: Role, term: unknown, what: string): void {
    if (this.admit(role, term)) return;
    throw new StaleTermError(`${what}: from the ${role} of term ${String(term)}, older than term ${this.newestOf(role)} already seen (an old holder of the role)`,
      { detail: { role, term, newest: this.newestOf(role) } });
  }
}
