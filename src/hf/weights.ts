// A Hugging Face checkpoint's tensors (model.safetensors, or shards named by
// model.safetensors.index.json), checked against the config (every tensor present, with its
// shape) before anything is read, then read one layer at a time as f32 (bf16/f16 upcast).
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { DraftwireError, ModelFormatError } from '../errors.ts';
import { upcastToF32 } from '../native/addon.ts';
import { readHeader, type TensorEntry } from '../store/safetensors.ts';
import type { HfTargetConfig } from './config.ts';

/** One expected tensor: HF name and shape. */
export interface HfTensorSpec { name: string; shape: number[] }

/** The tensors a config needs: globals first, then layer by layer (lm_head only when not tied). */
export function hfTensorSpecs(c: HfTargetConfig): { globals: HfTensorSpec[]; layers: HfTensorSpec[][] } {
  const { vocab: V, hidden: H, intermediate: I, headDim: d } = c;
  const qd = c.heads * d, kvd = c.kvHeads * d;
  const globals: HfTensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [V, H] }, { name: 'model.norm.weight', shape: [H] }];
  if (!c.tie) globals.push({ name: 'lm_head.weight', shape: [V, H] });
  const layers: HfTensorSpec[][] = [];
  for (let i = 0; i < c.layers; i++) {
    const p = `model.layers.${i}.`, a = `${p}self_attn.`;
    const l: HfTensorSpec[] = [
      { name: `${p}input_layernorm.weight`, shape: [H] },
      { name: `${a}q_proj.weight`, shape: [qd, H] }, { name: `${a}k_proj.weight`, shape: [kvd, H] },
      { name: `${a}v_proj.weight`, shape: [kvd, H] }, { name: `${a}o_proj.weight`, shape: [H, qd] },
    ];
    if (c.attentionBias) l.push({ name: `${a}q_proj.bias`, shape: [qd] }, { name: `${a}k_proj.bias`, shape: [kvd] }, { name: `${a}v_proj.bias`, shape: [kvd] });
    if (c.qkNorm) l.push({ name: `${a}q_norm.weight`, shape: [d] }, { name: `${a}k_norm.weight`, shape: [d] });
    l.push(
      { name: `${p}post_attention_layernorm.weight`, shape: [H] },
      { name: `${p}mlp.gate_proj.weight`, shape: [I, H] }, { name: `${p}mlp.up_proj.weight`, shape: [I, H] },
      { name: `${p}mlp.down_proj.weight`, shape: [H, I] },
    );
    layers.push(l);
  }
  return { globals, layers };
}

interface Located { path: string; dataStart: number; entry: TensorEntry }

/** name → file, from the index or the single file. */
async function weightMap(dir: string): Promise<{ files: string[]; map: Map<string, string> | null; where: string }> {
  const index = join(dir, 'model.safetensors.index.json');
  if (existsSync(index)) {
    let wm: unknown;
    try { wm = (JSON.parse(await readFile(index, 'utf8')) as { weight_map?: unknown }).weight_map; } catch (err) {
      throw new ModelFormatError(`${index}: cannot read the shard index (${err instanceof Error ? err.message : String(err)})`, { cause: err });
    }
    if (typeof wm !== 'object' || wm === null || Object.values(wm).some((f) => typeof f !== 'string' || f.includes('/') || f.includes('\\'))) {
      throw new ModelFormatError(`${index}: weight_map must map tensor names to file names in ${dir}`);
    }
    const map = new Map(Object.entries(wm as Record<string, string>));
    return { files: [...new Set(map.values())], map, where: index };
  }
  const single = join(dir, 'model.safetensors');
  if (!existsSync(single)) throw new ModelFormatError(`${dir}: no model.safetensors and no model.safetensors.index.json`);
  return { files: ['model.safetensors'], map: null, where: single };
}

