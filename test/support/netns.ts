// Hosts on one machine for the cluster tests (test/cluster/): N network namespaces, each with
// a veth pair into one bridge and its own address, and its own directories (no path shared
// between hosts). Processes run inside a host with `ip netns exec`; a host's processes (and
// everything under them) can be killed or frozen together, and its link taken down and up.
// Needs root for `ip netns` (CI runs as root); without it `requireNetns()` says why.
//
// Names carry this process's pid so concurrent runs never collide, and everything made here
// is removed by destroy() (also from process 'exit', if a test forgot).
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { descendants } from './chaos.ts';
import type { Child } from './procs.ts';

/** Throws, saying why, unless this process can make network namespaces (root and `ip`). */
export function requireNetns(): void {
  const why = process.getuid?.() !== 0 ? `they run as uid ${process.getuid?.()}, and ip netns needs root`
    : spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).error ? 'the ip command (iproute2) is missing'
      : null;
  if (why) throw new Error(`test/cluster needs network namespaces to build its hosts, but ${why}. Run the suite as root (CI does), or set DRAFTWIRE_SKIP_NETNS=1 to skip these tests on purpose (they are then reported as pending, not passed).`);
}

function ip(args: string[], ns?: string): void {
  const full = ns ? ['netns', 'exec', ns, 'ip', ...args] : args;
  const r = spawnSync('ip', full, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${full.join(' ')}: ${r.stderr.trim() || `exit ${r.status}`}`);
}

export interface Host {
  index: number;
  /** The namespace's name. */
  ns: string;
  /** Its address on the bridge's subnet. */
  addr: string;
  /** Its own directory (nothing under it is shared with another host). */
  dir: string;
  /** The veth end on the bridge (taken down to cut the host off). */
  link: string;
  procs: Child[];
}

const live = new Set<Netns>();
process.on('exit', () => { for (const n of live) n.destroySync(); });

export class Netns {
  readonly hosts: Host[] = [];
  readonly bridge: string;
  /** The bridge's address: how this (root-namespace) process reaches the hosts. */
  readonly gateway: string;
  readonly root: string;
  private readonly tag: string;

  private constructor(n: number) {
    this.tag = (process.pid % 100_000).toString(36) + Math.floor(Math.random() * 36 ** 2).toString(36);
    this.bridge = `dwb${this.tag}`;
    const net = 10 + (process.pid % 200);
    const sub = Math.floor(Math.random() * 250);
    this.gateway = `10.${net}.${sub}.254`;
    this.root = mkdtempSync(join(tmpdir(), 'dw-hosts-'));
    live.add(this);
    try {
      ip(['link', 'add', this.bridge, 'type', 'bridge']);
      ip(['addr', 'add', `${this.gateway}/24`, 'dev', this.bridge]);
      ip(['link', 'set', this.bridge, 'up']);
      for (let i = 1; i <= n; i++) {
        const ns = `dwt${this.tag}h${i}`, link = `dwv${this.tag}h${i}`, addr = `10.${net}.${sub}.${i}`;
        ip(['netns', 'add', ns]);
        ip(['link', 'add', link, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
        ip(['link', 'set', link, 'master', this.bridge]);
        ip(['link', 'set', link, 'up']);
        ip(['addr', 'add', `${addr}/24`, 'dev', 'eth0'], ns);
        ip(['link', 'set', 'eth0', 'up'], ns);
        ip(['link', 'set', 'lo', 'up'], ns);
        const dir = join(this.root, `host${i}`);
        mkdirSync(dir, { recursive: true });
        this.hosts.push({ index: i, ns, addr, dir, link, procs: [] });
      }
    } catch (e) {
      this.destroySync();
      throw e;
    }
  }

  /** N hosts on one bridge. */
  static create(n: number): Netns {
    requireNetns();
    return new Netns(n);
  }

  /** Runs `cmd args` inside host `h` (its output kept, as procs.ts's Child). */
  run(h: Host, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Child {
    const proc = spawn('ip', ['netns', 'exec', h.ns, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => { out += d; });
    proc.stderr!.on('data', (d: Buffer) => { out += d; });
    const exited = new Promise<number | null>((r) => proc.on('exit', (c, sig) => r(c ?? (sig ? 128 : null))));
    const c: Child = { proc, output: () => out, exited };
    h.procs.push(c);
    return c;
  }

  /** Every live process of host `h` and everything under them. */
  pidsOf(h: Host): number[] {
    const roots = h.procs.filter((c) => c.proc.exitCode === null && c.proc.signalCode === null).map((c) => c.proc.pid!);
    return [...new Set(roots.flatMap((p) => [p, ...descendants(p).map((d) => d.pid)]))];
  }

  /** Sends `signal` to every process of host `h` at once (its machine dies, or freezes). */
  signalHost(h: Host, signal: NodeJS.Signals): number[] {
    const pids = this.pidsOf(h);
    for (const pid of pids) { try { process.kill(pid, signal); } catch { /* gone */ } }
    return pids;
  }

  /** Cuts host `h` off the network (its link down), or heals it. */
  setLink(h: Host, up: boolean): void { ip(['link', 'set', h.link, up ? 'up' : 'down']); }

  /** Kills every process, removes the namespaces, the bridge and the hosts' directories. */
  async destroy(): Promise<void> {
    for (const h of this.hosts) {
      this.signalHost(h, 'SIGCONT');
      this.signalHost(h, 'SIGKILL');
      await Promise.all(h.procs.map((c) => c.exited));
    }
    this.destroySync();
  }

  destroySync(): void {
    for (const h of this.hosts) { this.signalHost(h, 'SIGCONT'); this.signalHost(h, 'SIGKILL'); }
    for (const h of this.hosts) spawnSync('ip', ['netns', 'del', h.ns]);
    for (const h of this.hosts) spawnSync('ip', ['link', 'del', h.link]);
    spawnSync('ip', ['link', 'del', this.bridge]);
    rmSync(this.root, { recursive: true, force: true });
    live.delete(this);
  }
}
