// TLS for every connection that leaves a machine (NATS clients and routes, the HTTP data
// plane): the environment names the rank processes get the node's files under, reading the
// PEM files with errors that name them, and turning a handshake failure into a sentence that
// says which side's certificate is wrong and what to give. Pure: no sockets here.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { InvalidArgumentError } from './errors.ts';

/** Where a node hands its TLS files to its rank processes. */
export const TLS_ENV = { ca: 'DRAFTWIRE_TLS_CA', cert: 'DRAFTWIRE_TLS_CERT', key: 'DRAFTWIRE_TLS_KEY' } as const;

/** Paths of the PEM files (null: not given). */
export interface TlsFiles { ca?: string | null; cert?: string | null; key?: string | null }
/** Their contents. */
export interface TlsPem { ca?: string; cert?: string; key?: string }

export function tlsFromEnv(env: NodeJS.ProcessEnv = process.env): TlsFiles | null {
  const ca = env[TLS_ENV.ca] || null, cert = env[TLS_ENV.cert] || null, key = env[TLS_ENV.key] || null;
  return ca || cert || key ? { ca, cert, key } : null;
}

/** Reads the given PEM files now (`what` names the connection in errors: "NATS TLS", "data plane TLS"). */
export function readTlsFiles(tls: TlsFiles, what: string): TlsPem {
  if (!!tls.cert !== !!tls.key) throw new InvalidArgumentError(`${what}: give both a certificate and its key (${TLS_ENV.cert} and ${TLS_ENV.key}, or --tls-cert and --tls-key), not one of them`);
  const read = (kind: string, f: string): string => {
    try { return readFileSync(resolve(f), 'utf8'); } catch (e) {
      throw new InvalidArgumentError(`${what}: cannot read the ${kind} file ${f} (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
    }
  };
  const out: TlsPem = {};
  if (tls.ca) out.ca = read('CA', tls.ca);
  if (tls.cert) out.cert = read('certificate', tls.cert);
  if (tls.key) out.key = read('key', tls.key);
  return out;
}

const TLS_HINTS: Array<[RegExp, string]> = [
  [/self[- ]signed|unable to (?:verify|get local issuer)|unknown ca|certificate (?:signature failure|verify failed)/i,
    `the server's certificate is not signed by a CA this client trusts: give the job's CA (--tls-ca, or ${TLS_ENV.ca}; draftwire certs writes ca.pem)`],
  [/altnames|hostname\/ip does not match|ERR_TLS_CERT_ALTNAME/i,
    'the server\'s certificate does not name the host in the URL: make it for that name or address (draftwire certs --hosts ...)'],
  [/certificate required|bad certificate|handshake failure|alert number 116|alert number 42/i,
    `the server refused this client's certificate (it requires one signed by the job's CA): give --tls-cert and --tls-key (or ${TLS_ENV.cert}/${TLS_ENV.key})`],
  [/server does not support 'tls'|tls.*is not available/i,
    'the server does not offer TLS: start it with a certificate (--tls-cert/--tls-key), or connect on loopback without the TLS options'],
  [/expired|not yet valid/i, 'a certificate is expired or not yet valid: make new ones (draftwire certs)'],
];
/** With TLS asked for, a connection the server drops during the handshake: most often a client certificate it does not accept. */
const TLS_RESET: [RegExp, string] = [/ECONNRESET|EPIPE|socket hang up|disconnected before secure/i,
  `the server closed the connection during the TLS handshake: it most likely refused this client's certificate (it must be signed by the job's CA: --tls-cert/--tls-key, or ${TLS_ENV.cert}/${TLS_ENV.key})`];

/**
 * A connection error read as a TLS failure: `why` (OpenSSL's alert or first line, and the
 * code), `hint` (what to give); null when it is not one. `tlsAsked`: TLS was configured, so a
 * reset during the handshake counts as a refused certificate.
 */
export function tlsFailure(e: unknown, tlsAsked: boolean): { why: string; hint: string } | null {
  const chain: string[] = [];
  let why = '';
  for (let x: unknown = e, i = 0; x && i < 5; x = (x as { cause?: unknown }).cause, i++) {
    const msg = String((x as Error).message ?? x), code = (x as { code?: unknown }).code;
    chain.push(`${msg} ${typeof code === 'string' ? code : ''}`);
    // OpenSSL's multi-line text: keep the alert's name, or the first line.
    const line = msg.split('\n')[0]!;
    why = (/alert [a-z ]+/i.exec(line)?.[0] ?? (/:SSL routines:/.test(line) ? line.split(':').slice(-2, -1)[0] : line)).trim().slice(0, 160) + (typeof code === 'string' ? ` [${code}]` : '');
  }
  const text = chain.join(' | ');
  const hint = TLS_HINTS.find(([re]) => re.test(text)) ?? (tlsAsked && TLS_RESET[0].test(text) ? TLS_RESET : undefined);
  return hint && (tlsAsked || /certificate|tls|ssl/i.test(text)) ? { why, hint: hint[1] } : null;
}
