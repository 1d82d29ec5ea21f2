// f32 → bf16 and f32 → f16 (src/tensor.ts, used by capture and export) against numpy's float16
// and torch's bfloat16 conversions: random values over the whole range, subnormals, ties,
// overflow, infinities and NaN, bit for bit.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f32ToBf16, f32ToF16 } from '../../src/tensor.ts';

const PY = `
import sys, numpy as np, torch
x = np.fromfile(sys.argv[1], dtype=np.float32)
np.asarray(x.astype(np.float16).view(np.uint16)).tofile(sys.argv[2])
torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).tofile(sys.argv[3])
`;

describe('f32 → f16 / bf16 downcasts match numpy and torch bit for bit', () => {
  it('random values of every magnitude, subnormals, ties, overflow, inf and NaN', () => {
    const n = 200_000, x = new Float32Array(n), bits = new Uint32Array(x.buffer);
    let s = 12345;
    const next = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s; };
    for (let i = 0; i < n; i++) bits[i] = next(); // every bit pattern is a float (NaNs included)
    const edge = [0, -0, 1, -1, 65504, 65520, 65519.99, 1e-8, 5.96e-8, 2.98e-8, 6.1e-5, 6.097e-5, 1.00048828125, 1.000244140625, 3.4e38, Infinity, -Infinity, NaN];
    x.set(edge, 0);
    for (let i = 0; i < 4096; i++) x[100 + i] = (i - 2048) * 2 ** -24 * 3; // around the half subnormals
    const dir = mkdtempSync(join(tmpdir(), 'dw-downcast-'));
    try {
      writeFileSync(join(dir, 'x'), new Uint8Array(x.buffer));
      const r = spawnSync('python3', ['-c', PY, join(dir, 'x'), join(dir, 'h'), join(dir, 'b')], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const h = new Uint16Array(readFileSync(join(dir, 'h')).buffer.slice(0)), b = new Uint16Array(readFileSync(join(dir, 'b')).buffer.slice(0));
      const gh = f32ToF16(x), gb = f32ToBf16(x);
      const isNaN16 = (v: number, expMask: number, manMask: number) => (v & expMask) === expMask && (v & manMask) !== 0;
      for (let i = 0; i < n; i++) {
        if (Number.isNaN(x[i]!)) { // any NaN is a NaN: payloads differ between libraries
          assert.ok(isNaN16(gh[i]!, 0x7c00, 0x3ff) && isNaN16(gb[i]!, 0x7f80, 0x7f), `NaN at ${i}`);
          continue;
        }
        assert.equal(gh[i], h[i], `f16 of ${x[i]} (bits 0x${bits[i]!.toString(16)}): 0x${gh[i]!.toString(16)} vs numpy 0x${h[i]!.toString(16)}`);
        assert.equal(gb[i], b[i], `bf16 of ${x[i]}: 0x${gb[i]!.toString(16)} vs torch 0x${b[i]!.toString(16)}`);
      }
    } finally { rmSync(dir, { recursive: true, force: true }); }
  });
});
