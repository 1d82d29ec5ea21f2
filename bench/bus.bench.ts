// Request/reply through a real nats-server: Bus (msgpack + seal/open, auth off and on)
// against a raw nats.js request loop with the same payload, in one run.
//
//   node --import tsx bench/bus.bench.ts [--n 5000] [--concurrency 64] [--json]
//
// Prints, per variant: round trips/s, p50, p99 (ms), for one request in flight and for
// `concurrency` in flight. --json: one JSON line per figure (bench/support/report.ts), each
// against raw nats.js in the same mode.

import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startNatsServer } from '../cluster/nats-launcher.ts';
import { Bus } from '../src/bus/bus.ts';
import { AuthPolicy } from '../src/wire/auth.ts';
import { encodeMessage, decodeMessage } from '../src/wire/sampleref.ts';
import { Reporter, type Measured } from './support/report.ts';

process.env.DRAFTWIRE_LOG_LEVEL ??= 'warn';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}
const N = arg('n', 5000);
const CONC = arg('concurrency', 64);
const report = Reporter.forBench(import.meta.url);

// A credit/ack-sized control message (~200 bytes msgpack).
const payload = {
  leaseId: 'l-0123456789abcdef', epoch: 7, rank: 3, sampleIds: Array.from({ length: 8 }, (_, i) => `sample-${100000 + i}`), deadline: Date.now(),
};

interface Result { variant: string; mode: string; n: number; rps: number; p50: number; p99: number; mean: number }

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function measure(variant: string, mode: 'serial' | 'concurrent', n: number, conc: number, once: () => Promise<unknown>): Promise<Result> {
  for (let i = 0; i < Math.min(500, n); i++) await once(); // warm-up
  const lat: number[] = new Array(n);
  let next = 0;
  const t0 = performance.now();
  const worker = async () => {
    while (true) {
      const i = next++;
      if (i >= n) return;
      const s = performance.now();
      await once();
      lat[i] = performance.now() - s;
    }
  };
  await Promise.all(Array.from({ length: mode === 'serial' ? 1 : conc }, worker));
  const secs = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  return { variant, mode: mode === 'serial' ? 'serial (1 in flight)' : `${conc} in flight`, n, rps: n / secs, p50: pct(lat, 50), p99: pct(lat, 99), mean: lat.reduce((a, b) => a + b, 0) / n };
}

async function main(): Promise<void> {
  const auth = AuthPolicy.fromSecret('bench-secret-0123456789abcdef');
  const open = await startNatsServer({ port: -1 });
  const secured = await startNatsServer({ port: -1, credentials: auth.natsCredentials() });
  const results: Result[] = [];
  try {
    // 1. raw nats.js baseline: same msgpack payload, no envelope, no validation.
    {
      const srv: NatsConnection = await connect({ servers: open.url });
      const cli: NatsConnection = await connect({ servers: open.url });
      const body = encodeMessage(payload);
      srv.subscribe('bench.raw', { callback: (_e, m) => { m.respond(m.data); } });
      await srv.flush();
      const once = () => cli.request('bench.raw', body, { timeout: 5000 });
      results.push(await measure('raw nats.js', 'serial', N, CONC, once));
      results.push(await measure('raw nats.js', 'concurrent', N * 4, CONC, once));
      // raw + the same codec work the Bus does minus auth (encode/decode both ways)
      srv.subscribe('bench.rawc', { callback: (_e, m) => { const o = decodeMessage(m.data); m.respond(encodeMessage({ k: 'r', d: o })); } });
      await srv.flush();
      const onceC = async () => decodeMessage((await cli.request('bench.rawc', encodeMessage({ k: 'q', d: payload }), { timeout: 5000 })).data);
      results.push(await measure('raw nats.js + msgpack', 'serial', N, CONC, onceC));
      await srv.close(); await cli.close();
    }
    // 2. Bus, auth disabled.
    for (const [variant, url, pol] of [['Bus (auth off)', open.url, AuthPolicy.disabled()], ['Bus (HMAC auth on)', secured.url, auth]] as const) {
      const srv = await Bus.connect({ servers: url, job: 'bench', auth: pol, name: 'srv' });
      const cli = await Bus.connect({ servers: url, job: 'bench', auth: variant.includes('on') ? AuthPolicy.fromSecret('bench-secret-0123456789abcdef') : pol, name: 'cli' });
      // The Bus itself, measured on a protocol subject with an echo handler (no queue behind it).
      srv.subscribe(srv.subjects.queue.ack, (m: unknown) => m);
      await srv.flush();
      const once = () => cli.request(cli.subjects.queue.ack, payload, { timeoutMs: 5000, retries: 0 });
      results.push(await measure(variant, 'serial', N, CONC, once));
      results.push(await measure(variant, 'concurrent', N * 4, CONC, once));
      const st = srv.stats();
      if (st.rejectedAuth || st.rejectedDecode) throw new Error(`bench saw rejected messages: ${JSON.stringify(st)}`);
      await srv.close(); await cli.close();
    }
  } finally {
    await open.stop();
    await secured.stop();
  }
  report.context({ payloadBytes: encodeMessage(payload).byteLength, concurrency: CONC });
  const raw = new Map<string, { rps: Measured; p50: Measured; p99: Measured }>();
  for (const r of results) {
    const base = raw.get(r.mode);
    const at = `${r.variant}, ${r.mode}`, ctx = { n: r.n, inFlight: r.mode.startsWith('serial') ? 1 : CONC };
    const fig = {
      rps: report.add({ name: `${at}: round trips/s`, value: r.rps, unit: 'round trips/s', baseline: base?.rps ?? null, ...ctx }),
      p50: report.add({ name: `${at}: p50`, value: r.p50, unit: 'ms', baseline: base?.p50 ?? null, ...ctx }),
      p99: report.add({ name: `${at}: p99`, value: r.p99, unit: 'ms', baseline: base?.p99 ?? null, ...ctx }),
    };
    if (r.variant === 'raw nats.js') raw.set(r.mode, fig);
  }
  report.log(`bus request/reply, nats-server ${'2.9.10'} on loopback, payload ${encodeMessage(payload).byteLength} B msgpack`);
  report.log('variant                    mode                  n        rt/s     p50 ms   p99 ms');
  for (const r of results) {
    report.log(`${r.variant.padEnd(26)} ${r.mode.padEnd(20)} ${String(r.n).padStart(6)} ${r.rps.toFixed(0).padStart(10)} ${r.p50.toFixed(3).padStart(9)} ${r.p99.toFixed(3).padStart(8)}`);
  }
  const base = results.find((r) => r.variant === 'raw nats.js' && r.mode.startsWith('serial'))!;
  const bus = results.find((r) => r.variant === 'Bus (HMAC auth on)' && r.mode.startsWith('serial'))!;
  report.log(`Bus (auth on) serial round trip costs ${(bus.p50 - base.p50).toFixed(3)} ms over raw at p50 (${(base.rps / bus.rps).toFixed(2)}x slower)`);
  report.end();
}

await main();
