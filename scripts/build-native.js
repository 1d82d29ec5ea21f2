#!/usr/bin/env node
// Builds the native addon (native/ → build/native/Release/draftwire_native.node) with cmake-js,
// Release, but only when the output is missing or a source under native/ is newer than it.
// Plain ESM so it runs before anything else (`npm test` calls it first).
// Usage: node scripts/build-native.js [--force]
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync, utimesSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const srcDir = join(root, 'native');
const outDir = join(root, 'build', 'native');
const output = join(outDir, 'Release', 'draftwire_native.node');
const force = process.argv.includes('--force');

function newestSource(dir) {
  let newest = { path: null, mtime: 0 };
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, ent.name);
    if (ent.isDirectory()) {
      const n = newestSource(p);
      if (n.mtime > newest.mtime) newest = n;
    } else if (ent.isFile()) {
      const m = statSync(p).mtimeMs;
      if (m > newest.mtime) newest = { path: p, mtime: m };
    }
  }
  return newest;
}

function main() {
  const newest = newestSource(srcDir);
  let reason = null;
  if (force) reason = '--force';
  else if (!existsSync(output)) reason = `${relative(root, output)} is missing`;
  else if (newest.mtime > statSync(output).mtimeMs) reason = `${relative(root, newest.path)} is newer than the addon`;
  if (reason === null) {
    console.log(`build-native: ${relative(root, output)} is up to date`);
    return 0;
  }
  console.log(`build-native: building (${reason})`);
  const cmakeJs = join(root, 'node_modules', 'cmake-js', 'bin', 'cmake-js');
  const args = [cmakeJs, 'compile', '-d', srcDir, '-O', outDir, '-B', 'Release', '--log-level', 'warn'];
  const jobs = process.env.DRAFTWIRE_BUILD_JOBS;
  if (jobs) args.push('-p', jobs);
  const t0 = Date.now();
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0 || !existsSync(output)) {
    console.error(`build-native: cmake-js failed (exit ${r.status ?? r.signal})`);
    return 1;
  }
  // A no-op incremental build leaves the addon's mtime alone; touch it so a header that was
  // merely newer does not trigger a rebuild on every run.
  const now = new Date();
  utimesSync(output, now, now);
  console.log(`build-native: built ${relative(root, output)} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return 0;
}

process.exit(main());
