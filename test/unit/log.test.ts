import assert from 'node:assert/strict';
import { createLogger, setLogSink } from '../../src/log.ts';

describe('log', () => {
  const saved = { level: process.env.DRAFTWIRE_LOG_LEVEL, json: process.env.DRAFTWIRE_LOG_JSON };
  const lines: string[] = [];
  beforeEach(() => { lines.length = 0; setLogSink((l) => { lines.push(l); }); });
  afterEach(() => {
    setLogSink(null);
    for (const [k, v] of [['DRAFTWIRE_LOG_LEVEL', saved.level], ['DRAFTWIRE_LOG_JSON', saved.json]] as const) {
      if (v === undefined) delete process.env[k]; else process.env[k] = v;
    }
  });

  it('filters by DRAFTWIRE_LOG_LEVEL and formats key=value text', () => {
    process.env.DRAFTWIRE_LOG_LEVEL = 'warn';
    delete process.env.DRAFTWIRE_LOG_JSON;
    const log = createLogger('t');
    log.info('hidden');
    log.debug('hidden');
    log.warn('shown', { n: 3, s: 'a b', e: new Error('boom') });
    log.error('also');
    assert.equal(lines.length, 2);
    assert.match(lines[0], /WARN {2}\[t\] shown n=3 s="a b" e="Error: boom"$/);
    assert.equal(log.enabled('info'), false);
    process.env.DRAFTWIRE_LOG_LEVEL = 'silent';
    log.error('nothing');
    assert.equal(lines.length, 2);
  });

  it('writes JSON lines when DRAFTWIRE_LOG_JSON=1', () => {
    process.env.DRAFTWIRE_LOG_LEVEL = 'debug';
    process.env.DRAFTWIRE_LOG_JSON = '1';
    createLogger('a').child('b').debug('m', { k: 1, big: 2n, err: Object.assign(new Error('x'), { code: 'C' }) });
    const o = JSON.parse(lines[0]);
    assert.equal(o.level, 'debug');
    assert.equal(o.name, 'a.b');
    assert.equal(o.msg, 'm');
    assert.equal(o.k, 1);
    assert.equal(o.big, '2');
    assert.deepEqual(o.err, { name: 'Error', message: 'x', code: 'C' });
  });
});
