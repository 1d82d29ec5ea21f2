// bf16/f16 → f32 upcast throughput (native/src/convert.cc) next to a native memcpy of the same
// output bytes, measured in the same run, at the sizes a step meets: the default job's batch
// (small preset: 8 samples, T = 64, H = 64), the demo preset's, and 64 MiB of f32. Bandwidth
// counts the f32 bytes written per second (memcpy: bytes copied per second), so "convert ≈
// memcpy" means the upcast runs at memory speed. Also stackBatch of the default batch, f32 vs bf16.
// Run: node --import tsx bench/convert.bench.ts [--min-ms 300] [--json]
// (--min-ms: how long each conversion is timed; --json: one JSON line per figure, bench/support/report.ts,
// the conversions against the memcpy of the same case, stackBatch from bf16 against from f32)
import { parseArgs } from 'node:util';
import { SIZES } from '../cluster/presets.ts';
import { stackBatch } from '../src/job/batch.ts';
import { convertInfo, upcastToF32 } from '../src/native/addon.ts';
import { memcpyBandwidth } from '../src/native/collectives.ts';
import { tensor, type Tensor } from '../src/tensor.ts';
import { Reporter } from './support/report.ts';

const { values } = parseArgs({ options: { 'min-ms': { type: 'string', default: '300' }, json: { type: 'boolean', default: false } } });
const MIN_MS = Number(values['min-ms']);
const report = Reporter.forBench(import.meta.url);
const BATCH = 8;

/** Seconds per call of fn, over at least minMs after a warm-up. */
function timeIt(fn: () => void, minMs = MIN_MS): number {
  for (let i = 0; i < 5; i++) fn();
  let n = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < minMs) { fn(); n++; t = performance.now(); }
  return (t - t0) / 1000 / n;
}

// Elements of aux + last in one step's batch: B·T·3H + B·T·H.
const batchElems = (name: string) => { const p = SIZES[name]!; return BATCH * p.seqLen * 4 * p.draft.hidden; };
const cases = [
  { name: `default batch (small, B=${BATCH})`, elems: batchElems('small') },
  { name: `demo batch (B=${BATCH})`, elems: batchElems('demo') },
  { name: '64 MiB of f32', elems: 16 << 20 },
];

const rows = cases.map(({ name, elems }) => {
  const src = Uint16Array.from({ length: elems }, (_, i) => 0x3c00 + (i % 1021)); // finite in both bf16 and f16
  const dst = new Float32Array(elems);
  const bytes = elems * 4;
  const reps = Math.max(3, Math.ceil(2e9 / bytes));
  const memcpy = memcpyBandwidth(bytes, reps);
  const bf16 = timeIt(() => upcastToF32(src, 'bf16', dst, 0));
  const f16 = timeIt(() => upcastToF32(src, 'f16', dst, 0));
  const f16p = timeIt(() => upcastToF32(src, 'f16', dst, 0, { portable: true }));
  const gbs = (s: number) => bytes / s / 1e9;
  return { case: name, f32Bytes: bytes, memcpyGBs: memcpy, bf16GBs: gbs(bf16), f16GBs: gbs(f16), f16PortableGBs: gbs(f16p), bf16Ms: bf16 * 1e3, f16Ms: f16 * 1e3 };
});

// stackBatch of the default job's batch, features stored in f32 vs bf16 (what a rank does per step).
const p = SIZES.small!;
const T = p.seqLen, H = p.draft.hidden;
const sample = (dt: 'f32' | 'bf16'): Record<string, Tensor> => {
  const s: Record<string, Tensor> = { ids: tensor('i32', [T]), aux: tensor(dt, [T, 3 * H]), last: tensor(dt, [T, H]), mask: tensor('u8', [T]) };
  (s.aux!.data as Float32Array | Uint16Array).fill(dt === 'f32' ? 1 : 0x3f80);
  (s.last!.data as Float32Array | Uint16Array).fill(dt === 'f32' ? 1 : 0x3f80);
  return s;
};
const stack = Object.fromEntries((['f32', 'bf16'] as const).map((dt) => {
  const ss = Array.from({ length: BATCH }, () => sample(dt));
  return [dt, timeIt(() => { stackBatch(ss, T, H); }) * 1e3];
})) as Record<'f32' | 'bf16', number>;

const out = { f16c: convertInfo().f16c, rows, stackBatchMs: stack };
report.context({ f16c: out.f16c, minMs: MIN_MS });
for (const r of rows) {
  const ctx = { f32Bytes: r.f32Bytes };
  const mem = report.add({ name: `memcpy, ${r.case}`, value: r.memcpyGBs, unit: 'GB/s', ...ctx });
  report.add({ name: `bf16→f32, ${r.case}`, value: r.bf16GBs, unit: 'GB/s', baseline: mem, ...ctx });
  report.add({ name: `f16→f32, ${r.case}`, value: r.f16GBs, unit: 'GB/s', baseline: mem, ...ctx });
  report.add({ name: `f16→f32 portable, ${r.case}`, value: r.f16PortableGBs, unit: 'GB/s', baseline: mem, ...ctx });
}
const f32 = report.add({ name: 'stackBatch, default batch, from f32', value: stack.f32, unit: 'ms' });
report.add({ name: 'stackBatch, default batch, from bf16', value: stack.bf16, unit: 'ms', baseline: f32 });
report.log(`f16 path: ${out.f16c ? 'F16C' : 'portable'} (GB/s of f32 output written; memcpy copies the same bytes)`);
report.markdown(['case', 'f32 bytes', 'memcpy GB/s', 'bf16→f32 GB/s', 'f16→f32 GB/s', 'f16 portable GB/s', 'bf16 ms', 'f16 ms'], rows.map((r) => [
  r.case, r.f32Bytes.toLocaleString('en-US'), r.memcpyGBs.toFixed(1), r.bf16GBs.toFixed(1), r.f16GBs.toFixed(1), r.f16PortableGBs.toFixed(1), r.bf16Ms.toFixed(3), r.f16Ms.toFixed(3),
]));
report.log(`stackBatch, default batch: f32 ${stack.f32.toFixed(3)} ms, bf16 ${stack.bf16.toFixed(3)} ms`);
report.end();
