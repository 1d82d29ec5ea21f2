// The rollout actor: runs the frozen target over prompts (seeded synthetic prompts, or a
// user's text/JSONL file), writes each sample's features into the store, and commits its
// SampleRef to the queue with retries. Sample ids come from the dataset row, so a restarted
// rollout skips rows the ledger already has, and re-putting a row it wrote but never
// committed supersedes the orphan generation (the store deletes it).
import { readFileSync } from 'node:fs';
import type { ActorContext, ActorSpec } from '../src/actor-system.ts';
import type { Bus } from '../src/bus.ts';
import { BackpressureError, InvalidArgumentError } from '../src/errors.ts';
import { failpoint } from '../src/failpoints.ts';
import type { JobSpec } from '../src/job.ts';
import { TargetModel } from '../src/native.ts';
import type { FeatureStore } from '../src/store/feature-store.ts';
import { tensor } from '../src/tensor.ts';

export interface RolloutOptions {
  spec: JobSpec;
  bus: Bus;
  store: FeatureStore;
  /** Rows to produce (default: every sample the job's steps consume). */
  rows?: number;
}

type RolloutMsg = { op: 'next' } | { op: 'status' };
interface RolloutState { target: TargetModel | null; done: Set<string>; row: number; produced: number; paused: boolean; prompts: Int32Array[] | null }

export function sampleId(row: number): string {
  return `row-${String(row).padStart(8, '0')}`;
}

/** Prompt token ids of every row of a text (one row per non-empty line) or JSONL file ({"text"} or {"ids"}). */
export function loadPrompts(path: string, vocab: number, promptLen: number): Int32Array[] {
  let text: string;
  try { text = readFileSync(path, 'utf8'); } catch (e) { throw new InvalidArgumentError(`cannot read dataset ${path}: ${(e as NodeJS.ErrnoException).code ?? e}`); }
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  const jsonl = path.endsWith('.jsonl');
  const rows = lines.map((line, i) => {
    let ids: number[];
    if (jsonl) {
      let o: unknown;
      try { o = JSON.parse(line); } catch { throw new InvalidArgumentError(`dataset ${path} line ${i + 1}: not valid JSON`); }
      const r = o as { text?: unknown; ids?: unknown };
      if (Array.isArray(r.ids)) {
        if (!r.ids.every((x) => Number.isInteger(x) && x >= 0 && x < vocab)) throw new InvalidArgumentError(`dataset ${path} line ${i + 1}: "ids" must be integers in [0, ${vocab})`);
        ids = r.ids as number[];
      } else if (typeof r.text === 'string') ids = [...Buffer.from(r.text, 'utf8')].map((b) => b % vocab);
      else throw new InvalidArgumentError(`dataset ${path} line ${i + 1}: needs "text" (string) or "ids" (array)`);
    } else ids = [...Buffer.from(line, 'utf8')].map((b) => b % vocab); // byte-level tokens
    const out = new Int32Array(promptLen);
    for (let t = 0; t < promptLen; t++) out[t] = ids.length > 0 ? ids[t % ids.length] : 0;
    return out;
  });
  if (rows.length === 0) throw new InvalidArgumentError(`dataset ${path} has no rows`);
  return rows;
}

/** Seeded synthetic prompt of a row (same on every machine). */
export function syntheticPrompt(seed: number, row: number, vocab: number, len: number): Int32Array {
  let s = (seed * 2654435761 + row * 40503 + 1) >>> 0;
  return Int32Array.from({ length: len }, () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s % vocab; });
}

/** The features of one sample: the target writes its own continuation of the prompt. */
export async function makeSample(target: TargetModel, spec: JobSpec, prompt: Int32Array, row: number) {
  const ids = await target.generate(prompt, spec.seqLen - spec.promptLen, { temperature: spec.temperature, seed: spec.seed * 1_000_003 + row });
  const { aux, last } = await target.forward(ids, 1, spec.seqLen);
  const H = spec.draft.hidden;
  return {
    ids: tensor('i32', [spec.seqLen], ids),
    aux: tensor('f32', [spec.seqLen, 3 * H], aux),
    last: tensor('f32', [spec.seqLen, H], last),
    mask: tensor('u8', [spec.seqLen], new Uint8Array(spec.seqLen).fill(1)),
  };
}

export function rolloutActorSpec(o: RolloutOptions): ActorSpec<RolloutState, RolloutMsg> {
  const { spec, bus, store } = o;
  const rows = o.rows ?? spec.steps * spec.batch * spec.dp;
  return {
    init: (ctx: ActorContext<RolloutMsg>) => {
      setImmediate(() => { try { ctx.system.dispatch(ctx.self, { op: 'next' }); } catch { /* stopped */ } });
      return { target: null, done: new Set(), row: 0, produced: 0, paused: false, prompts: null };
    },
    afterStop: (st) => { st.target?.close(); },
    async handle(st, msg, ctx) {
      if (msg.op === 'status') { ctx.reply({ row: st.row, rows, produced: st.produced, paused: st.paused }); return st; }
      const again = (ms: number) => {
        const t = setTimeout(() => { try { ctx.system.dispatch(ctx.self, { op: 'next' }); } catch { /* stopped */ } }, ms);
        t.unref();
      };
      if (!st.target) {
        st.target = TargetModel.create(spec.target, { threads: spec.threads });
        st.prompts = spec.dataset ? loadPrompts(spec.dataset, spec.target.vocab, spec.promptLen) : null;
        const known = await bus.request<{ sampleIds: string[] }>(`dw.${spec.job}.queue.committed`, {}, { timeoutMs: 5000, retries: 20 });
        st.done = new Set(known.sampleIds);
        ctx.log.info('rollout started', { rows, alreadyCommitted: st.done.size, incarnation: ctx.incarnation });
      }
      while (st.row < rows && st.done.has(sampleId(st.row))) st.row++;
      if (st.row >= rows) { ctx.log.info('rollout finished', { produced: st.produced }); return st; }
      const bp = await store.backpressure();
      if (bp.pressured) { // pause at the high watermark, resume at the low one
        if (!st.paused) ctx.log.info('store above high watermark; rollout paused', { usage: bp.usageBytes });
        st.paused = true;
        again(200);
        return st;
      }
      if (st.paused) ctx.log.info('rollout resumed', { usage: bp.usageBytes });
      st.paused = false;
      const row = st.row;
      const id = sampleId(row);
      const prompt = st.prompts ? st.prompts[row % st.prompts.length] : syntheticPrompt(spec.seed, row, spec.target.vocab, spec.promptLen);
      let ref;
      try {
        ref = await store.put(id, await makeSample(st.target, spec, prompt, row));
      } catch (e) {
        if (e instanceof BackpressureError) { again(200); return st; }
        throw e; // the supervisor restarts us; the row is produced again
      }
      failpoint('rollout.after-put'); // a crash here must leave one committed sample, no orphan
      await bus.request(bus.subjects.queue.commit, { ref }, { idempotencyKey: `commit:${id}:${ref.generation}`, timeoutMs: 5000, retries: 20 });
      st.done.add(id);
      st.row++;
      st.produced++;
      again(0);
      return st;
    },
  };
}
