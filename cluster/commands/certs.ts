// `draftwire certs --out DIR --hosts h1,h2,... [--days N]`: a job's own CA and one
// certificate per machine, for a quick start with TLS (the operator's own PKI works as well).
// Made by the system's `openssl` (spawned; no X.509 written here):
//   ca.pem, ca.key        the job CA (EC P-256, CA:TRUE, keyCertSign); reused when DIR has one,
//                         so adding a machine later signs with the same CA
//   <host>.pem, <host>.key one per host: CN and subjectAltName = the host (DNS or IP), plus
//                         localhost, 127.0.0.1 and ::1 (a node reaches its own NATS member on
//                         loopback); extendedKeyUsage serverAuth + clientAuth (the same
//                         certificate serves clients, routes and connects as a client)
// Keys are 0600, certificates 0644, DIR 0700. Keep ca.key off the machines: only ca.pem,
// <host>.pem and <host>.key go to each.
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Command } from 'commander';
import { InvalidArgumentError as OptionError } from 'commander';
import { InvalidArgumentError, UnavailableError } from '../../src/errors.ts';
import type { GlobalOptions } from '../options.ts';
import { intInRange } from '../options.ts';

export interface CertsOptions { out: string; hosts: string[]; days?: number; openssl?: string }
export interface CertsResult { dir: string; ca: { cert: string; key: string; reused: boolean }; nodes: Array<{ host: string; cert: string; key: string }> }

const DNS_RE = /^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/** A host name (letters, digits, hyphens, dots) or an IPv4/IPv6 address; anything else is refused. */
export function certHost(h: string): string {
  const v = h.trim().replace(/^\[(.*)\]$/, '$1');
  if (isIP(v) || DNS_RE.test(v)) return v;
  throw new InvalidArgumentError(`--hosts: "${h}" is neither a host name nor an IP address`);
}

/** The file stem for a host's certificate and key (an IPv6 address's colons become '_'). */
export function certStem(host: string): string { return host.replace(/:/g, '_'); }

function run(openssl: string, args: string[]): Promise<string> {
  return new Promise((res, rej) => {
    execFile(openssl, args, { encoding: 'utf8', maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
          rej(new UnavailableError(`${openssl} is not installed: install it (Debian: apt-get install openssl; scripts/setup.sh does) or pass your own certificates to --tls-cert/--tls-key/--tls-ca`));
        } else rej(new UnavailableError(`${openssl} ${args[0]} failed: ${(stderr || err.message).trim().split('\n').slice(-3).join(' | ')}`));
        return;
      }
      res(stdout);
    });
  });
}

/** An empty 0600 file for openssl to write a key into (it keeps the mode): the key is never readable by others, not even briefly. */
function privateFile(path: string): void {
  writeFileSync(path, '', { mode: 0o600 });
  chmodSync(path, 0o600);
}

function san(host: string): string {
  const names = [host, 'localhost', '127.0.0.1', '::1'];
  return [...new Set(names)].map((n) => (isIP(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
}

/** Makes (or reuses) the CA in `out` and a certificate for every host. */
export async function makeCerts(o: CertsOptions): Promise<CertsResult> {
  const openssl = o.openssl ?? process.env.DRAFTWIRE_OPENSSL ?? 'openssl';
  const hosts = [...new Set(o.hosts.map(certHost))];
  if (hosts.length === 0) throw new InvalidArgumentError('--hosts: give at least one host name or address');
  const days = o.days ?? 365;
  if (!Number.isInteger(days) || days < 1 || days > 36500) throw new InvalidArgumentError(`--days must be an integer in 1..36500, got ${days}`);
  await run(openssl, ['version']);
  const dir = resolve(o.out);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const caCert = join(dir, 'ca.pem'), caKey = join(dir, 'ca.key');
  const reused = existsSync(caCert) && existsSync(caKey);
  if (!reused) {
    if (existsSync(caCert) !== existsSync(caKey)) throw new InvalidArgumentError(`${dir} has one of ca.pem and ca.key but not the other; remove it or give another --out`);
    privateFile(caKey);
    await run(openssl, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', caKey]);
    await run(openssl, ['req', '-x509', '-new', '-key', caKey, '-sha256', '-days', String(days), '-subj', '/O=draftwire/CN=draftwire job CA',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-out', caCert]);
    chmodSync(caCert, 0o644);
  }
  const tmp = mkdtempSync(join(dir, '.tmp-'));
  const nodes: CertsResult['nodes'] = [];
  try {
    for (const host of hosts) {
      const stem = certStem(host);
      const key = join(dir, `${stem}.key`), cert = join(dir, `${stem}.pem`), csr = join(tmp, `${stem}.csr`), ext = join(tmp, `${stem}.ext`);
      writeFileSync(ext, [
        '[v3]',
        'basicConstraints = critical,CA:FALSE',
        'keyUsage = critical,digitalSignature,keyEncipherment',
        'extendedKeyUsage = serverAuth,clientAuth',
        `subjectAltName = ${san(host)}`,
        'subjectKeyIdentifier = hash',
        'authorityKeyIdentifier = keyid,issuer',
        '',
      ].join('\n'));
      privateFile(key);
      await run(openssl, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key]);
      // The CN is a host name or an address (checked above): nothing in it is special to -subj.
      await run(openssl, ['req', '-new', '-key', key, '-subj', `/O=draftwire/CN=${host}`, '-out', csr]);
      await run(openssl, ['x509', '-req', '-in', csr, '-CA', caCert, '-CAkey', caKey, '-set_serial', '0x' + randomBytes(16).toString('hex').replace(/^[89a-f]/, '1'),
        '-days', String(days), '-sha256', '-extfile', ext, '-extensions', 'v3', '-out', cert]);
      chmodSync(cert, 0o644);
      nodes.push({ host, cert, key });
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return { dir, ca: { cert: caCert, key: caKey, reused }, nodes };
}

function hostList(v: string): string[] {
  const hs = v.split(',').map((h) => h.trim()).filter(Boolean);
  if (hs.length === 0) throw new OptionError('--hosts must name at least one host, e.g. --hosts node-a,node-b,10.0.0.3');
  for (const h of hs) { try { certHost(h); } catch (e) { throw new OptionError((e as Error).message); } }
  return hs;
}

export function command(): Command {
  return new Command('certs')
    .summary('make a job CA and one TLS certificate per machine (with the system\'s openssl)')
    .requiredOption('--out <dir>', 'where to write ca.pem, ca.key and <host>.pem/<host>.key (a CA already there is reused)')
    .requiredOption('--hosts <list>', 'comma-separated host names or IP addresses, one certificate each', hostList)
    .option('--days <n>', 'validity in days', intInRange('--days', 1, 36500), 365)
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals<GlobalOptions & { out: string; hosts: string[]; days: number }>();
      const r = await makeCerts({ out: o.out, hosts: o.hosts, days: o.days });
      if (o.json) { process.stdout.write(JSON.stringify(r) + '\n'); return; }
      process.stdout.write(`CA: ${r.ca.cert}${r.ca.reused ? ' (reused)' : ''}; keep ${r.ca.key} off the machines\n`);
      for (const n of r.nodes) process.stdout.write(`${n.host}: --tls-cert ${n.cert} --tls-key ${n.key} --tls-ca ${r.ca.cert}\n`);
    });
}
