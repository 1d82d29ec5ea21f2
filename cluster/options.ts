// Option parsers shared by the subcommands: each names the option in its error.
import { statSync, type Stats } from 'node:fs';
import { InvalidArgumentError as OptionError } from 'commander';

/** Options every subcommand can read with `cmd.optsWithGlobals()`. */
export interface GlobalOptions {
  logLevel?: 'error' | 'warn' | 'info' | 'debug' | 'silent';
  json?: boolean;
}

export function positive(name: string) {
  return (v: string): number => {
    const x = Number(v);
    if (v.trim() === '' || !Number.isFinite(x) || x <= 0) throw new OptionError(`${name} must be a positive number, got "${v}"`);
    return x;
  };
}

export function nonNegative(name: string) {
  return (v: string): number => {
    const x = Number(v);
    if (v.trim() === '' || !Number.isFinite(x) || x < 0) throw new OptionError(`${name} must be a number ≥ 0, got "${v}"`);
    return x;
  };
}

export function positiveInt(name: string) {
  return (v: string): number => {
    const x = Number(v);
    if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(x) || x < 1) throw new OptionError(`${name} must be a positive integer, got "${v}"`);
    return x;
  };
}

export function nonNegativeInt(name: string) {
  return (v: string): number => {
    const x = Number(v);
    if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(x)) throw new OptionError(`${name} must be an integer ≥ 0, got "${v}"`);
    return x;
  };
}

const JOB_RE = /^[A-Za-z0-9_-]{1,64}$/;
export function jobId(v: string): string {
  if (!JOB_RE.test(v)) throw new OptionError(`--job must be 1..64 characters of [A-Za-z0-9_-], got "${v}"`);
  return v;
}

/** An integer in [min, max]; the message names the option and the bound. */
export function intInRange(name: string, min: number, max: number) {
  return (v: string): number => {
    const x = Number(v);
    if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(x) || x < min) throw new OptionError(`${name} must be an integer ≥ ${min}, got "${v}"`);
    if (x > max) throw new OptionError(`${name} must be at most ${max}, got ${x}`);
    return x;
  };
}

const NATS_SCHEMES = new Set(['nats:', 'tls:']);

/**
 * A NATS server URL, or several separated by commas: [nats://|tls://][user:pass@]host[:port].
 * Checked here so a typo is exit 2 before anything connects, not a connect error.
 */
export function natsUrl(v: string): string {
  const parts = v.split(',').map((s) => s.trim());
  for (const p of parts) {
    const bad = (why: string) => new OptionError(`--nats: "${p}" is not a NATS URL (${why}); expected nats://host:port`);
    if (p === '') throw bad('empty');
    let u: URL;
    try { u = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(p) ? p : `nats://${p}`); } catch { throw bad('malformed'); }
    if (!NATS_SCHEMES.has(u.protocol)) throw bad(`scheme ${u.protocol.slice(0, -1)}; use nats:// or tls://`);
    if (u.hostname === '') throw bad('no host');
    if ((u.pathname !== '' && u.pathname !== '/') || u.search !== '' || u.hash !== '') throw bad('a path, query or fragment');
  }
  return parts.join(',');
}

/** A directory that, if it exists, is a directory (it is created later, when needed). */
export function dirOption(name: string) {
  return (v: string): string => {
    if (v.trim() === '') throw new OptionError(`${name} must name a directory, got ""`);
    let st: Stats | undefined;
    try { st = statSync(v); } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return v;
      throw new OptionError(`${name} ${v}: cannot be used (${code ?? String(e)})`);
    }
    if (!st.isDirectory()) throw new OptionError(`${name} ${v} is not a directory`);
    return v;
  };
}

/** A node id: a NATS subject token, as the job id. */
export function nodeId(v: string): string {
  if (!JOB_RE.test(v)) throw new OptionError(`--node-id must be 1..64 characters of [A-Za-z0-9_-], got "${v}"`);
  return v;
}

/** HOST:PORT to listen at or advertise (an IPv6 host kept in brackets); the message names the option. */
export function addressOption(name: string, allowZeroPort: boolean) {
  return (v: string): { host: string; port: number } => {
    const m = /^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253}):([0-9]{1,5})$/.exec(v.trim());
    const port = m ? Number(m[2]) : NaN;
    if (!m || port > 65535 || (port === 0 && !allowZeroPort)) throw new OptionError(`${name} must be HOST:PORT (an IPv6 host in brackets, port ${allowZeroPort ? '0' : '1'}..65535), got "${v}"`);
    return { host: m[1]!, port };
  };
}

/** HOST:PORT (IPv6 in brackets, [::1]:4222); the port 1..65535. */
export function hostPortOption(name: string) {
  return (v: string): { host: string; port: number } => {
    const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(v.trim());
    const port = m ? Number(m[3]) : NaN;
    if (!m || !(port >= 1 && port <= 65535)) throw new OptionError(`${name} must be HOST:PORT (IPv6 as [addr]:port), e.g. 0.0.0.0:4222, got "${v}"`);
    return { host: m[1] ?? m[2]!, port };
  };
}

/** Route URLs of a NATS cluster's members, comma-separated: nats-route://host:port each. */
export function routeList(v: string): string[] {
  const routes = v.split(',').map((s) => s.trim()).filter(Boolean);
  if (routes.length === 0) throw new OptionError('--routes must name at least one route, e.g. nats-route://node-a:6222,nats-route://node-b:6222');
  for (const r of routes) {
    const m = /^nats-route:\/\/(?:\[[0-9A-Fa-f:.]+\]|[^:/@[\]\s]+):(\d{1,5})\/?$/i.exec(r);
    if (!m || !(Number(m[1]) >= 1 && Number(m[1]) <= 65535)) throw new OptionError(`--routes: "${r}" is not a route URL; expected nats-route://host:port (credentials come from the secret)`);
  }
  return routes;
}
