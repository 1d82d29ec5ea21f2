// Option parsers shared by the subcommands: each names the option in its error.
import { InvalidArgumentError as OptionError } from 'commander';

/** Options every subcommand can read with `cmd.optsWithGlobals()`. */
export interface GlobalOptions {
  logLevel?: 'error' | 'warn' | 'info' | 'debug' | 'silent';
  json?: boolean;
}

export function positive(name: string) {
  return (v: string): number => {
    const x = Number(v);
    if (v.trim() === '' || !Number.isFinite(x) || x <= 0) throw new OptionError(`${name} must be a positive number, got "${v}"`);
    return x;
  };
}

export function nonNegative(name: string) {
  return (v: string): number => {
    const x = Number(v);
    if (v.trim() === '' || !Number.isFinite(x) || x < 0) throw new OptionError(`${name} must be a number ≥ 0, got "${v}"`);
    return x;
  };
}

export function positiveInt(name: string) {
  return (v: string): number => {
    const x = Number(v);
    if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(x) || x < 1) throw new OptionError(`${name} must be a positive integer, got "${v}"`);
    return x;
  };
}

export function nonNegativeInt(name: string) {
  return (v: string): number => {
    const x = Number(v);
    if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(x)) throw new OptionError(`${name} must be an integer ≥ 0, got "${v}"`);
    return x;
  };
}

const JOB_RE = /^[A-Za-z0-9_-]{1,64}$/;
export function jobId(v: string): string {
  if (!JOB_RE.test(v)) throw new OptionError(`--job must be 1..64 characters of [A-Za-z0-9_-], got "${v}"`);
  return v;
}
