// One rank of a sharded `draftwire step --tp T --sp S --dp D` (spawned by
// cluster/commands/step.ts, one process per rank):
//   node --import tsx cluster/step-rank.ts '<json StepRankSpec>'
// It reads the config and the full weights, only its own slice of the batch (its samples, its
// positions of aux, K positions more of ids/last/mask), joins the Gloo world through NATS KV,
// runs one sharded step, gathers full-shape gradients (and new weights with --lr) and, on
// rank 0, writes the same output file as the single-rank command.
//
// stdout carries exactly one JSON line: {"ev":"done", rank, loss, gradNorm, ploss, acc, ms}
// or {"ev":"error", rank, code, name, message} (then exit 2 for bad input, 1 otherwise).
// Logs go to stderr. The rank exits when its launcher goes away (IPC channel closed).
import { Bus } from '../src/bus/bus.ts';
import { AuthPolicy } from '../src/wire/auth.ts';
import { Communicator, ShardLayout } from '../src/native/collectives.ts';
import { readDraftBatchSlice, readDraftConfig, readDraftWeights, writeStepOutput, TRAINABLE } from '../src/job/draft-io.ts';
import { DecodeError, DraftwireError, InvalidArgumentError, NativeError } from '../src/errors.ts';
import { failpoint } from '../src/failpoints.ts';
import { createLogger } from '../src/log.ts';
import { DraftModel } from '../src/native/addon.ts';

export interface StepRankSpec {
  config: string; weights: string; batch: string; out: string;
  lr: number | null; clip: number | null; weightDecay: number; threads: number | null;
  rank: number; tp: number; sp: number; dp: number;
  /** NATS server (rendezvous), KV bucket, job id and this world's unique key prefix. */
  nats: string; bucket: string; job: string; prefix: string;
  /** Bound on every collective wait (a dead peer fails faster: its sockets close). */
  timeoutMs: number;
}

const emit = (x: Record<string, unknown>) => process.stdout.write(JSON.stringify(x) + '\n');

async function main(spec: StepRankSpec): Promise<void> {
  const log = createLogger(`step-rank-${spec.rank}`);
  const t0 = performance.now();
  const size = spec.tp * spec.sp * spec.dp;
  const L = ShardLayout.of(spec.rank, spec.tp, spec.sp, spec.dp);
  const config = await readDraftConfig(spec.config);
  const weights = await readDraftWeights(spec.weights, config);
  const { batch } = await readDraftBatchSlice(spec.batch, config, { sp: spec.sp, dp: spec.dp, spIdx: L.spIdx, dpIdx: L.dpIdx });
  // The secret comes from the environment the launcher passed on (never the spec argument).
  const bus = await Bus.connect({ servers: spec.nats, job: spec.job, auth: AuthPolicy.fromEnv(), name: `step-rank-${spec.rank}`, reconnect: false });
  let comm: Communicator | null = null;
  let model: DraftModel | null = null;
  try {
    const kv = await bus.kv(spec.bucket, { storage: 'memory' });
    comm = await Communicator.connect({ rank: spec.rank, size, kv, prefix: spec.prefix, timeoutMs: spec.timeoutMs, connectTimeoutMs: Math.max(spec.timeoutMs, 30_000) });
    log.debug('connected', { rank: comm.rank, size: comm.size, tpIdx: L.tpIdx, spIdx: L.spIdx, dpIdx: L.dpIdx });
    model = await DraftModel.createSharded(config, weights, comm, { tp: spec.tp, sp: spec.sp, dp: spec.dp },
      spec.threads !== null ? { threads: spec.threads } : undefined);
    const stepping = model.step(batch, { lr: spec.lr, clip: spec.clip, weightDecay: spec.weightDecay, returnGrads: true });
    // Tests: `step-rank.<r>.in-step=kill` kills rank r while its native step runs.
    setImmediate(() => failpoint(`step-rank.${spec.rank}.in-step`));
    const r = await stepping;
    if (!r.grads) throw new NativeError('the sharded step returned no gradients although they were requested');
    const updated = spec.lr !== null ? await model.gatherWeights() : null;
    if (spec.rank === 0) {
      const pick = (w: Record<string, Float32Array>) => Object.fromEntries(TRAINABLE.map((n) => [n, w[n]!]));
      await writeStepOutput(spec.out, config, { loss: r.loss, gradNorm: r.gradNorm, ploss: r.ploss, acc: r.acc, grads: pick(r.grads), updated: updated && pick(updated) });
    }
    emit({ ev: 'done', rank: spec.rank, loss: r.loss, gradNorm: r.gradNorm, ploss: Array.from(r.ploss), acc: Array.from(r.acc), ms: performance.now() - t0 });
  } finally {
    model?.close();
    await comm?.close();
    await bus.close();
  }
}

const raw = process.argv[2];
let rank = -1;
process.on('disconnect', () => { process.stderr.write('step-rank: the launcher went away; exiting\n'); process.exit(1); });
try {
  const spec = JSON.parse(raw ?? '') as StepRankSpec;
  rank = spec.rank;
  main(spec).then(() => process.exit(0), (e: unknown) => fail(e));
} catch (e) {
  fail(new InvalidArgumentError(`step-rank: bad spec argument (${(e as Error).message})`));
}

function fail(e: unknown): void {
  const err = e instanceof Error ? e : new Error(String(e));
  const code = e instanceof DraftwireError ? e.code : 'INTERNAL';
  emit({ ev: 'error', rank, code, name: err.name, message: err.message });
  if ((process.env.DRAFTWIRE_LOG_LEVEL ?? '').toLowerCase() === 'debug' && err.stack) process.stderr.write(err.stack + '\n');
  process.exit(e instanceof InvalidArgumentError || e instanceof DecodeError ? 2 : 1);
}
