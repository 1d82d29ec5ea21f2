// SampleRef codec throughput: encode+decode (with full validation) per second, against raw
// msgpackr and JSON on the same record, plus MAC sign/verify. Baselines run in the same process.
// Run: node --import tsx bench/codec.bench.ts [--min-ms 1000] [--json]
// (--min-ms: the time each operation runs for; --json: one JSON line per figure, bench/support/report.ts)
import { parseArgs } from 'node:util';
import { Packr } from 'msgpackr';
import { AuthPolicy } from '../src/wire/auth.ts';
import { decodeSampleRef, encodeSampleRef, type SampleRef } from '../src/wire/sampleref.ts';
import { Reporter } from './support/report.ts';

const { values } = parseArgs({ options: { 'min-ms': { type: 'string', default: '1000' }, json: { type: 'boolean', default: false } } });
const MIN_MS = Number(values['min-ms']);
const report = Reporter.forBench(import.meta.url);

const ref: SampleRef = {
  v: 1, job: 'job1', sampleId: 'ds.train:000123456', generation: 1_795_875_193_774,
  uri: 'dir://store-a/ds.train:000123456?g=1795875193774',
  features: { aux: { dtype: 'bf16', shape: [2048, 12288] }, ids: { dtype: 'i32', shape: [2048] }, last: { dtype: 'bf16', shape: [2048, 4096] }, mask: { dtype: 'u8', shape: [2048] } },
  numTokens: 2048, bytes: 2048 * 12288 * 2 + 2048 * 4 + 2048 * 4096 * 2 + 2048,
  checksum: 'sha256m:' + 'ab'.repeat(32), producer: { node: 'node-1', actor: 'rollout.0', incarnation: 3 }, createdAt: 1_795_875_193_774,
};
const auth = AuthPolicy.fromSecret('bench-secret-0123456789abcdef');
const signed = auth.signRef(ref);

function rate(name: string, fn: () => void, minMs = MIN_MS): { name: string; opsPerSec: number; usPerOp: number } {
  for (let i = 0; i < 20000; i++) fn(); // warm up (JIT)
  let n = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < minMs) { for (let i = 0; i < 500; i++) fn(); n += 500; t = performance.now(); }
  const s = (t - t0) / 1000;
  return { name, opsPerSec: n / s, usPerOp: (s * 1e6) / n };
}

const raw = new Packr({ useRecords: false });
const rawBytes = raw.pack(ref);
const json = JSON.stringify(ref);
const enc = encodeSampleRef(signed);
let sink = 0;
const rows = [
  rate('baseline: msgpackr pack+unpack (no validation)', () => { sink += (raw.unpack(raw.pack(ref)) as SampleRef).bytes; }),
  rate('baseline: JSON stringify+parse', () => { sink += (JSON.parse(JSON.stringify(ref)) as SampleRef).bytes; }),
  rate('encodeSampleRef', () => { sink += encodeSampleRef(ref).byteLength; }),
  rate('decodeSampleRef (validated)', () => { sink += decodeSampleRef(enc).bytes; }),
  rate('SampleRef encode+decode', () => { sink += decodeSampleRef(encodeSampleRef(signed)).bytes; }),
  rate('signRef (HMAC-SHA256)', () => { sink += auth.signRef(ref).mac!.byteLength; }),
  rate('decode+verifyRef', () => { const r = decodeSampleRef(enc); auth.verifyRef(r); sink += r.bytes; }),
];
report.context({ signedBytes: enc.byteLength, rawMsgpackBytes: rawBytes.byteLength, jsonBytes: Buffer.byteLength(json), minMs: MIN_MS });
const baselineOf: Record<string, string | undefined> = {
  'encodeSampleRef': rows[0]!.name, 'decodeSampleRef (validated)': rows[0]!.name, 'SampleRef encode+decode': rows[0]!.name,
  'decode+verifyRef': 'decodeSampleRef (validated)',
};
const added = new Map<string, ReturnType<typeof report.add>>();
for (const r of rows) {
  const b = baselineOf[r.name];
  added.set(r.name, report.add({ name: r.name, value: r.opsPerSec, unit: 'ops/s', baseline: b ? added.get(b)! : null }));
}
report.log(`SampleRef: ${enc.byteLength} bytes signed (raw msgpack ${rawBytes.byteLength}, JSON ${Buffer.byteLength(json)})`);
report.markdown(['operation', 'ops/s', 'µs/op'], rows.map((r) => [r.name, Math.round(r.opsPerSec).toLocaleString('en-US'), r.usPerOp.toFixed(2)]));
if (sink === 42) report.log('');
report.end();
