// Subject names of a job on the bus (`dw.<job>.…`), and the check every subject passes
// before the Bus publishes, requests, subscribes or appends to it. Separate from bus.ts
// because the names are pure: no NATS client behind them.

import { InvalidArgumentError } from '../errors.ts';

const TOKEN_RE = /^[A-Za-z0-9_-]{1,64}$/;

function token(x: unknown, what: string): string {
  if (typeof x !== 'string' || !TOKEN_RE.test(x)) throw new InvalidArgumentError(`${what} must be 1..64 characters of [A-Za-z0-9_-], got ${JSON.stringify(x)}`);
  return x;
}

export interface JobSubjects {
  readonly job: string;
  readonly queue: { readonly commit: string; readonly credit: string; readonly ack: string; readonly release: string; readonly fail: string; readonly renew: string; readonly all: string };
  /** `dw.<job>.part.<num>.<index>` */
  part(num: number, index: number): string;
  /** `dw.<job>.part.<num>.*` */
  partAll(num: number): string;
  readonly storeFree: string;
  readonly ctlEpoch: string;
  /** `dw.<job>.node.<nodeId>.spawn` */
  nodeSpawn(nodeId: string): string;
  /** `dw.<job>.hb.<actor>` */
  hb(actor: string): string;
  readonly hbAll: string;
  /** Everything of this job: `dw.<job>.>` */
  readonly all: string;
  /** KV bucket of the coordinator: `dw_<job>` */
  readonly kvBucket: string;
  /** Ledger write-ahead log: stream `dw_<job>_wal`, subject `dw.<job>.wal.ledger` */
  readonly walStream: string;
  readonly walSubject: string;
}

export function subjects(job: string): JobSubjects {
  const j = token(job, 'job id');
  const p = `dw.${j}`;
  const uint = (x: number, what: string) => {
    if (!Number.isSafeInteger(x) || x < 0) throw new InvalidArgumentError(`${what} must be a non-negative integer, got ${x}`);
    return x;
  };
  return Object.freeze({
    job: j,
    queue: Object.freeze({
      commit: `${p}.queue.commit`, credit: `${p}.queue.credit`, ack: `${p}.queue.ack`,
      release: `${p}.queue.release`, fail: `${p}.queue.fail`, renew: `${p}.queue.renew`, all: `${p}.queue.*`,
    }),
    part: (num: number, index: number) => {
      uint(num, 'partition count'); uint(index, 'partition index');
      if (num < 1 || index >= num) throw new InvalidArgumentError(`partition index ${index} out of range for ${num} partitions`);
      return `${p}.part.${num}.${index}`;
    },
    partAll: (num: number) => `${p}.part.${uint(num, 'partition count')}.*`,
    storeFree: `${p}.store.free`,
    ctlEpoch: `${p}.ctl.epoch`,
    nodeSpawn: (nodeId: string) => `${p}.node.${token(nodeId, 'node id')}.spawn`,
    hb: (actor: string) => `${p}.hb.${token(actor, 'actor name')}`,
    hbAll: `${p}.hb.*`,
    all: `${p}.>`,
    kvBucket: `dw_${j}`,
    walStream: `dw_${j}_wal`,
    walSubject: `${p}.wal.ledger`,
  });
}

export function checkSubject(subject: unknown, wildcardOk: boolean): string {
  if (typeof subject !== 'string' || subject.length === 0 || subject.length > 512 || /\s/.test(subject) ||
      subject.split('.').some((t) => t.length === 0) || (!wildcardOk && /(^|\.)(\*|>)(\.|$)/.test(subject))) {
    throw new InvalidArgumentError(`invalid NATS subject ${JSON.stringify(subject)}`);
  }
  return subject;
}
