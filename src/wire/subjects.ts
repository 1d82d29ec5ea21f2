// Subject names of a job on the bus (`dw.<job>.…`), derived from the protocol table
// (protocol.ts), and the check every subject passes before the Bus publishes, requests,
// subscribes or appends to it. `bus.subjects` is this object for the Bus's job.

import { InvalidArgumentError } from '../errors.ts';
import { STORAGE, jobPrefix, subjectOf, token, type PlainName } from './protocol.ts';

export interface JobSubjects {
  readonly job: string;
  readonly queue: {
    readonly commit: string; readonly credit: string; readonly ack: string; readonly release: string; readonly fail: string; readonly renew: string;
    readonly revoke: string; readonly status: string; readonly committed: string; readonly finished: string; readonly input: string; readonly all: string;
  };
  readonly coord: { readonly scale: string; readonly regroup: string; readonly status: string };
  readonly janitorStatus: string;
  /** `dw.<job>.part.<num>.<index>` */
  part(num: number, index: number): string;
  /** `dw.<job>.part.<num>.*` */
  partAll(num: number): string;
  readonly storeFree: string;
  readonly ctlEpoch: string;
  readonly ctlDead: string;
  readonly metrics: string;
  readonly rankDone: string;
  /** `dw.<job>.node.<nodeId>.spawn` */
  nodeSpawn(nodeId: string): string;
  /** `dw.<job>.node.<nodeId>.stop` */
  nodeStop(nodeId: string): string;
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
  const p = jobPrefix(j);
  const s = (k: PlainName) => subjectOf(j, k);
  return Object.freeze({
    job: j,
    queue: Object.freeze({
      commit: s('queue.commit'), credit: s('queue.credit'), ack: s('queue.ack'), release: s('queue.release'), fail: s('queue.fail'), renew: s('queue.renew'),
      revoke: s('queue.revoke'), status: s('queue.status'), committed: s('queue.committed'), finished: s('queue.finished'), input: s('queue.input'), all: `${p}.queue.*`,
    }),
    coord: Object.freeze({ scale: s('coord.scale'), regroup: s('coord.regroup'), status: s('coord.status') }),
    janitorStatus: s('janitor.status'),
    part: (num: number, index: number) => subjectOf(j, 'part', num, index),
    partAll: (num: number) => {
      if (!Number.isSafeInteger(num) || num < 0) throw new InvalidArgumentError(`partition count must be a non-negative integer, got ${num}`);
      return `${p}.part.${num}.*`;
    },
    storeFree: s('store.free'),
    ctlEpoch: s('ctl.epoch'),
    ctlDead: s('ctl.dead'),
    metrics: s('metrics'),
    rankDone: s('rank.done'),
    nodeSpawn: (nodeId: string) => subjectOf(j, 'node.spawn', nodeId),
    nodeStop: (nodeId: string) => subjectOf(j, 'node.stop', nodeId),
    hb: (actor: string) => subjectOf(j, 'hb', actor),
    hbAll: `${p}.hb.*`,
    all: `${p}.>`,
    kvBucket: STORAGE.kvBucket(j),
    walStream: STORAGE.walStream(j),
    walSubject: STORAGE.walSubject(j),
  });
}

export function checkSubject(subject: unknown, wildcardOk: boolean): string {
  if (typeof subject !== 'string' || subject.length === 0 || subject.length > 512 || /\s/.test(subject) ||
      subject.split('.').some((t) => t.length === 0) || (!wildcardOk && /(^|\.)(\*|>)(\.|$)/.test(subject))) {
    throw new InvalidArgumentError(`invalid NATS subject ${JSON.stringify(subject)}`);
  }
  return subject;
}
