// Failpoints: named places where a test can make a real process fail, set through the
// environment of that process only (never in a job spec):
//   DRAFTWIRE_FAILPOINTS="rollout.after-put=kill@3,rank.before-ack=exit@2"
// `kill` sends this process SIGKILL, `exit` exits with code 86, `throw` throws, `sleepN`
// (at a point reached through failpointAsync only) waits N ms and goes on: a slow step of a
// real process; `@n` fires on the n-th time the point is reached (default 1). Unset: every
// call is a no-op.
// With DRAFTWIRE_FAILPOINTS_ONCE_DIR set, a point fires once per job across processes: it
// leaves a marker file there before acting, and a replacement process that finds the marker
// does not fire it again (a respawned rank must not hit the same crash forever).
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DraftwireError } from './errors.ts';

type Action = 'kill' | 'exit' | 'throw' | 'sleep';
const points = new Map<string, { action: Action; ms: number; at: number; hits: number }>();

for (const item of (process.env.DRAFTWIRE_FAILPOINTS ?? '').split(',').map((s) => s.trim()).filter(Boolean)) {
  const m = /^([a-z0-9.-]+)=(kill|exit|throw|sleep(\d+))(?:@(\d+))?$/.exec(item);
  if (!m) throw new DraftwireError('INVALID_ARGUMENT', `DRAFTWIRE_FAILPOINTS: cannot parse "${item}" (name=kill|exit|throw|sleepN[@n])`, false);
  points.set(m[1]!, { action: (m[3] ? 'sleep' : m[2]) as Action, ms: Number(m[3] ?? 0), at: Number(m[4] ?? 1), hits: 0 });
}

export function failpoint(name: string): void {
  const p = fired(name);
  if (!p) return;
  if (p.action === 'sleep') throw new DraftwireError('INVALID_ARGUMENT', `failpoint ${name}: sleep needs an async point (failpointAsync)`, false);
  act(name, p);
}

/** A failpoint on an async path: `sleepN` waits there; the other actions are failpoint's. */
export async function failpointAsync(name: string): Promise<void> {
  const p = fired(name);
  if (!p) return;
  if (p.action === 'sleep') {
    process.stderr.write(`failpoint ${name}: sleep ${p.ms} ms (hit ${p.hits})\n`);
    await new Promise((r) => setTimeout(r, p.ms));
    return;
  }
  act(name, p);
}

/** The point's setting if it fires now (counted; once per job with DRAFTWIRE_FAILPOINTS_ONCE_DIR). */
function fired(name: string): { action: Action; ms: number; hits: number } | null {
  const p = points.get(name);
  if (!p || ++p.hits !== p.at) return null;
  const onceDir = process.env.DRAFTWIRE_FAILPOINTS_ONCE_DIR;
  if (onceDir) {
    const marker = join(onceDir, `failpoint-${name}.fired`);
    if (existsSync(marker)) return null;
    writeFileSync(marker, `${process.pid}\n`);
  }
  return p;
}

function act(name: string, p: { action: Action; hits: number }): never {
  process.stderr.write(`failpoint ${name}: ${p.action} (hit ${p.hits})\n`);
  if (p.action === 'kill') process.kill(process.pid, 'SIGKILL');
  if (p.action === 'exit') process.exit(86);
  throw new DraftwireError('FAILPOINT', `failpoint ${name} fired`, false);
}
