// A small levelled logger: one line per record on stderr.
//   DRAFTWIRE_LOG_LEVEL = error | warn | info | debug | silent   (default: info)
//   DRAFTWIRE_LOG_JSON  = 1  → JSON lines {ts, level, name, msg, ...fields}
// Both are read at each call (cheap), so tests can change them at run time.

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export type LogFields = Record<string, unknown>;

export interface Logger {
  readonly name: string;
  error(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  debug(msg: string, fields?: LogFields): void;
  enabled(level: LogLevel): boolean;
  child(suffix: string): Logger;
}

const RANK: Record<string, number> = { silent: -1, error: 0, warn: 1, info: 2, debug: 3 };

function currentRank(): number {
  const v = (process.env.DRAFTWIRE_LOG_LEVEL ?? 'info').toLowerCase();
  return RANK[v] ?? RANK.info;
}

/** Test hook: when set, records go here instead of stderr. */
let sink: ((line: string, level: LogLevel, name: string, msg: string, fields?: LogFields) => void) | null = null;
export function setLogSink(fn: typeof sink): void { sink = fn; }

function fmtValue(v: unknown): string {
  if (v instanceof Error) return JSON.stringify(`${v.name}: ${v.message}`);
  if (typeof v === 'string') return /^[\w.:/@+-]*$/.test(v) && v.length > 0 ? v : JSON.stringify(v);
  if (typeof v === 'bigint') return v.toString();
  try { return JSON.stringify(v) ?? String(v); } catch { return String(v); }
}

function jsonSafe(fields: LogFields): LogFields {
  const out: LogFields = {};
  for (const [k, v] of Object.entries(fields)) {
    if (v instanceof Error) out[k] = { name: v.name, message: v.message, ...('code' in v ? { code: (v as { code: unknown }).code } : {}) };
    else if (typeof v === 'bigint') out[k] = v.toString();
    else out[k] = v;
  }
  return out;
}

function emit(level: LogLevel, name: string, msg: string, fields?: LogFields): void {
  if (RANK[level] > currentRank()) return;
  let line: string;
  if (process.env.DRAFTWIRE_LOG_JSON === '1') {
    try {
      line = JSON.stringify({ ts: new Date().toISOString(), level, name, msg, ...(fields ? jsonSafe(fields) : {}) });
    } catch {
      line = JSON.stringify({ ts: new Date().toISOString(), level, name, msg });
    }
  } else {
    const kv = fields ? Object.entries(fields).map(([k, v]) => ` ${k}=${fmtValue(v)}`).join('') : '';
    line = `${new Date().toISOString()} ${level.toUpperCase().padEnd(5)} [${name}] ${msg}${kv}`;
  }
  if (sink) { sink(line, level, name, msg, fields); return; }
  process.stderr.write(line + '\n');
}

export function createLogger(name: string): Logger {
  return {
    name,
    error: (m, f) => emit('error', name, m, f),
    warn: (m, f) => emit('warn', name, m, f),
    info: (m, f) => emit('info', name, m, f),
    debug: (m, f) => emit('debug', name, m, f),
    enabled: (level) => RANK[level] <= currentRank(),
    child: (suffix) => createLogger(`${name}.${suffix}`),
  };
}
