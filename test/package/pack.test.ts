// The package as an embedder gets it: `npm pack` (which builds dist/ with tsc), the tarball
// installed into an empty folder, a plain Node.js program (no tsx) importing 'draftwire' and
// using the store, the codec, the ledger, typed errors and the Bus against a real nats-server;
// and a TypeScript consumer type-checked against the package's declarations.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { withNats } from '../support/nats-server.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');

describe('package: npm pack, installed and imported without tsx', function () {
  this.timeout(300_000);
  const nats = withNats();
  let dir = '';

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'dw-pack-'));
    const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', dir], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })) as { filename: string; files: { path: string }[] }[];
    const files = packed[0]!.files.map((f) => f.path);
    assert.ok(files.includes('dist/src/index.js') && files.includes('dist/src/index.d.ts'), 'the tarball has the compiled entry point and its declarations');
    assert.ok(!files.some((f) => f.startsWith('test/') || (f.endsWith('.ts') && !f.endsWith('.d.ts'))), `the tarball ships no tests and no TypeScript sources: ${files.filter((f) => f.startsWith('test/') || (f.endsWith('.ts') && !f.endsWith('.d.ts'))).slice(0, 5).join(', ')}`);
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'embedder', version: '1.0.0', type: 'module', private: true }));
    const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'))!;
    // From npm's cache when it has the dependencies (CI's `npm ci` just filled it); no install scripts.
    execFileSync('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts', `./${tarball}`], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    copyFileSync(join(ROOT, 'test', 'package', 'consumer.mjs'), join(dir, 'consumer.mjs'));
  });
  after(() => { if (dir) rmSync(dir, { recursive: true, force: true }); });

  it('a plain Node.js program imports it and uses the public API', () => {
    const r = spawnSync(process.execPath, ['consumer.mjs'], { cwd: dir, encoding: 'utf8', env: { PATH: process.env.PATH, NATS_URL: nats.url } });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    for (const name of ['SharedDirFeatureStore', 'encodeSampleRef', 'decodeSampleRef', 'AuthPolicy', 'LeaseLedger', 'auditEvents', 'dpPartition', 'Bus', 'SampleGoneError', 'DraftwireError']) {
      assert.ok(out.exports.includes(name), `'draftwire' exports ${name}`);
    }
    assert.ok(!out.exports.includes('RankWorker') && !out.exports.includes('startQueue'), 'internals stay internal');
    assert.deepEqual(out.ids, [1, 2, 3, 4]);
    assert.ok(out.refBytes > 0 && out.refBytes <= 4096);
    assert.deepEqual(out.audit, { ok: true, committed: 1, consumed: 1 });
    assert.deepEqual(out.afterRelease, { sampleGone: true, draftwireError: true, code: 'SAMPLE_GONE', retryable: false });
    assert.deepEqual(out.badRef, { decode: true, code: 'DECODE' });
    assert.deepEqual(out.echo, { echoed: 42 });
  });

  it('its type declarations type-check a TypeScript consumer', () => {
    writeFileSync(join(dir, 'consumer.ts'), [
      "import { decodeSampleRef, dpPartition, SampleGoneError, type SampleRef } from 'draftwire';",
      'const n: number = dpPartition("row-1", 4);',
      'const ref: SampleRef = decodeSampleRef(new Uint8Array(0));',
      'const e: Error = new SampleGoneError("gone");',
      'export { n, ref, e };',
      '// @ts-expect-error internals are not exported',
      "import { RankWorker } from 'draftwire';",
      'void RankWorker;',
    ].join('\n'));
    // A Node.js project has @types/node: the checkout's stands in for the embedder's.
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', strict: true, noEmit: true, skipLibCheck: false, typeRoots: [join(ROOT, 'node_modules', '@types')], types: ['node'] }, files: ['consumer.ts'] }));
    const r = spawnSync(process.execPath, [TSC, '-p', '.'], { cwd: dir, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
  });
});
