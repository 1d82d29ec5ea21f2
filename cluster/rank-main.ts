// Entry point of one rank process (spawned by the node agent):
//   node --import tsx cluster/rank-main.ts --job-file F --rank R --nats URL --node ID [--min-epoch E] [--store-dir D]
// It resumes from <runDir>/ckpt/latest.json when present, trains until the job's data is
// consumed (checkpointing as it goes), then world rank 0 writes the final checkpoint. A rank
// retired by a scale-down exits 0 too. It exits when its node's IPC channel closes (no orphan
// ranks) and on SIGTERM.
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { RankWorker } from '../trainer/rank-worker.ts';
import { AuthPolicy } from '../src/wire/auth.ts';
import { Bus } from '../src/bus/bus.ts';
import { HeartbeatPublisher, publish } from '../src/bus/clients.ts';
import { loadJobSpec } from '../src/job/spec.ts';
import { createLogger } from '../src/log.ts';
import { SharedDirFeatureStore } from '../src/store/shared-dir.ts';
import { readTlsFiles, tlsFromEnv } from '../src/tls.ts';
import { HttpFeatureStore } from '../src/store/http-store.ts';
import { loadWeightsFile, writeCheckpoint } from '../src/job/checkpoint.ts';
import { checkpointStoreOf } from '../src/job/checkpoint-store.ts';
import { COMM_HOST_ENV } from './entry.ts';
import { failpointAsync } from '../src/failpoints.ts';

const log = createLogger('rank-main');

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { 'job-file': { type: 'string' }, rank: { type: 'string' }, nats: { type: 'string' }, node: { type: 'string' }, 'min-epoch': { type: 'string' }, 'store-dir': { type: 'string' } } });
  const spec = loadJobSpec(values['job-file'] ?? '');
  const rank = Number(values.rank);
  if (!Number.isInteger(rank) || rank < 0) throw new Error(`--rank must be an integer >= 0, got ${values.rank}`);
  const auth = AuthPolicy.fromEnv();
  const bus = await Bus.connect({ servers: values.nats ?? '', job: spec.job, auth, name: `rank-${rank}` });
  // Alive from the moment it is connected: loading the checkpoint can take longer than the
  // coordinator's dead-rank timeout (a JetStream read waits out a meta-leader election after a
  // host's death), and a silent rank would be killed for a replacement while it starts.
  const heartbeats = new HeartbeatPublisher(bus);
  const startingBeat = () => heartbeats.rank(rank, { pid: process.pid, node: values.node ?? 'local', step: -1, state: 'starting', held: 0, epoch: 0 });
  startingBeat();
  const starting = setInterval(startingBeat, 1000);
  // dir:// refs from the node's directory, http(s):// refs from the node that wrote them (the node's TLS files, handed in the environment).
  const tls = tlsFromEnv();
  const store = new HttpFeatureStore({ auth, tls: tls ? readTlsFiles(tls, 'data plane TLS') : null, local: await SharedDirFeatureStore.attach({
    dir: values['store-dir'] ?? spec.storeDir, storeId: spec.storeId, job: spec.job, auth, create: false,
    producer: { node: values.node ?? 'local', actor: `rank-${rank}`, incarnation: process.pid },
  }) });
  const init = await loadWeightsFile(spec.initWeights, spec.draft);
  // Resume from the job's latest committed checkpoint, if any (a respawned rank, `run --resume`).
  const checkpoints = checkpointStoreOf(spec, bus);
  await failpointAsync('rank.before-resume'); // a test's slow start (test/contract/rank-start.test.ts)
  const resume = await checkpoints.loadRankCheckpoint(init);
  const weights = resume ? resume.weights : init;
  if (resume) log.info('resuming from checkpoint', { step: resume.manifest.step, unackedWindow: resume.manifest.window.length, from: checkpoints.where });
  const minEpoch = Number(values['min-epoch'] ?? 0);
  if (!Number.isInteger(minEpoch) || minEpoch < 0) throw new Error(`--min-epoch must be an integer >= 0, got ${values['min-epoch']}`);
  // The node says where this machine's ranks reach each other (draftwire node --comm-host).
  const commHost = process.env[COMM_HOST_ENV] || undefined;
  const worker = new RankWorker({ spec, bus, store, rank, weights, resume, minEpoch, node: values.node ?? 'local', checkpoints, commHost, fetchedBytes: () => store.stats.bytesFetched, heartbeats });
  clearInterval(starting); // the worker beats from here on
  const quit = () => { worker.stop(); };
  process.on('SIGTERM', quit);
  process.on('disconnect', () => { log.warn('node went away; exiting'); process.exit(1); });
  try {
    const res = await worker.run();
    if (res.retired) log.info('retired by a scale-down', { step: res.step });
    else if (res.final) {
      const path = join(spec.runDir, 'checkpoint.safetensors');
      await writeCheckpoint(path, spec, res.state, weights.d2t as Int32Array, res.step, res.samples);
      publish.rankDone(bus, { rank, step: res.step, samples: res.samples, checkpoint: path });
      log.info('checkpoint written', { path, step: res.step });
    }
    await bus.flush();
    return 0;
  } finally {
    await store.close();
    await bus.close();
  }
}

main().then((code) => process.exit(code), (e: unknown) => {
  log.error('rank failed', { error: (e as Error).message, code: (e as { code?: string }).code ?? null });
  process.exit(1);
});
