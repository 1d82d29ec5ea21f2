// Errors over the wire: a DraftwireError thrown by a request handler travels to the
// requester as {code, message, retryable, detail} and is rethrown there as the same class.
// Separate from the Bus because the mapping is pure and needs only errors.ts.

import * as E from '../errors.ts';
import { DecodeError, DraftwireError } from '../errors.ts';

export type ErrorCtor = new (message: string, opts?: E.DraftwireErrorOptions) => DraftwireError;
let errorTable: Map<string, ErrorCtor> | null = null;

function errorClasses(): Map<string, ErrorCtor> {
  if (errorTable) return errorTable;
  errorTable = new Map();
  for (const v of Object.values(E)) {
    if (typeof v !== 'function' || v === DraftwireError || !(v.prototype instanceof DraftwireError)) continue;
    try {
      const probe = new (v as ErrorCtor)('probe');
      if (!errorTable.has(probe.code)) errorTable.set(probe.code, v as ErrorCtor);
    } catch { /* a constructor with another signature: not mappable */ }
  }
  return errorTable;
}

export interface WireError { code: string; message: string; retryable: boolean; detail?: Record<string, unknown> }

export function errorToWire(err: unknown): WireError {
  if (err instanceof DraftwireError) {
    const w: WireError = { code: err.code, message: err.message, retryable: err.retryable };
    if (err.detail) w.detail = err.detail;
    return w;
  }
  const msg = err instanceof Error ? err.message : String(err);
  return { code: 'INTERNAL', message: `internal error: ${msg}`.slice(0, 2000), retryable: false };
}

export function errorFromWire(w: unknown, subject: string): DraftwireError {
  if (!w || typeof w !== 'object') return new DecodeError(`reply from ${subject}: malformed error`);
  const o = w as Record<string, unknown>;
  const code = typeof o.code === 'string' ? o.code.slice(0, 64) : 'INTERNAL';
  const message = typeof o.message === 'string' ? o.message.slice(0, 4000) : 'remote error';
  const retryable = o.retryable === true;
  const detail = o.detail && typeof o.detail === 'object' && !Array.isArray(o.detail) ? { ...(o.detail as Record<string, unknown>) } : {};
  detail.remoteSubject = subject;
  const C = errorClasses().get(code);
  if (C) return new C(message, { detail });
  return new DraftwireError(code, message, retryable, { detail });
}
