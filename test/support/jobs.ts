// Job specs for runtime tests: the same builder `draftwire run` uses, with small defaults.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildSpec } from '../../cluster/commands/run.ts';
import type { JobSpec } from '../../src/job/spec.ts';

export function testSpec(job: string, over: Partial<Parameters<typeof buildSpec>[0]> = {}): JobSpec {
  const workdir = mkdtempSync(join(tmpdir(), 'draftwire-job-'));
  return buildSpec({
    job, workdir, size: 'tiny', steps: 4, batch: 2, lr: 3e-3, clip: 1, weightDecay: 0, dp: 1, tp: 1, sp: 1, seed: 1,
    temperature: 0, evalEvery: 0, evalPrompts: 2, threads: 1, leaseMs: 30_000, storeHighMb: 64, progress: false, keepStore: false,
    ...over,
  });
}
