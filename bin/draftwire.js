#!/usr/bin/env node
// The `draftwire` executable. In a checkout it runs the TypeScript sources (cluster/cli.ts) under
// tsx, so an edit needs no build step; in an installed package, which ships only the compiled
// JavaScript, it runs dist/cluster/cli.js. Exit status: 0 ok, 2 bad input, 1 other failure.
import { existsSync } from 'node:fs';

const sources = new URL('../cluster/cli.ts', import.meta.url);
let cli;
if (existsSync(sources)) {
  const { register } = await import('tsx/esm/api');
  register();
  cli = await import(sources.href);
} else {
  cli = await import(new URL('../dist/cluster/cli.js', import.meta.url).href);
}
cli.exitAfterFlush(await cli.main(process.argv.slice(2)));
