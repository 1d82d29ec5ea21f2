// NATS client errors as Draftwire errors. Shared by the two halves of the Bus (bus-core.ts
// and bus.ts), which both call the NATS client and retry on the same conditions.

import { errors as natsErrors } from '@nats-io/transport-node';
import { JetStreamApiError, JetStreamApiCodes } from '@nats-io/jetstream';
import { AuthError, ConflictError, DraftwireError, TimeoutError, UnavailableError } from '../errors.ts';

export function isNatsTimeout(e: unknown): boolean {
  return e instanceof natsErrors.TimeoutError || (e instanceof natsErrors.RequestError && (e.cause instanceof natsErrors.TimeoutError));
}
export function isNoResponders(e: unknown): boolean {
  return e instanceof natsErrors.NoRespondersError || (e instanceof natsErrors.RequestError && e.isNoResponders());
}
/**
 * A JetStream answer that a cluster gives while it fails over (a server just restarted or
 * lost its peer, a new leader not yet elected): worth retrying, like a timeout.
 */
export function isTransientJs(e: unknown): boolean {
  return /503|no responders|jetstream (?:is )?not (?:enabled|available)|temporarily unavailable|cluster not available|no suitable peers|stream leader|raft/i.test(String((e as Error)?.message));
}

function isClosed(e: unknown): boolean {
  return e instanceof natsErrors.ClosedConnectionError || e instanceof natsErrors.DrainingConnectionError;
}

/** Map a NATS client error to a Draftwire one (pass through Draftwire errors). */
export function mapNatsError(e: unknown, what: string): DraftwireError {
  if (e instanceof DraftwireError) return e;
  if (e instanceof natsErrors.AuthorizationError || e instanceof natsErrors.UserAuthenticationExpiredError) {
    return new AuthError(`NATS refused the connection credentials (${what})`, { cause: e });
  }
  if (isNatsTimeout(e)) return new TimeoutError(`${what}: timed out`, { cause: e });
  if (isNoResponders(e)) return new UnavailableError(`${what}: no responders (is JetStream enabled and ready?)`, { cause: e });
  if (isClosed(e)) return new UnavailableError(`${what}: the NATS connection is closed`, { cause: e });
  if (e instanceof JetStreamApiError) {
    // 10070: "wrong last msg ID" (an append fenced on the last record's id), not in JetStreamApiCodes.
    if (e.code === JetStreamApiCodes.StreamWrongLastSequence || e.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown || e.code === 10070) {
      return new ConflictError(`${what}: ${e.message}`, { cause: e, detail: { jsCode: e.code } });
    }
    return new UnavailableError(`${what}: JetStream error ${e.code}: ${e.message}`, { cause: e, detail: { jsCode: e.code } });
  }
  const msg = e instanceof Error ? e.message : String(e);
  if (/wrong last sequence/i.test(msg)) return new ConflictError(`${what}: ${msg}`, { cause: e });
  if (/ECONNREFUSED|ENOTFOUND|CONNECTION_REFUSED|connection refused/i.test(msg) || e instanceof natsErrors.ConnectionError) {
    return new UnavailableError(`${what}: ${msg}`, { cause: e });
  }
  return new UnavailableError(`${what}: ${msg}`, { cause: e });
}
