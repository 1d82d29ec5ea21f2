// Fault injection for the Bus: which requests, publishes and replies to drop or delay.
// Tests set Bus.faults directly; child processes of the chaos suite get theirs from the
// environment (faultsFromEnv). Separate so the chaos knobs read apart from the real paths.

import { InvalidArgumentError } from '../errors.ts';

export interface BusFaults {
  /** Requester side: do not send this request/publish (the attempt times out). */
  dropRequest?: (subject: string) => boolean;
  /** Responder side: run the handler but do not send the reply. */
  dropReply?: (subject: string) => boolean;
  /** Delay before sending (requests, publishes and replies). */
  delayMs?: (subject: string) => number;
}

/**
 * Fault injection in child processes (the chaos suite): DRAFTWIRE_BUS_FAULTS =
 * "seed=S,match=REGEX,dropRequest=P,dropReply=P,delayMs=MAX" drops requests/publishes (the
 * requester side) and replies (the responder side) on subjects matching REGEX with
 * probability P, and delays them by up to MAX ms, from a seeded generator. Unset: no faults.
 */
export function faultsFromEnv(text: string | undefined, salt: string): BusFaults {
  if (!text) return {};
  const kv = new Map(text.split(',').map((p) => p.split('=', 2) as [string, string]).filter(([k, v]) => k && v !== undefined).map(([k, v]) => [k.trim(), v.trim()]));
  for (const k of kv.keys()) if (!['seed', 'match', 'dropRequest', 'dropReply', 'delayMs'].includes(k)) throw new InvalidArgumentError(`DRAFTWIRE_BUS_FAULTS: unknown key "${k}"`);
  let st = (Number(kv.get('seed') ?? 1) ^ [...salt].reduce((h, c) => Math.imul(h ^ c.charCodeAt(0), 16777619), 2166136261)) >>> 0;
  const rnd = () => { st = (Math.imul(st, 1664525) + 1013904223) >>> 0; return st / 2 ** 32; };
  const re = new RegExp(kv.get('match') ?? '.');
  const pReq = Number(kv.get('dropRequest') ?? 0), pRep = Number(kv.get('dropReply') ?? 0), maxDelay = Number(kv.get('delayMs') ?? 0);
  return {
    dropRequest: pReq > 0 ? (s) => re.test(s) && rnd() < pReq : undefined,
    dropReply: pRep > 0 ? (s) => re.test(s) && rnd() < pRep : undefined,
    delayMs: maxDelay > 0 ? (s) => (re.test(s) ? Math.floor(rnd() * maxDelay) : 0) : undefined,
  };
}
