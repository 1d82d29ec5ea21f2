// `draftwire capture`: the features of every conversation of a chat dataset, as the target
// computes them, written one safetensors file per row (SpecForge's offline layout, without its
// pickle): input_ids I64 [T], loss_mask U8 [T], aux_hidden_state [T, 3H] (the three aux layers
// concatenated, low to high) and hidden_state [T, H] (after the final norm), plus
// vocab.safetensors with d2t (I64 offsets: target id = draft id + d2t[draft id]) and t2d
// (BOOL [V]). Readable by any framework, and what a capture is checked against another
// implementation with. Each file is written whole or not at all (temp + rename).
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError, StoreWriteError } from '../errors.ts';
import { makeDir, writeFileAtomic } from '../files.ts';
import { prepareChatDataset, type PrepareSummary } from '../chat/dataset.ts';
import { writeVocabFile } from '../chat/vocab.ts';
import { draftVocabOf, tokenizerOf } from './chat-data.ts';
import { loadHfTarget } from '../hf/target.ts';
import { readHfConfig, type AuxLayerSpec } from '../hf/config.ts';
import { writeSafetensorsFile } from '../store/safetensors.ts';
import { tensor } from '../tensor.ts';

export interface CaptureOptions {
  target: string; dataset: string; out: string; dtype: 'bf16' | 'f32'; draftVocab: number; maxLen: number;
  onBadRow: 'skip' | 'fail'; threads: number; auxLayers?: AuxLayerSpec;
  onRow?: (done: number, total: number, tokens: number) => void;
}

export interface CaptureSummary {
  out: string; rows: number; tokens: number; seconds: number; tokensPerSec: number; dtype: 'bf16' | 'f32';
  auxLayers: [number, number, number]; draftVocab: number; vocabFile: string; dataset: PrepareSummary;
}


export async function capture(o: CaptureOptions): Promise<CaptureSummary> {
  if (o.dtype !== 'bf16' && o.dtype !== 'f32') throw new InvalidArgumentError(`--dtype must be bf16 or f32, got ${String(o.dtype)}`);
  const t0 = Date.now();
  const cfg = await readHfConfig(o.target, o.auxLayers); // the model directory first: its errors name config.json
  const tok = tokenizerOf(o.target, cfg.vocab);
  const prep = await prepareChatDataset(tok, o.dataset, { maxLen: o.maxLen, onBadRow: o.onBadRow, evalRows: 0 });
  const { model, config } = await loadHfTarget(o.target, { threads: o.threads, auxLayers: o.auxLayers });
  try {
    await makeDir(o.out);
    const vocab = draftVocabOf(prep.rows, config.vocab, o.draftVocab);
    const vocabFile = join(o.out, 'vocab.safetensors');
    await writeVocabFile(vocabFile, vocab, { dataset: o.dataset, rows: String(prep.rows.length) });
    const H = config.hidden, meta = { format: 'draftwire-capture/1', aux_layers: config.auxLayers.join(','), dtype: o.dtype };
    let tokens = 0, pending: Promise<unknown> = Promise.resolve();
    for (let i = 0; i < prep.rows.length; i++) {
      const row = prep.rows[i]!, T = row.ids.length;
      // bf16 is rounded natively on the target's worker thread; the next forward overlaps this row's write
      const { aux, last } = await model.forward(row.ids, 1, T, { featureDtype: o.dtype });
      await pending;
      const file = join(o.out, `${row.id}.safetensors`);
      pending = writeSafetensorsFile(`${file}.tmp`, {
        input_ids: tensor('i64', [T], BigInt64Array.from(row.ids, (x) => BigInt(x))),
        loss_mask: tensor('u8', [T], row.mask),
        aux_hidden_state: tensor(o.dtype, [T, 3 * H], aux),
        hidden_state: tensor(o.dtype, [T, H], last),
      }, meta).then(() => rename(`${file}.tmp`, file), async (e: unknown) => {
        await rm(`${file}.tmp`, { force: true });
        const code = (e as NodeJS.ErrnoException).code ?? String(e);
        throw new StoreWriteError(`capture: cannot write ${file} (${code})`, { cause: e, detail: { path: file, errno: code } });
      });
      pending.catch(() => {}); // awaited (and thrown) before the next write; never unhandled meanwhile
      tokens += T;
      o.onRow?.(i + 1, prep.rows.length, tokens);
    }
    await pending;
    const seconds = (Date.now() - t0) / 1000;
    const summary: CaptureSummary = {
      out: o.out, rows: prep.rows.length, tokens, seconds, tokensPerSec: tokens / seconds, dtype: o.dtype,
      auxLayers: config.auxLayers, draftVocab: vocab.draftIds.length, vocabFile, dataset: prep.summary,
    };
    await writeFileAtomic(join(o.out, 'capture.json'), JSON.stringify(summary, null, 2));
    return summary;
  } finally {
    model.close();
  }
}
