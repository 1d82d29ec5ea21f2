// Failpoints: named places where a test can make a real process fail, set through the
// environment of that process only (never in a job spec):
//   DRAFTWIRE_FAILPOINTS="rollout.after-put=kill@3,rank.before-ack=exit@2"
// `kill` sends this process SIGKILL, `exit` exits with code 86, `throw` throws; `@n` fires
// on the n-th time the point is reached (default 1). Unset: every call is a no-op.
// With DRAFTWIRE_FAILPOINTS_ONCE_DIR set, a point fires once per job across processes: it
// leaves a marker file there before acting, and a replacement process that finds the marker
// does not fire it again (a respawned rank must not hit the same crash forever).
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DraftwireError } from './errors.ts';

type Action = 'kill' | 'exit' | 'throw';
const points = new Map<string, { action: Action; at: number; hits: number }>();

for (const item of (process.env.DRAFTWIRE_FAILPOINTS ?? '').split(',').map((s) => s.trim()).filter(Boolean)) {
  const m = /^([a-z0-9.-]+)=(kill|exit|throw)(?:@(\d+))?$/.exec(item);
  if (!m) throw new DraftwireError('INVALID_ARGUMENT', `DRAFTWIRE_FAILPOINTS: cannot parse "${item}" (name=kill|exit|throw[@n])`, false);
  points.set(m[1]!, { action: m[2] as Action, at: Number(m[3] ?? 1), hits: 0 });
}

export function failpoint(name: string): void {
  const p = points.get(name);
  if (!p || ++p.hits !== p.at) return;
  const onceDir = process.env.DRAFTWIRE_FAILPOINTS_ONCE_DIR;
  if (onceDir) {
    const marker = join(onceDir, `failpoint-${name}.fired`);
    if (existsSync(marker)) return;
    writeFileSync(marker, `${process.pid}\n`);
  }
  process.stderr.write(`failpoint ${name}: ${p.action} (hit ${p.hits})\n`);
  if (p.action === 'kill') process.kill(process.pid, 'SIGKILL');
  if (p.action === 'exit') process.exit(86);
  throw new DraftwireError('FAILPOINT', `failpoint ${name} fired`, false);
}