/** Opens the checkpoint and checks every tensor's presence, dtype and shape (headers only). */
export async function locateHfTensors(dir: string, c: HfTargetConfig): Promise<Map<string, Located>> {
  const { files, map, where } = await weightMap(dir);
  const headers = new Map<string, { dataStart: number; entries: Map<string, TensorEntry> }>();
  for (const f of files) {
    const path = join(dir, f);
    let fh: FileHandle | null = null;
    try {
      fh = await open(path, 'r');
      headers.set(f, await readHeader(fh, path));
    } catch (err) {
      if (err instanceof ModelFormatError) throw err;
      const why = err instanceof DraftwireError ? err.message : (err as NodeJS.ErrnoException).code ?? String(err);
      throw new ModelFormatError(`${path}: cannot read the safetensors file (${why})`, { cause: err });
    } finally {
      await fh?.close();
    }
  }
  const out = new Map<string, Located>();
  const { globals, layers } = hfTensorSpecs(c);
  for (const s of [...globals, ...layers.flat()]) {
    const file = map ? map.get(s.name) : files[0]!;
    if (file === undefined) throw new ModelFormatError(`${where}: tensor ${s.name} is missing (not in weight_map)`);
    const path = join(dir, file), h = headers.get(file)!;
    const e = h.entries.get(s.name);
    if (!e) throw new ModelFormatError(`${path}: tensor ${s.name} is missing`);
    if (e.dtype !== 'f32' && e.dtype !== 'bf16' && e.dtype !== 'f16') throw new ModelFormatError(`${path}: tensor ${s.name} is ${e.dtype}; expected f32, bf16 or f16`);
    if (e.shape.length !== s.shape.length || e.shape.some((x, i) => x !== s.shape[i])) {
      throw new ModelFormatError(`${path}: tensor ${s.name} has shape [${e.shape.join(', ')}], expected [${s.shape.join(', ')}] from config.json`);
    }
    out.set(s.name, { path, dataStart: h.dataStart, entry: e });
  }
  return out;
}

async function readF32(fh: FileHandle, t: Located): Promise<Float32Array> {
  const { entry: e } = t;
  const bytes = new Uint8Array(e.end - e.begin);
  // One read returns at most ~2 GiB on Linux (and may return less): loop to the end.
  for (let got = 0; got < bytes.byteLength;) {
    const { bytesRead } = await fh.read(bytes, got, Math.min(bytes.byteLength - got, 1 << 30), t.dataStart + e.begin + got);
    if (bytesRead === 0) throw new ModelFormatError(`${t.path}: tensor ${e.name} is truncated`);
    got += bytesRead;
  }
  if (e.dtype === 'f32') return new Float32Array(bytes.buffer, 0, bytes.byteLength / 4);
  const out = new Float32Array(bytes.byteLength / 2);
  upcastToF32(new Uint16Array(bytes.buffer, 0, out.length), e.dtype === 'bf16' ? 'bf16' : 'f16', out);
  return out;
}

/** One tensor of the checkpoint as f32 (e.g. the final norm, which offline features need without the model). */
export async function readHfTensor(dir: string, c: HfTargetConfig, name: string): Promise<Float32Array> {
  const t = (await locateHfTensors(dir, c)).get(name);
  if (!t) throw new ModelFormatError(`${dir}: the checkpoint has no tensor ${name} for a ${c.architecture}`);
  const fh = await open(t.path, 'r');
  try { return await readF32(fh, t); } finally { await fh.close(); }
}

/**
 * The checkpoint's tensors as f32 records: the globals, then one record per layer (so a caller
 * that copies each part in and drops it holds one layer at a time besides its own copy).
 */
export async function* hfWeightParts(dir: string, c: HfTargetConfig): AsyncGenerator<Record<string, Float32Array>> {
  const located = await locateHfTensors(dir, c);
  const handles = new Map<string, FileHandle>();
  try {
    const { globals, layers } = hfTensorSpecs(c);
    for (const part of [globals, ...layers]) {
      const rec: Record<string, Float32Array> = {};
      for (const s of part) {
        const t = located.get(s.name)!;
        let fh = handles.get(t.path);
        if (!fh) handles.set(t.path, fh = await open(t.path, 'r'));
        rec[s.name] = await readF32(fh, t);
      }
      yield rec;
    }
  } finally {
    for (const fh of handles.values()) await fh.close();
  }
}

/**
 * A cheap fingerprint of the checkpoint's files (each one's name, size, header and first and
 * last MiB), so a job resumed against a re-saved or other revision of its model is refused.
 */
export async function hfWeightsFingerprint(dir: string): Promise<string> {
  const { files } = await weightMap(dir);
  const h = createHash('sha256');
  for (const f of [...files].sort()) {
    const path = join(dir, f);
    const fh = await open(path, 'r');
    try {
      const { size } = await fh.stat();
      h.update(`${f}\0${size}\0`);
      const n = Math.min(size, 1 << 20), buf = new Uint8Array(n);
      await fh.read(buf, 0, n, 0);
      h.update(buf);
      await fh.read(buf, 0, n, size - n);
      h.update(buf);
    } finally { await fh.close(); }
  }
  return h.digest('hex');
}

/** Every tensor in one record (peak memory: the whole f32 model here, plus whatever copies it). */
export async function readHfWeights(dir: string, c: HfTargetConfig): Promise<Record<string, Float32Array>> {
  const all: Record<string, Float32Array> = {};
  for await (const part of hfWeightParts(dir, c)) Object.assign(all, part);
  return all;
}
