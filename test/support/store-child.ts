// A separate process using a SharedDirFeatureStore, driven by the store contract tests.
// Usage: node --import tsx test/support/store-child.ts '<json spec>'
// Prints one JSON line per event: {"ok": ...} or {"error": {name, code, message}}; with a
// `hang` spec it prints {"hang": {...}} at the fault point and then blocks (to be SIGKILLed).
import { AuthPolicy } from '../../src/wire/auth.ts';
import { DraftwireError } from '../../src/errors.ts';
import { decodeSampleRef, encodeSampleRef } from '../../src/wire/sampleref.ts';
import { SharedDirFeatureStore, type StoreFaults } from '../../src/store/shared-dir.ts';
import { digestTensors, makeSample } from './store-fixtures.ts';

interface Spec {
  op: 'attach' | 'put' | 'get' | 'release' | 'puts';
  dir: string;
  storeId: string;
  job: string;
  sampleId?: string;
  seed?: number;
  T?: number;
  H?: number;
  count?: number;
  ref?: string;
  names?: string[];
  rows?: [number, number];
  hang?: 'afterChunk' | 'beforeRename';
  writeChunkBytes?: number;
  highWatermarkBytes?: number;
}

const out = (x: unknown) => process.stdout.write(JSON.stringify(x) + '\n');

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '{}') as Spec;
  const faults: StoreFaults = {};
  if (spec.hang) {
    const hang = async (info: unknown) => { out({ hang: info }); await new Promise(() => setInterval(() => undefined, 1 << 30)); };
    if (spec.hang === 'afterChunk') faults.afterChunk = (i) => (i.written >= i.total / 2 ? hang(i) : undefined);
    else faults.beforeRename = hang;
  }
  const store = await SharedDirFeatureStore.attach({
    dir: spec.dir, storeId: spec.storeId, job: spec.job, auth: AuthPolicy.fromEnv(),
    producer: { node: `child-${process.pid}`, actor: 'store-child', incarnation: 1 },
    writeChunkBytes: spec.writeChunkBytes, highWatermarkBytes: spec.highWatermarkBytes, faults, usageRefreshMs: 0,
  });
  switch (spec.op) {
    case 'attach': out({ ok: true }); break;
    case 'put': {
      const ref = await store.put(spec.sampleId!, makeSample(spec.seed ?? 1, spec.T ?? 16, spec.H ?? 8));
      out({ ok: { ref: Buffer.from(encodeSampleRef(ref)).toString('base64'), generation: ref.generation } });
      break;
    }
    case 'puts': {
      // `count` re-puts of one sample id; prints every generation.
      const gens: number[] = [];
      for (let i = 0; i < (spec.count ?? 1); i++) gens.push((await store.put(spec.sampleId!, makeSample(i, spec.T ?? 4, spec.H ?? 2))).generation);
      out({ ok: { gens } });
      break;
    }
    case 'get': {
      const ref = decodeSampleRef(Buffer.from(spec.ref!, 'base64'));
      out({ ok: digestTensors(await store.get(ref, { names: spec.names, rows: spec.rows })) });
      break;
    }
    case 'release': {
      const ref = decodeSampleRef(Buffer.from(spec.ref!, 'base64'));
      out({ ok: { released: await store.release(ref) } });
      break;
    }
  }
}

main().catch((e: unknown) => {
  out({ error: e instanceof DraftwireError ? { name: e.name, code: e.code, message: e.message } : { name: (e as Error)?.name, code: 'UNEXPECTED', message: String((e as Error)?.stack ?? e) } });
  process.exitCode = 1;
});
