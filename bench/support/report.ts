// The one place a bench prints. A bench adds every figure it measured to a Reporter and prints
// its human text (lines, tables) through it; with --json the human text is dropped and end()
// prints one JSON object per figure per line instead, for machines (scripts/bench-all.ts):
//
//   {"bench":"store","name":"store get (verify), 1 MiB","value":0.27,"unit":"GB/s",
//    "baseline":{"name":"raw read, fresh buffer, 1 MiB","value":0.28,"unit":"GB/s"},
//    "dir":"/tmp","sample":"1 MiB","bytes":1047040,"iters":40}
//
// bench: the file's stem (bench/store.bench.ts -> "store"); name: unique within the bench's run,
// stable from run to run (no measured numbers in it); baseline: the figure of the same run that
// this one is compared with (the raw disk, memcpy, SGEMM peak, PyTorch, the step alone...), or
// null; then the bench's context fields (sizes, threads...) and the figure's own, flat.
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';

/** A measured figure, as a baseline names it. */
export interface Measured { name: string; value: number; unit: string }
/** A context field's value: flat, so that runs compare field by field. */
export type ContextValue = string | number | boolean | null;
export type Context = Record<string, ContextValue>;
/** What add() takes: the figure, its baseline (default none) and any context fields of its own. */
export type FigureInput = Measured & { baseline?: Measured | null } & Record<string, unknown>;
/** One JSON line of --json. */
export interface FigureLine extends Measured { bench: string; baseline: Measured | null; [k: string]: unknown }

const RESERVED = new Set(['bench', 'name', 'value', 'unit', 'baseline']);

export interface ReporterOptions {
  /** Print JSON lines instead of the human text (default: --json is in argv). */
  json?: boolean;
  /** Where lines go (default: console.log, stdout). */
  write?: (line: string) => void;
  argv?: readonly string[];
}

export class Reporter {
  readonly bench: string;
  readonly json: boolean;
  private readonly write: (line: string) => void;
  private readonly figures: (Measured & { baseline: Measured | null; extra: Context })[] = [];
  private shared: Context = {};
  private ended = false;

  constructor(bench: string, o: ReporterOptions = {}) {
    if (!bench) throw new Error('Reporter: a bench name is needed');
    this.bench = bench;
    this.json = o.json ?? (o.argv ?? process.argv).includes('--json');
    this.write = o.write ?? ((l) => { console.log(l); });
  }

  /** The reporter of the bench file at `moduleUrl` (import.meta.url): bench/x.bench.ts -> "x". */
  static forBench(moduleUrl: string, o: ReporterOptions = {}): Reporter {
    return new Reporter(benchStem(moduleUrl), o);
  }

  /** Context fields every figure of this run carries (merged at end(), so they may be set late). */
  context(c: Context): this {
    this.shared = { ...this.shared, ...checkContext(c, 'context') };
    return this;
  }

  /** Records a figure; returns it, to be passed as another's baseline. */
  add(f: FigureInput): Measured {
    if (this.ended) throw new Error(`bench ${this.bench}: figure "${f.name}" added after end()`);
    const { name, value, unit, baseline = null, ...rest } = f;
    if (typeof name !== 'string' || !name) throw new Error(`bench ${this.bench}: a figure needs a name`);
    if (typeof value !== 'number') throw new Error(`bench ${this.bench}: figure "${name}": value ${String(value)} is not a number`);
    if (typeof unit !== 'string') throw new Error(`bench ${this.bench}: figure "${name}": unit must be a string`);
    if (this.figures.some((x) => x.name === name)) throw new Error(`bench ${this.bench}: two figures named "${name}"`);
    const b = baseline === null ? null : { name: baseline.name, value: baseline.value, unit: baseline.unit };
    this.figures.push({ name, value, unit, baseline: b, extra: checkContext(rest, `figure "${name}"`) });
    return { name, value, unit };
  }

  /** Human text: printed now without --json, dropped with it. */
  log(...lines: string[]): void {
    if (!this.json) for (const l of lines) this.write(l);
  }

  /** A plain table: every column right-aligned to its widest cell, two spaces apart. */
  table(head: string[], rows: string[][]): void {
    const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
    const line = (r: string[]) => r.map((x, i) => x.padStart(width[i]!)).join('  ');
    this.log(line(head), ...rows.map(line));
  }

  /** A markdown table; the first `leftColumns` columns left-aligned, the rest right-aligned. */
  markdown(head: string[], rows: string[][], leftColumns = 1): void {
    const rule = head.map((_, i) => (i < leftColumns ? '---' : '---:'));
    this.log(`| ${head.join(' | ')} |`, `|${rule.join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`));
  }

  /** The JSON lines of the figures so far (what end() prints with --json); throws on a value that is not finite. */
  lines(): FigureLine[] {
    return this.figures.map((f) => {
      for (const [what, v] of [['value', f.value], ['baseline value', f.baseline?.value ?? 0]] as const) {
        if (!Number.isFinite(v)) throw new Error(`bench ${this.bench}: figure "${f.name}": ${what} ${v} is not a finite number`);
      }
      return { bench: this.bench, name: f.name, value: f.value, unit: f.unit, baseline: f.baseline, ...this.shared, ...f.extra };
    });
  }

  /** With --json prints one line per figure; without, nothing (the human text is already out). */
  end(): void {
    this.ended = true;
    if (this.json) for (const l of this.lines()) this.write(JSON.stringify(l));
  }
}

/** bench/x.bench.ts (a path or file URL) -> "x". */
export function benchStem(file: string): string {
  const base = basename(file.startsWith('file:') ? fileURLToPath(file) : file);
  return base.replace(/\.bench\.[cm]?[jt]s$/, '').replace(/\.[cm]?[jt]s$/, '');
}

function checkContext(c: Record<string, unknown>, where: string): Context {
  const out: Context = {};
  for (const [k, v] of Object.entries(c)) {
    if (RESERVED.has(k)) throw new Error(`${where}: "${k}" is a reserved field`);
    if (v === undefined) continue;
    if (v !== null && typeof v !== 'string' && typeof v !== 'boolean' && !(typeof v === 'number' && Number.isFinite(v))) {
      throw new Error(`${where}: field "${k}" must be a string, a finite number, a boolean or null (got ${typeof v === 'number' ? v : typeof v})`);
    }
    out[k] = v;
  }
  return out;
}
