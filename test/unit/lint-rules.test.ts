// `npm test` runs `npm run lint` (typescript-eslint, type-aware; dependency-cruiser); this
// proves those checks bite: the probes in test/fixtures/lint (which the lint run skips) are
// linted here with the project's own configuration and must be refused for the right rule.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const bin = (name: string) => join(ROOT, 'node_modules', '.bin', name);

describe('lint rules catch what they promise', function () {
  this.timeout(120_000);

  it('an import cycle fails the dependency check', () => {
    const r = spawnSync(bin('depcruise'), ['test/fixtures/lint', '--config', '.dependency-cruiser.cjs', '--exclude', '^node_modules'], { cwd: ROOT, encoding: 'utf8' });
    assert.notEqual(r.status, 0, 'depcruise accepted a cycle');
    assert.match(r.stdout, /no-circular/);
    assert.match(r.stdout, /cycle-a\.ts/);
  });

  it('a floating promise and a misused promise fail typescript-eslint', () => {
    const r = spawnSync(bin('eslint'), ['--no-ignore', '--format', 'json', 'test/fixtures/lint/floating.ts'], { cwd: ROOT, encoding: 'utf8' });
    assert.notEqual(r.status, 0, 'eslint accepted a floating promise');
    const rules = (JSON.parse(r.stdout) as { messages: { ruleId: string; line: number }[] }[])[0]!.messages.map((m) => `${m.ruleId}@${m.line}`);
    assert.deepEqual(rules.sort(), ['@typescript-eslint/no-floating-promises@5', '@typescript-eslint/no-misused-promises@6']);
  });
});
