// How to start another Draftwire process (a rank, a step rank) from the running one: in a
// checkout the TypeScript sources run under tsx; in an installed package, which ships only the
// compiled JavaScript in dist/, plain node runs the .js beside this file.
import { fileURLToPath } from 'node:url';

const compiled = import.meta.url.endsWith('.js');

/** The file of entry point `name` (e.g. 'rank-main') in this folder, and the node flags it needs. */
export function entryPoint(name: string): { path: string; execArgv: string[] } {
  const path = fileURLToPath(new URL(`./${name}${compiled ? '.js' : '.ts'}`, import.meta.url));
  return { path, execArgv: compiled ? [] : ['--import', import.meta.resolve('tsx')] };
}

/** The address a rank's collectives listen on, set by its node agent (`draftwire node --comm-host`). */
export const COMM_HOST_ENV = 'DRAFTWIRE_COMM_HOST';
