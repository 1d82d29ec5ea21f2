#!/usr/bin/env node
// The `draftwire` executable: registers tsx (TypeScript without a compile step), then runs
// cluster/cli.ts. Exit status: 0 ok, 2 bad input, 1 other failure.
import { register } from 'tsx/esm/api';

register();
const { main, exitAfterFlush } = await import('../cluster/cli.ts');
exitAfterFlush(await main(process.argv.slice(2)));
