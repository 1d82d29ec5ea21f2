// What operators see (issue 13, item 6): a real `draftwire run --metrics 127.0.0.1:0` trains
// while this test scrapes its /metrics (Prometheus text, by the naming conventions, the
// figures consistent with the queue's own status) and loads its live page in headless
// Chromium (puppeteer-core driving the system's Chromium): every plot draws the points the
// node's /api/state holds, the roles table names who holds the queue, no script error.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';
import { until } from '../support/chaos.ts';

const CLI = join(import.meta.dirname, '..', '..', 'bin', 'draftwire.js');
const CHROMIUM = process.env.DRAFTWIRE_CHROMIUM ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].find((p) => existsSync(p));

/** Prometheus text: sample name{labels} value, comments dropped. */
function parseProm(text: string): { name: string; labels: Record<string, string>; value: number }[] {
  const out: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const kv of (m[2] ?? '').match(/[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"/g) ?? []) { const i = kv.indexOf('='); labels[kv.slice(0, i)] = kv.slice(i + 2, -1); }
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

describe('operators: /metrics and the live page of a running job (headless Chromium)', function () {
  this.timeout(240_000);
  let workdir = '';
  let proc: ReturnType<typeof spawn> | null = null;
  let out = '';
  after(async () => {
    // SIGINT: the run stops its ranks and servers; then its directory can go.
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      const gone = new Promise((r) => proc!.once('exit', r));
      proc.kill('SIGINT');
      const t = setTimeout(() => proc!.kill('SIGKILL'), 20_000);
      await gone;
      clearTimeout(t);
    }
    if (workdir) rmSync(workdir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  });

  it('serves Prometheus metrics and a page whose plots show the job as it trains', async () => {
    assert.ok(CHROMIUM, 'no Chromium found (/usr/bin/chromium): scripts/setup.sh installs Debian\'s chromium, or set DRAFTWIRE_CHROMIUM');
    workdir = mkdtempSync(join(tmpdir(), 'dw-ops-'));
    proc = spawn(process.execPath, [CLI, 'run', '--size', 'tiny', '--steps', '100000', '--batch', '2', '--eval-every', '15', '--eval-prompts', '2', '--workdir', workdir, '--job', 'opsjob', '--metrics', '127.0.0.1:0', '--no-progress'], { stdio: ['ignore', 'pipe', 'pipe'] });
    proc.stdout!.on('data', (d) => { out += d; });
    proc.stderr!.on('data', (d) => { out += d; });
    const base = await until('the metrics address in the log', 60_000, () => /metrics and live page metrics=http:\/\/(127\.0\.0\.1:\d+)\/metrics/.exec(out)?.[1], { out: () => out });
    const get = async (path: string) => { const r = await fetch(`http://${base}${path}`); return { status: r.status, type: r.headers.get('content-type') ?? '', text: await r.text() }; };

    // Metrics: wait for a few steps and an evaluation, then check names, types and figures.
    const samples = await until('steps in /metrics', 90_000, async () => {
      const s = parseProm((await get('/metrics')).text);
      const steps = s.find((x) => x.name === 'draftwire_rank_steps_total' && x.labels.rank === '0');
      return steps && steps.value >= 20 ? s : null;
    }, { out: () => out.slice(-3000) });
    const m = await get('/metrics');
    assert.equal(m.status, 200);
    assert.match(m.type, /^text\/plain; version=0\.0\.4/);
    assert.match(m.text, /# TYPE draftwire_rank_steps_total counter/);
    assert.match(m.text, /# TYPE draftwire_queue_depth gauge/);
    assert.match(m.text, /# TYPE draftwire_queue_wal_append_seconds histogram/);
    const one = (name: string, labels: Record<string, string> = {}) => {
      const x = samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
      assert.ok(x, `${name} ${JSON.stringify(labels)} is exported`);
      assert.equal(x.labels.job, 'opsjob', `${name} carries the job label`);
      return x.value;
    };
    for (const f of ['samples', 'tokens', 'step_seconds', 'data_seconds', 'compute_seconds']) assert.ok(one(`draftwire_rank_${f}_total`, { rank: '0' }) > 0, `rank 0 ${f}`);
    assert.ok(one('draftwire_rank_data_seconds_total', { rank: '0' }) + one('draftwire_rank_compute_seconds_total', { rank: '0' }) <= one('draftwire_rank_step_seconds_total', { rank: '0' }) + 1e-6, 'data + compute <= step time');
    const committed = one('draftwire_queue_committed_total'), consumed = one('draftwire_queue_consumed_total');
    assert.ok(consumed > 0 && consumed <= committed, `consumed ${consumed} <= committed ${committed}`);
    assert.ok(one('draftwire_queue_acks_total') >= consumed);
    assert.ok(one('draftwire_queue_lease_grants_total') >= consumed);
    assert.ok(one('draftwire_queue_wal_append_seconds_count') > 0, 'WAL appends were timed');
    assert.equal(one('draftwire_role_term', { role: 'queue' }), 1, 'this node holds the queue under term 1');
    assert.ok(one('draftwire_store_bytes') >= 0 && one('draftwire_store_samples') >= 0);
    assert.equal((await get('/nope')).status, 404);
    assert.equal((await fetch(`http://${base}/metrics`, { method: 'POST' })).status, 405);

    // The live page in a real browser.
    const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(String(e)));
      page.on('console', (c) => { if (c.type() === 'error') errors.push(c.text()); });
      await page.goto(`http://${base}/`, { waitUntil: 'load' });
      await page.waitForSelector('body[data-updated]', { timeout: 20_000 });
      // An evaluation has run (every 15 steps): the accept-length plot has a point.
      await page.waitForFunction(() => Number(document.querySelector('#plot-accept polyline')?.getAttribute('data-points') ?? 0) >= 1, { timeout: 60_000, polling: 500 });
      const drawn = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll('polyline.series')].map((p) => [`${p.closest('.plot')!.id}/${p.getAttribute('data-series')}`, Number(p.getAttribute('data-points'))])));
      const state = JSON.parse((await get('/api/state')).text) as { series: { steps: unknown[]; queue: unknown[] }; roles: { role: string; node: string | null }[] };
      for (const k of ['plot-loss/loss', 'plot-acc/pos 0', 'plot-throughput/samples/s', 'plot-time/data', 'plot-time/compute']) {
        assert.ok(drawn[k]! >= 2, `${k} drew ${drawn[k]} points`);
        assert.ok(drawn[k]! <= state.series.steps.length, `${k}: no more points than the node's series (${state.series.steps.length})`);
      }
      assert.ok(drawn['plot-queue/depth']! >= 1, 'the queue depth plot has points');
      const roles = await page.$$eval('#roles tr', (rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent)));
      assert.ok(roles.some((r) => r[0] === 'queue' && r[1] === 'local' && r[2] === '1'), `the roles table: ${JSON.stringify(roles)}`);
      assert.deepEqual(state.roles.find((r) => r.role === 'queue')?.node, 'local');
      const ranks = await page.$$eval('#ranks tr', (rows) => rows.length);
      assert.ok(ranks >= 2, 'the ranks table lists rank 0');
      assert.deepEqual(errors, [], 'no script errors on the page');
    } finally { await browser.close(); }
  });
});
