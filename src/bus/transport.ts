// How the Bus reaches NATS: the server list, TLS, the plaintext refusal, and the replica count
// of the streams and KV buckets it creates. Pure functions (no NATS client here), so the
// rules read in one place and tests check them without a server.
//
// - Servers: a string or a list, each possibly comma-separated (`--nats url1,url2,url3`);
//   every one goes to the client, which fails over between them.
// - TLS: explicit options, else DRAFTWIRE_TLS_CA / DRAFTWIRE_TLS_CERT / DRAFTWIRE_TLS_KEY (so
//   the rank processes a node spawns inherit its files). With TLS on, the client insists on it
//   for every server: a server that does not offer TLS is refused before CONNECT is sent.
//   A `tls://` URL turns TLS on too (the system's trust store, unless a CA is given).
// - Plaintext refusal: with credentials (a secret), a server that is not on loopback
//   (127.0.0.0/8, ::1, localhost) is refused without TLS, before anything connects: the NATS
//   password travels in clear in the CONNECT line otherwise. On loopback without TLS the
//   client ignores the servers a cluster gossips (they may be remote).
// - Replicas: 3 when the cluster has 3 or more servers, else 1. The cluster's size as a
//   client sees it: the distinct client URLs the server gossips (`connect_urls` in INFO; a
//   server that is not clustered has no `cluster` name: 1), at least the servers given.
import { isIP } from 'node:net';
import { InvalidArgumentError } from '../errors.ts';
import { readTlsFiles, TLS_ENV, tlsFromEnv, type TlsFiles } from '../tls.ts';

/** PEM files (paths) for a TLS client: the CA that signed the servers, this client's certificate and key. */
export type BusTlsOptions = TlsFiles;

export { TLS_ENV, tlsFromEnv };
export const REPLICAS_ENV = 'DRAFTWIRE_NATS_REPLICAS';

/** Every server URL, split at commas, trimmed, empty ones dropped. */
export function splitServers(servers: string | string[]): string[] {
  return (Array.isArray(servers) ? servers : [servers]).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
}

/** Host and scheme of a NATS server URL (`host:port` without a scheme is nats://). */
export function parseServer(url: string): { scheme: string; host: string; port: number | null } {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(url) ? url : `nats://${url}`;
  let u: URL;
  try { u = new URL(withScheme.replace(/^([a-z][a-z0-9+.-]*):\/\//i, 'http://')); } catch { throw new InvalidArgumentError(`"${url}" is not a NATS server URL`); }
  const scheme = withScheme.slice(0, withScheme.indexOf(':')).toLowerCase();
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  return { scheme, host, port: u.port ? Number(u.port) : null };
}

/** 127.0.0.0/8, ::1 (any spelling, or IPv4-mapped loopback), localhost. Names other than localhost are not resolved. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (h === 'localhost' || h === 'localhost.') return true;
  const v = isIP(h);
  if (v === 4) return Number(h.split('.')[0]) === 127;
  if (v === 6) {
    // A trailing dotted IPv4 (::ffff:127.0.0.1) becomes two hex groups, then every group is spelled out.
    const m = /^(.*:)(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(h);
    const hex = m ? `${m[1]}${((+m[2] << 8) | +m[3]).toString(16)}:${((+m[4] << 8) | +m[5]).toString(16)}` : h;
    const full = expandV6(hex);
    return full === '0000:0000:0000:0000:0000:0000:0000:0001' || full.startsWith('0000:0000:0000:0000:0000:ffff:7f');
  }
  return false;
}

function expandV6(h: string): string {
  const [head, tail] = h.includes('::') ? h.split('::') : [h, ''];
  const a = head ? head.split(':') : [];
  const b = tail ? tail.split(':') : [];
  const mid = h.includes('::') ? Array(8 - a.length - b.length).fill('0') : [];
  return [...a, ...mid, ...b].map((x) => x.padStart(4, '0')).join(':');
}

/**
 * The nats.js `tls` option for these servers and TLS files (undefined: TLS not asked for;
 * the client then upgrades only if a server requires it). Reads the PEM files now, so a
 * missing or unreadable file is an InvalidArgumentError naming it, before anything connects.
 */
export function clientTls(servers: string[], tls: BusTlsOptions | null): { ca?: string; cert?: string; key?: string } | undefined {
  const wantsTls = !!(tls && (tls.ca || tls.cert || tls.key)) || servers.some((s) => parseServer(s).scheme === 'tls');
  if (!wantsTls) return undefined;
  if (!tls) return {};
  return readTlsFiles(tls, 'NATS TLS');
}

/**
 * Refuses (InvalidArgumentError, before connecting) a server that is not on loopback when
 * a password would go to it without TLS.
 */
export function refusePlaintext(servers: string[], o: { credentials: boolean; tls: boolean }): void {
  if (!o.credentials || o.tls) return;
  for (const s of servers) {
    const { host } = parseServer(s);
    if (isLoopbackHost(host)) continue;
    throw new InvalidArgumentError(
      `refusing to connect to NATS at ${s} without TLS: a secret is set, and the NATS password would travel in clear in the CONNECT line ` +
      `to ${host}, which is not loopback. Fix: give the job's CA and this machine's certificate (--tls-ca, --tls-cert, --tls-key, ` +
      `or ${TLS_ENV.ca}/${TLS_ENV.cert}/${TLS_ENV.key}; draftwire certs makes them), or run NATS on loopback (127.0.0.1, ::1, localhost)`,
      { detail: { server: s, host } });
  }
}

/** 3 replicas from 3 servers on, else 1. */
export function replicasFor(clusterSize: number): number {
  return clusterSize >= 3 ? 3 : 1;
}

/** The cluster's size from a server's INFO: 1 unless clustered; else the distinct gossiped client URLs, at least `given`. */
export function clusterSizeFromInfo(info: { cluster?: string; connect_urls?: string[] } | undefined, given = 1): number {
  if (!info?.cluster) return 1;
  return Math.max(new Set(info.connect_urls ?? []).size, given, 1);
}

/** DRAFTWIRE_NATS_REPLICAS: a positive integer, or absent (null). */
export function replicasFromEnv(env: NodeJS.ProcessEnv = process.env): number | null {
  const v = env[REPLICAS_ENV];
  if (v === undefined || v === '') return null;
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 5) throw new InvalidArgumentError(`${REPLICAS_ENV} must be an integer in 1..5, got "${v}"`);
  return Number(v);
}
