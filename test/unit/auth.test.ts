import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { AuthPolicy } from '../../src/wire/auth.ts';
import { AuthError, DecodeError, InvalidArgumentError } from '../../src/errors.ts';
import { decodeMessage, decodeSampleRef, encodeMessage, encodeSampleRef } from '../../src/wire/sampleref.ts';
import { sampleRef } from '../support/store-fixtures.ts';

const SECRET = 'correct horse battery staple 42';
const OTHER = 'another secret that is long enough';
const isAuth = (e: unknown) => {
  assert.ok(e instanceof AuthError, `expected AuthError, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
  assert.equal((e as Error).message, 'authentication failed', 'says nothing about why');
  return true;
};

describe('AuthPolicy', () => {
  let dir: string;
  before(() => { dir = mkdtempSync(join(tmpdir(), 'dw-auth-')); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('reads the secret from DRAFTWIRE_SECRET or DRAFTWIRE_SECRET_FILE (trimmed)', () => {
    assert.equal(AuthPolicy.fromEnv({}).enabled, false);
    assert.equal(AuthPolicy.fromEnv({ DRAFTWIRE_SECRET: '' }).enabled, false);
    const a = AuthPolicy.fromEnv({ DRAFTWIRE_SECRET: SECRET });
    assert.equal(a.enabled, true);
    const file = join(dir, 'secret');
    writeFileSync(file, `  ${SECRET}\n`);
    const b = AuthPolicy.fromEnv({ DRAFTWIRE_SECRET_FILE: file });
    const bytes = new Uint8Array([1, 2, 3]);
    assert.deepEqual(a.mac(bytes), b.mac(bytes), 'same secret from env and file derives the same key');
    assert.deepEqual(a.natsCredentials(), b.natsCredentials());
  });

  it('refuses short, ambiguous or unreadable secrets', () => {
    assert.throws(() => AuthPolicy.fromEnv({ DRAFTWIRE_SECRET: 'short' }), (e: unknown) => e instanceof InvalidArgumentError && /at least 16 bytes/.test((e as Error).message) && !(e as Error).message.includes('short'));
    assert.throws(() => AuthPolicy.fromEnv({ DRAFTWIRE_SECRET: '   fifteen-bytes!!   '.slice(0, 18) }), InvalidArgumentError);
    assert.throws(() => AuthPolicy.fromEnv({ DRAFTWIRE_SECRET: SECRET, DRAFTWIRE_SECRET_FILE: '/x' }), /only one/);
    assert.throws(() => AuthPolicy.fromEnv({ DRAFTWIRE_SECRET_FILE: join(dir, 'missing') }), (e: unknown) => e instanceof InvalidArgumentError && /ENOENT/.test((e as Error).message));
    const file = join(dir, 'short');
    writeFileSync(file, 'tiny\n');
    assert.throws(() => AuthPolicy.fromEnv({ DRAFTWIRE_SECRET_FILE: file }), InvalidArgumentError);
  });

  it('mac/verifyMac: right secret passes, wrong or missing mac fails without detail', () => {
    const a = AuthPolicy.fromSecret(SECRET);
    const b = AuthPolicy.fromSecret(OTHER);
    const msg = new TextEncoder().encode('hello');
    const mac = a.mac(msg);
    assert.equal(mac.byteLength, 32);
    assert.doesNotThrow(() => a.verifyMac(msg, mac));
    assert.throws(() => b.verifyMac(msg, mac), isAuth);
    assert.throws(() => a.verifyMac(new TextEncoder().encode('hellp'), mac), isAuth);
    assert.throws(() => a.verifyMac(msg, undefined), isAuth);
    assert.throws(() => a.verifyMac(msg, mac.subarray(0, 31)), isAuth);
    const disabled = AuthPolicy.disabled();
    assert.doesNotThrow(() => disabled.verifyMac(msg, undefined));
    assert.throws(() => disabled.mac(msg), InvalidArgumentError);
  });

  it('signRef/verifyRef: any field change breaks the mac; survives the wire', () => {
    const a = AuthPolicy.fromSecret(SECRET);
    const signed = a.signRef(sampleRef());
    assert.equal(signed.mac?.byteLength, 32);
    const wire = decodeSampleRef(encodeSampleRef(signed));
    assert.doesNotThrow(() => a.verifyRef(wire));
    assert.throws(() => AuthPolicy.fromSecret(OTHER).verifyRef(wire), isAuth);
    assert.throws(() => a.verifyRef({ ...wire, mac: undefined }), isAuth);
    const tampered = [
      { ...wire, generation: 4, uri: 'dir://store-a/row-000042?g=4' }, { ...wire, bytes: wire.bytes + 1 }, { ...wire, job: 'job2' },
      { ...wire, checksum: 'sha256m:' + 'cd'.repeat(32) }, { ...wire, producer: { ...wire.producer, incarnation: 8 } },
      { ...wire, features: { ...wire.features, ids: { dtype: 'i32' as const, shape: [129] } } }, { ...wire, createdAt: wire.createdAt + 1 },
    ];
    for (const t of tampered) assert.throws(() => a.verifyRef(t), isAuth);
    const disabled = AuthPolicy.disabled();
    assert.equal(disabled.signRef(sampleRef()).mac, undefined);
    assert.doesNotThrow(() => disabled.verifyRef(sampleRef()));
  });

  it('seal/open: round trip, tampered body, wrong secret, replay and stale timestamps', () => {
    const a = AuthPolicy.fromSecret(SECRET, { windowMs: 30_000 });
    const rx = AuthPolicy.fromSecret(SECRET, { windowMs: 30_000 });
    const body = encodeMessage({ op: 'ack', leaseId: 'L1', epoch: 2 });
    const now = 1_700_000_000_000;
    const sealed = a.seal(body, now);
    assert.deepEqual(decodeMessage(rx.open(sealed, now + 10)), { op: 'ack', leaseId: 'L1', epoch: 2 });
    // Replay of the same envelope inside the window.
    assert.throws(() => rx.open(sealed, now + 20), isAuth);
    // Tampered body (re-encoded envelope with one byte changed).
    const env = decodeMessage(a.seal(body, now));
    const flipped = new Uint8Array(env.body as Uint8Array); flipped[flipped.length - 1] ^= 1;
    assert.throws(() => rx.open(encodeMessage({ ...env, body: flipped }), now), isAuth);
    // Tampered timestamp (the mac covers it).
    assert.throws(() => rx.open(encodeMessage({ ...env, ts: now + 1 }), now), isAuth);
    // Wrong secret, missing mac.
    assert.throws(() => AuthPolicy.fromSecret(OTHER).open(a.seal(body, now), now), isAuth);
    assert.throws(() => rx.open(encodeMessage({ ...env, mac: undefined }), now), isAuth);
    assert.throws(() => rx.open(AuthPolicy.disabled().seal(body), now), isAuth);
    // Stale and future timestamps.
    assert.throws(() => rx.open(a.seal(body, now - 30_001), now), isAuth);
    assert.throws(() => rx.open(a.seal(body, now + 30_001), now), isAuth);
    assert.doesNotThrow(() => rx.open(a.seal(body, now - 29_000), now));
    // Garbage is a DecodeError.
    assert.throws(() => rx.open(new Uint8Array([1, 2, 3]), now), DecodeError);
    // Disabled: just {body}.
    const d = AuthPolicy.disabled();
    assert.deepEqual(Object.keys(decodeMessage(d.seal(body))), ['body']);
    assert.deepEqual(d.open(d.seal(body)), body);
  });

  it('bounds the replay cache and stays safe when it overflows', () => {
    const a = AuthPolicy.fromSecret(SECRET);
    const rx = AuthPolicy.fromSecret(SECRET, { replayCacheSize: 100, windowMs: 1000 });
    const body = new Uint8Array([7]);
    const t0 = 1_000_000;
    const early = a.seal(body, t0);
    for (let i = 0; i < 150; i++) rx.open(a.seal(body, t0 + 1 + i), t0 + 1 + i);
    assert.ok(rx.replayCacheEntries() <= 100);
    // `early` was never seen, but its nonce could have been evicted: refused, never accepted twice.
    assert.throws(() => rx.open(early, t0 + 200), isAuth);
    // Entries past the window are pruned.
    rx.open(a.seal(body, t0 + 5000), t0 + 5000);
    assert.equal(rx.replayCacheEntries(), 1);
  });

  it('unseal checks the MAC and the window but not the nonce; a ReplayGuard refuses what was sealed before it started', () => {
    const a = AuthPolicy.fromSecret(SECRET, { windowMs: 30_000, skewMs: 1000 });
    const now = 1_700_000_000_000;
    const body = encodeMessage({ k: 'm', s: 'dw.j.ctl.epoch', d: { epoch: 3 } });
    const sealed = a.seal(body, now - 5000);
    // Each receiver (a restarted process, a second one) has its own guard: no shared cache to rely on.
    for (let i = 0; i < 2; i++) {
      const u = a.unseal(sealed, now);
      assert.deepEqual(u.body, body);
      assert.equal(u.ts, now - 5000);
      assert.equal(u.nonce?.byteLength, 16);
      const fresh = a.replayGuard(now);
      assert.throws(() => fresh.check(u.ts!, u.nonce!, now), isAuth, 'sealed 5 s before the guard started');
    }
    assert.throws(() => AuthPolicy.fromSecret(OTHER).unseal(sealed, now), isAuth);
    assert.throws(() => a.unseal(sealed, now + 30_000), isAuth, 'outside the window');
    // Within the skew allowance: accepted once, then a replay.
    const g = a.replayGuard(now);
    const late = a.unseal(a.seal(body, now - 900), now);
    assert.doesNotThrow(() => g.check(late.ts!, late.nonce!, now));
    assert.throws(() => g.check(late.ts!, late.nonce!, now + 1), isAuth);
    const next = a.unseal(a.seal(body, now + 10), now + 10);
    assert.doesNotThrow(() => g.check(next.ts!, next.nonce!, now + 10));
    // restart() (a reconnect): what was sealed before it, minus the skew, is refused from then on.
    const before = a.unseal(a.seal(body, now + 20), now + 5000);
    g.restart(now + 5000);
    assert.throws(() => g.check(before.ts!, before.nonce!, now + 5000), isAuth);
    const after = a.unseal(a.seal(body, now + 5000), now + 5000);
    assert.doesNotThrow(() => g.check(after.ts!, after.nonce!, now + 5000));
    // A fixed nonce (golden vectors) gives byte-identical seals.
    const nonce = new Uint8Array(16).fill(7);
    assert.deepEqual(a.seal(body, now, nonce), a.seal(body, now, nonce));
    assert.throws(() => a.seal(body, now, new Uint8Array(3)), InvalidArgumentError);
    assert.throws(() => AuthPolicy.fromSecret(SECRET, { skewMs: -1 }), InvalidArgumentError);
  });

  it('derives NATS credentials and store tokens deterministically per secret, in any process', () => {
    const a = AuthPolicy.fromSecret(SECRET);
    const creds = a.natsCredentials()!;
    assert.match(creds.user, /^dw-[0-9a-f]{16}$/);
    assert.ok(creds.pass.length >= 32);
    assert.notEqual(creds.pass, SECRET);
    assert.notDeepEqual(AuthPolicy.fromSecret(OTHER).natsCredentials(), creds);
    assert.equal(AuthPolicy.disabled().natsCredentials(), null);
    const tok = a.storeToken('store-a');
    assert.match(tok, /^[0-9a-f]{64}$/);
    assert.notEqual(tok, a.storeToken('store-b'));
    assert.doesNotThrow(() => a.verifyStoreToken('store-a', tok));
    assert.throws(() => a.verifyStoreToken('store-b', tok), isAuth);
    assert.throws(() => AuthPolicy.fromSecret(OTHER).verifyStoreToken('store-a', tok), isAuth);
    assert.equal(AuthPolicy.disabled().storeToken('store-a'), '');
    const code = `import { AuthPolicy } from './src/wire/auth.ts'; const a = AuthPolicy.fromEnv(); console.log(JSON.stringify({ c: a.natsCredentials(), t: a.storeToken('store-a') }));`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { encoding: 'utf8', env: { ...process.env, DRAFTWIRE_SECRET: SECRET, DRAFTWIRE_SECRET_FILE: '' } });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { c: creds, t: tok });
  });
});
