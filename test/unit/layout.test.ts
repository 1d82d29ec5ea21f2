// The README's Layout section is the tree itself: every folder with a tracked file has its
// line, every line names a real folder, and the `→` imports of each TypeScript folder are
// exactly the folders its files import (dependency-cruiser's view; the root files of src/ and
// packages aside). Change the tree or its imports and this fails until the README says so.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const FIRST_PARTY = /^(src|actors|trainer|cluster)\//;

interface Line { folder: string; imports: string[] | null }

function readmeLayout(): Line[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const block = /## Layout\n[\s\S]*?```\n([\s\S]*?)```/.exec(readme);
  assert.ok(block, 'README.md has a "## Layout" section with the tree in a fenced block');
  const out: Line[] = [];
  let parent = '';
  for (const raw of block[1]!.split('\n').filter((l) => l.trim() !== '')) {
    const nested = raw.startsWith('  ');
    const name = raw.trim().split(/\s+/)[0]!;
    assert.ok(name.endsWith('/'), `a Layout line starts with a folder: ${raw}`);
    const folder = (nested ? parent + name : name).replace(/\/$/, '');
    if (!nested) parent = name;
    const arrow = raw.indexOf('→');
    out.push({ folder, imports: arrow < 0 ? null : raw.slice(arrow + 1).trim().split(/\s+/).filter(Boolean).sort() });
  }
  return out;
}

/** Folder → the first-party folders its TypeScript files import (not itself, not src/'s root). */
function importedFolders(): Map<string, string[]> {
  const json = execFileSync(join(ROOT, 'node_modules', '.bin', 'depcruise'), ['src', 'actors', 'trainer', 'cluster', '--config', '.dependency-cruiser.cjs', '--output-type', 'json'], { cwd: ROOT, encoding: 'utf8', maxBuffer: 64 << 20 });
  const d = JSON.parse(json) as { modules: { source: string; dependencies: { resolved: string; coreModule: boolean; dependencyTypes: string[] }[] }[] };
  const edges = new Map<string, Set<string>>();
  for (const m of d.modules) {
    if (!FIRST_PARTY.test(m.source)) continue;
    const from = dirname(m.source);
    for (const dep of m.dependencies) {
      if (dep.coreModule || !FIRST_PARTY.test(dep.resolved)) continue; // node: modules, packages
      const to = dirname(dep.resolved);
      if (to !== from && to !== 'src') (edges.get(from) ?? edges.set(from, new Set()).get(from)!).add(to);
    }
    if (!edges.has(from)) edges.set(from, new Set());
  }
  return new Map([...edges].map(([k, v]) => [k, [...v].sort()]));
}

describe('README layout', function () {
  this.timeout(60_000);

  it('lists every folder of the tree, and only real ones', () => {
    const listed = new Set(readmeLayout().map((l) => l.folder));
    const tracked = new Set(execFileSync('git', ['ls-files'], { cwd: ROOT, encoding: 'utf8' }).split('\n').filter(Boolean).map((f) => dirname(f)).filter((d) => d !== '.'));
    for (const d of tracked) assert.ok(listed.has(d), `README Layout has no line for ${d}/`);
    for (const l of listed) assert.ok(existsSync(join(ROOT, l)), `README Layout names ${l}/, which does not exist`);
  });

  it("shows which folders each TypeScript folder imports, exactly", () => {
    const real = importedFolders();
    const lines = readmeLayout().filter((l) => real.has(l.folder));
    for (const [folder, imports] of real) {
      const line = lines.find((l) => l.folder === folder);
      assert.ok(line, `README Layout has no line for ${folder}/`);
      if (folder === 'src') continue; // index.ts re-exports the library: the line says so in words
      assert.deepEqual(line.imports, imports, `README Layout: ${folder}/ imports ${imports.join(' ') || 'nothing'}`);
    }
  });
});
