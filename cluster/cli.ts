// The `draftwire` command line. Each subcommand lives in its own module under
// cluster/commands/ and exports `command(): Command`; adding one is one line in COMMANDS.
//
// Errors: `draftwire: <CODE>: message` on stderr; exit 2 for bad input (a malformed option,
// file, tensor or config: INVALID_ARGUMENT / DECODE), 1 for anything else. No stack trace
// unless --log-level debug.
import { pathToFileURL } from 'node:url';
import { Command, CommanderError, Option } from 'commander';
import { ChatTemplateError, DatasetRowError, DecodeError, DraftwireError, FeaturesError, InvalidArgumentError, ModelFormatError } from '../src/errors.ts';
import type { GlobalOptions } from './options.ts';
export type { GlobalOptions };
import * as audit from './commands/audit.ts';
import * as capture from './commands/capture.ts';
import * as certs from './commands/certs.ts';
import * as cuda from './commands/cuda.ts';
import * as exportCmd from './commands/export.ts';
import * as node from './commands/node.ts';
import * as run from './commands/run.ts';
import * as scale from './commands/scale.ts';
import * as status from './commands/status.ts';
import * as step from './commands/step.ts';
import * as wal from './commands/wal.ts';

export interface CommandModule {
  /** A fresh commander Command (name, options, action). Global options: see GlobalOptions. */
  command(): Command;
}

/** The subcommands, in help order. Others (run, node, status, audit) are added here. */
const COMMANDS: CommandModule[] = [run, capture, exportCmd, status, scale, audit, step, node, wal, certs, cuda];

/** Errors of the user's input (options, files, a model directory, a dataset): exit 2. */
const BAD_INPUT = [InvalidArgumentError, DecodeError, ModelFormatError, DatasetRowError, ChatTemplateError, FeaturesError];

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_BAD_INPUT = 2;
/** Stopped by SIGINT/SIGTERM (after cleaning up), as shells report it. */
export const EXIT_INTERRUPTED = 130;

export function buildProgram(): Command {
  const program = new Command('draftwire')
    .description('Draftwire: disaggregated EAGLE3 draft-model training')
    .addOption(new Option('--log-level <level>', 'log verbosity on stderr').choices(['error', 'warn', 'info', 'debug', 'silent']))
    .option('--json', 'machine-readable output: one JSON object on stdout')
    .configureHelp({ showGlobalOptions: true })
    .hook('preAction', (_this, action) => {
      const level = action.optsWithGlobals<GlobalOptions>().logLevel;
      if (level) process.env.DRAFTWIRE_LOG_LEVEL = level;
    });
  for (const mod of COMMANDS) program.addCommand(mod.command());
  // Every command throws instead of exiting, and errors are printed once, by main().
  const quiet = { outputError: () => {} };
  for (const cmd of [program, ...program.commands]) cmd.exitOverride().configureOutput(quiet).configureHelp({ showGlobalOptions: true });
  return program;
}

/** Runs the CLI with `argv` (without node and script); resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT_OK;
  } catch (e) {
    return reportError(e);
  }
}

/** Exits once stdout and stderr have drained (process.exit alone truncates piped output). */
export function exitAfterFlush(code: number): void {
  let pending = 2;
  const done = () => { if (--pending === 0) process.exit(code); };
  process.stdout.write('', done);
  process.stderr.write('', done);
}

function reportError(e: unknown): number {
  if (e instanceof CommanderError) {
    // --help and --version end up here too, with exit code 0.
    if (e.exitCode === 0 || e.code === 'commander.help' || e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return e.exitCode;
    const msg = e.message.replace(/^error: /, '');
    process.stderr.write(`draftwire: INVALID_ARGUMENT: ${msg} (see --help)\n`);
    return EXIT_BAD_INPUT;
  }
  const debug = (process.env.DRAFTWIRE_LOG_LEVEL ?? '').toLowerCase() === 'debug';
  if (e instanceof DraftwireError) {
    process.stderr.write(`draftwire: ${e.code}: ${e.message}\n`);
    if (e.code === 'INTERRUPTED') return EXIT_INTERRUPTED;
    if (debug && e.stack) process.stderr.write(e.stack + '\n');
    return BAD_INPUT.some((c) => e instanceof c) ? EXIT_BAD_INPUT : EXIT_FAILURE;
  }
  const err = e instanceof Error ? e : new Error(String(e));
  process.stderr.write(`draftwire: INTERNAL: ${err.message}\n`);
  if (debug && err.stack) process.stderr.write(err.stack + '\n');
  return EXIT_FAILURE;
}

// `tsx cluster/cli.ts ...` runs it directly; bin/draftwire.js imports main().
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  void main(process.argv.slice(2)).then(exitAfterFlush);
}
