// An independent float64 implementation of docs/model-math.md, written plainly (naive loops,
// Float64Array, no shared code with native/). It is the oracle the native kernels are checked
// against: referenceLoss is the forward pass and metrics, referenceGrads differentiates it by
// central finite differences, referenceBackward is a hand-derived analytic backward pass
// (itself checked against the finite differences), referenceAdamW is one optimizer step.

export interface RefConfig {
  vocab: number;
  draftVocab: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  intermediate: number;
  ttt: number;
  ropeTheta: number;
  rmsEps: number;
  /** Head dim when it is not hidden/heads (as a target's may be). */
  headDim?: number;
  ropeScaling?: RefRopeScaling | null;
}

/** RoPE frequency scaling as transformers' `rope_scaling` (linear, llama3). */
export interface RefRopeScaling {
  type: 'linear' | 'llama3'; factor: number;
  lowFreqFactor?: number; highFreqFactor?: number; originalMaxPositionEmbeddings?: number;
}

/** Anything indexable by number: Float32Array, Float64Array, Int32Array, Uint8Array, number[]. */
export type Num = ArrayLike<number>;
export type RefWeights = Record<string, Num>;

export interface RefBatch {
  ids: Num;
  aux: Num;
  last: Num;
  mask: Num;
  batch: number;
  seq: number;
}

export interface RefLoss {
  loss: number;
  ploss: number[];
  acc: number[];
  /** Σ_{b,t} w_{k,t} per step (how many positions count). */
  weightSum: number[];
  /** Smallest gap between the best and second-best draft logit over weighted positions (per step). */
  accMargin: number[];
}

export const REF_TRAINABLE = ['fc', 'n_in', 'n_hid', 'q', 'k', 'v', 'o', 'n_post', 'gate', 'up', 'down', 'n_final', 'lm'] as const;
export const REF_FROZEN = ['embed', 'target_head', 'd2t'] as const;
export const STEP_DECAY = 0.8;

export function refShapes(c: RefConfig): Record<string, number[]> {
  const H = c.hidden, d = c.headDim ?? c.hidden / c.heads;
  return {
    fc: [H, 3 * H], n_in: [H], n_hid: [H],
    q: [c.heads * d, 2 * H], k: [c.kvHeads * d, 2 * H], v: [c.kvHeads * d, 2 * H], o: [H, c.heads * d],
    n_post: [H], gate: [c.intermediate, H], up: [c.intermediate, H], down: [H, c.intermediate],
    n_final: [H], lm: [c.draftVocab, H],
    embed: [c.vocab, H], target_head: [c.vocab, H], d2t: [c.draftVocab],
  };
}

// ---------------------------------------------------------------------------------------------
// Small float64 building blocks (vectors are Float64Array; matrices row-major [out, in]).

function f64(a: Num, off = 0, n = a.length - off): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = a[off + i];
  return out;
}

/** y = W·x for W [out, in]. */
function matvec(W: Num, x: Float64Array, out: number, inn: number): Float64Array {
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = 0;
    for (let i = 0; i < inn; i++) s += W[o * inn + i] * x[i];
    y[o] = s;
  }
  return y;
}

/** x = Wᵀ·dy for W [out, in] (the backward of matvec with respect to its input). */
function matvecT(W: Num, dy: Float64Array, out: number, inn: number): Float64Array {
  const dx = new Float64Array(inn);
  for (let o = 0; o < out; o++) for (let i = 0; i < inn; i++) dx[i] += W[o * inn + i] * dy[o];
  return dx;
}

/** dW += dy ⊗ x. */
function outerAdd(dW: Float64Array, dy: Float64Array, x: Float64Array): void {
  const out = dy.length, inn = x.length;
  for (let o = 0; o < out; o++) for (let i = 0; i < inn; i++) dW[o * inn + i] += dy[o] * x[i];
}

function rmsnorm(x: Float64Array, w: Num, eps: number): Float64Array {
  let ms = 0;
  for (let i = 0; i < x.length; i++) ms += x[i] * x[i];
  const r = 1 / Math.sqrt(ms / x.length + eps);
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = w[i] * x[i] * r;
  return y;
}

/** Backward of y = w ⊙ x · r, r = (mean(x²)+ε)^(-1/2): returns dx, adds into dw. */
function rmsnormBack(x: Float64Array, w: Num, eps: number, dy: Float64Array, dw: Float64Array): Float64Array {
  const n = x.length;
  let ms = 0;
  for (let i = 0; i < n; i++) ms += x[i] * x[i];
  const r = 1 / Math.sqrt(ms / n + eps);
  let dot = 0; // Σ dy_i w_i x_i
  for (let i = 0; i < n; i++) {
    dw[i] += dy[i] * x[i] * r;
    dot += dy[i] * w[i] * x[i];
  }
  const dx = new Float64Array(n);
  // ∂r/∂x_j = -r³ x_j / n
  for (let j = 0; j < n; j++) dx[j] = dy[j] * w[j] * r - (dot * r * r * r * x[j]) / n;
  return dx;
}

function sigmoid(x: number): number { return 1 / (1 + Math.exp(-x)); }

/** Frequency i of d/2, scaled as transformers' _compute_linear/_compute_llama3_parameters do. */
function ropeFreq(i: number, d: number, theta: number, sc: RefRopeScaling | null | undefined): number {
  const f = Math.pow(theta, (-2 * i) / d);
  if (!sc) return f;
  if (sc.type === 'linear') return f / sc.factor;
  const old = sc.originalMaxPositionEmbeddings ?? 8192, lo = sc.lowFreqFactor ?? 1, hi = sc.highFreqFactor ?? 4;
  const wavelen = (2 * Math.PI) / f;
  if (wavelen > old / lo) return f / sc.factor; // low frequencies: stretched
  if (wavelen < old / hi) return f; // high frequencies: kept
  const smooth = (old / wavelen - lo) / (hi - lo);
  return (1 - smooth) * (f / sc.factor) + smooth * f;
}

/** Rotate-half RoPE on each head of `x` (heads × d), position `pos`; `sign` -1 applies the inverse (transpose). */
function rope(x: Float64Array, heads: number, d: number, pos: number, theta: number, sign = 1, sc?: RefRopeScaling | null): Float64Array {
  const y = new Float64Array(x.length);
  const half = d / 2;
  for (let h = 0; h < heads; h++) {
    const b = h * d;
    for (let i = 0; i < half; i++) {
      const f = ropeFreq(i, d, theta, sc);
      const a = pos * f;
      const c = Math.cos(a), s = sign * Math.sin(a);
      const x0 = x[b + i], x1 = x[b + i + half];
      y[b + i] = x0 * c - x1 * s;
      y[b + i + half] = x1 * c + x0 * s;
    }
  }
  return y;
}

function logSoftmax(z: Float64Array): Float64Array {
  let m = -Infinity;
  for (const v of z) if (v > m) m = v;
  let s = 0;
  for (const v of z) s += Math.exp(v - m);
  const lse = m + Math.log(s);
  const out = new Float64Array(z.length);
  for (let i = 0; i < z.length; i++) out[i] = z[i] - lse;
  return out;
}

function argmax(z: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < z.length; i++) if (z[i] > z[best]) best = i; // strict: lowest index on ties
  return best;
}

// ---------------------------------------------------------------------------------------------
// Target distribution: depends only on frozen tensors and `last`, so it is computed once.

export interface RefTarget {
  /** p[b][t] (Vd), ok[b][t], tgt[b][t] (draft index of the target argmax, -1 when !ok), y[b][t]. */
  p: Float64Array[][];
  ok: number[][];
  tgt: number[][];
  y: number[][];
  /** Gap between the best and second-best target logit per position (to see near ties). */
  margin: number[][];
}

export function referenceTarget(c: RefConfig, w: RefWeights, batch: RefBatch): RefTarget {
  const { vocab: V, draftVocab: Vd, hidden: H } = c;
  const Wt = w.target_head, d2t = w.d2t;
  const out: RefTarget = { p: [], ok: [], tgt: [], y: [], margin: [] };
  for (let b = 0; b < batch.batch; b++) {
    out.p.push([]); out.ok.push([]); out.tgt.push([]); out.y.push([]); out.margin.push([]);
    for (let t = 0; t < batch.seq; t++) {
      const last = f64(batch.last, (b * batch.seq + t) * H, H);
      const z = matvec(Wt, last, V, H);
      const y = argmax(z);
      let second = -Infinity;
      for (let v = 0; v < V; v++) if (v !== y && z[v] > second) second = z[v];
      const zd = new Float64Array(Vd);
      let tgt = -1;
      for (let j = 0; j < Vd; j++) {
        zd[j] = z[d2t[j]];
        if (d2t[j] === y) tgt = j;
      }
      const lp = logSoftmax(zd);
      const p = new Float64Array(Vd);
      for (let j = 0; j < Vd; j++) p[j] = Math.exp(lp[j]);
      out.p[b].push(p);
      out.ok[b].push(tgt >= 0 ? 1 : 0);
      out.tgt[b].push(tgt);
      out.y[b].push(y);
      out.margin[b].push(z[y] - second);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Forward pass of one sample, keeping every intermediate the backward pass needs.

interface PosCache {
  tok: number;
  w: number;
  u: number;
  hin: Float64Array;
  e: Float64Array; // E[tok]
  x: Float64Array; // concat(norm(e), norm(hin))
  qr: Float64Array; // roped queries (nh·d)
  kr: Float64Array; // roped keys (nkv·d)
  vv: Float64Array; // values (nkv·d)
  att: Float64Array[]; // per head: softmax weights over the key set
  attOut: Float64Array; // concat heads (nh·d)
  h1: Float64Array;
  uu: Float64Array;
  ga: Float64Array; // uu·gateᵀ
  up: Float64Array; // uu·upᵀ
  act: Float64Array; // silu(ga) ⊙ up
  h2: Float64Array;
  fin: Float64Array; // RMSNorm(h2; n_final)
  logits: Float64Array;
}

function dims(c: RefConfig) {
  const H = c.hidden, nh = c.heads, nkv = c.kvHeads, d = c.headDim ?? H / nh;
  return { H, nh, nkv, d, g: nh / nkv, I: c.intermediate, Vd: c.draftVocab, K: c.ttt };
}

/** The key set of query (k, t): [step, position] pairs in a fixed order. */
function keySet(k: number, t: number): Array<[number, number]> {
  const ks: Array<[number, number]> = [];
  for (let s = 0; s <= t; s++) ks.push([0, s]);
  for (let j = 1; j <= k; j++) ks.push([j, t]);
  return ks;
}

function forwardSample(c: RefConfig, w: RefWeights, batch: RefBatch, target: RefTarget, b: number): PosCache[][] {
  const { H, nh, nkv, d, g, I, Vd, K } = dims(c);
  const T = batch.seq, eps = c.rmsEps;
  const cache: PosCache[][] = [];
  let hins: Float64Array[] = [];
  for (let t = 0; t < T; t++) hins.push(matvec(w.fc, f64(batch.aux, (b * T + t) * 3 * H, 3 * H), H, 3 * H));
  for (let k = 0; k < K; k++) {
    const row: PosCache[] = [];
    // projections first (every position), attention needs keys of all positions of this step
    for (let t = 0; t < T; t++) {
      const u = t + 1 + k;
      const tok = u < T ? batch.ids[b * T + u] : 0;
      const wt = u < T ? batch.mask[b * T + u] * target.ok[b][u] : 0;
      const e = f64(w.embed, tok * H, H);
      const hin = hins[t];
      const x = new Float64Array(2 * H);
      x.set(rmsnorm(e, w.n_in, eps), 0);
      x.set(rmsnorm(hin, w.n_hid, eps), H);
      const qr = rope(matvec(w.q, x, nh * d, 2 * H), nh, d, t, c.ropeTheta, 1, c.ropeScaling);
      const kr = rope(matvec(w.k, x, nkv * d, 2 * H), nkv, d, t, c.ropeTheta, 1, c.ropeScaling);
      const vv = matvec(w.v, x, nkv * d, 2 * H);
      row.push({ tok, w: wt, u, hin, e, x, qr, kr, vv } as PosCache);
    }
    cache.push(row);
    for (let t = 0; t < T; t++) {
      const pc = row[t];
      const ks = keySet(k, t);
      const attOut = new Float64Array(nh * d);
      pc.att = [];
      for (let h = 0; h < nh; h++) {
        const ch = Math.floor(h / g);
        const sc = new Float64Array(ks.length);
        for (let n = 0; n < ks.length; n++) {
          const key = cache[ks[n][0]][ks[n][1]].kr;
          let s = 0;
          for (let i = 0; i < d; i++) s += pc.qr[h * d + i] * key[ch * d + i];
          sc[n] = s / Math.sqrt(d);
        }
        const ls = logSoftmax(sc);
        const a = new Float64Array(ks.length);
        for (let n = 0; n < ks.length; n++) a[n] = Math.exp(ls[n]);
        pc.att.push(a);
        for (let n = 0; n < ks.length; n++) {
          const val = cache[ks[n][0]][ks[n][1]].vv;
          for (let i = 0; i < d; i++) attOut[h * d + i] += a[n] * val[ch * d + i];
        }
      }
      pc.attOut = attOut;
      const ao = matvec(w.o, attOut, H, nh * d);
      const h1 = new Float64Array(H);
      for (let i = 0; i < H; i++) h1[i] = pc.hin[i] + ao[i];
      pc.h1 = h1;
      pc.uu = rmsnorm(h1, w.n_post, eps);
      pc.ga = matvec(w.gate, pc.uu, I, H);
      pc.up = matvec(w.up, pc.uu, I, H);
      pc.act = new Float64Array(I);
      for (let i = 0; i < I; i++) pc.act[i] = pc.ga[i] * sigmoid(pc.ga[i]) * pc.up[i];
      const mo = matvec(w.down, pc.act, H, I);
      pc.h2 = new Float64Array(H);
      for (let i = 0; i < H; i++) pc.h2[i] = h1[i] + mo[i];
      pc.fin = rmsnorm(pc.h2, w.n_final, eps);
      pc.logits = matvec(w.lm, pc.fin, Vd, H);
    }
    hins = row.map((pc) => pc.h2);
  }
  return cache;
}

/** The loss, per-step losses and accuracies of docs/model-math.md, in float64. */
export function referenceLoss(c: RefConfig, w: RefWeights, batch: RefBatch, target?: RefTarget): RefLoss {
  const tg = target ?? referenceTarget(c, w, batch);
  const K = c.ttt, B = batch.batch, T = batch.seq;
  const ploss = new Array<number>(K).fill(0);
  const hits = new Array<number>(K).fill(0);
  const wsum = new Array<number>(K).fill(0);
  const margin = new Array<number>(K).fill(Infinity);
  for (let b = 0; b < B; b++) {
    const cache = forwardSample(c, w, batch, tg, b);
    for (let k = 0; k < K; k++) {
      for (let t = 0; t < T; t++) {
        const pc = cache[k][t];
        if (pc.w === 0) continue;
        const lp = logSoftmax(pc.logits);
        const p = tg.p[b][pc.u];
        let s = 0;
        for (let j = 0; j < lp.length; j++) s += p[j] * lp[j];
        ploss[k] -= pc.w * s;
        wsum[k] += pc.w;
        const am = argmax(pc.logits);
        if (am === tg.tgt[b][pc.u]) hits[k] += pc.w;
        let second = -Infinity;
        for (let j = 0; j < pc.logits.length; j++) if (j !== am && pc.logits[j] > second) second = pc.logits[j];
        margin[k] = Math.min(margin[k], pc.logits[am] - second);
      }
    }
  }
  let loss = 0;
  for (let k = 0; k < K; k++) {
    ploss[k] /= B * T;
    loss += Math.pow(STEP_DECAY, k) * ploss[k];
  }
  return { loss, ploss, acc: hits.map((h, k) => (wsum[k] > 0 ? h / wsum[k] : 0)), weightSum: wsum, accMargin: margin };
}

// ---------------------------------------------------------------------------------------------
// Gradients.

function trainableF64(w: RefWeights): Record<string, Float64Array> {
  const out: Record<string, Float64Array> = {};
  for (const n of REF_TRAINABLE) out[n] = f64(w[n]);
  return out;
}

/**
 * ∂loss/∂(every trainable tensor) by central finite differences in float64 (step `h`). Only
 * for tiny configs: two forward passes per parameter.
 */
export function referenceGrads(c: RefConfig, w: RefWeights, batch: RefBatch, opts: { h?: number; names?: readonly string[] } = {}): Record<string, Float64Array> {
  const h = opts.h ?? 1e-5;
  const tg = referenceTarget(c, w, batch);
  const work: RefWeights = { ...w, ...trainableF64(w) };
  const grads: Record<string, Float64Array> = {};
  for (const name of opts.names ?? REF_TRAINABLE) {
    const p = work[name] as Float64Array;
    const gr = new Float64Array(p.length);
    for (let i = 0; i < p.length; i++) {
      const orig = p[i];
      p[i] = orig + h;
      const lp = referenceLoss(c, work, batch, tg).loss;
      p[i] = orig - h;
      const lm = referenceLoss(c, work, batch, tg).loss;
      p[i] = orig;
      gr[i] = (lp - lm) / (2 * h);
    }
    grads[name] = gr;
  }
  return grads;
}

/** Central finite differences at chosen flat indices only: picks[name] = indices → values. */
export function referenceGradEntries(c: RefConfig, w: RefWeights, batch: RefBatch, picks: Record<string, number[]>, h = 1e-5): Record<string, number[]> {
  const tg = referenceTarget(c, w, batch);
  const work: RefWeights = { ...w, ...trainableF64(w) };
  const out: Record<string, number[]> = {};
  for (const [name, idx] of Object.entries(picks)) {
    const p = work[name] as Float64Array;
    out[name] = idx.map((i) => {
      const orig = p[i];
      p[i] = orig + h;
      const lp = referenceLoss(c, work, batch, tg).loss;
      p[i] = orig - h;
      const lm = referenceLoss(c, work, batch, tg).loss;
      p[i] = orig;
      return (lp - lm) / (2 * h);
    });
  }
  return out;
}

/** ∂loss/∂(every trainable tensor) by a hand-derived backward pass in float64. */
export function referenceBackward(c: RefConfig, w: RefWeights, batch: RefBatch): { loss: RefLoss; grads: Record<string, Float64Array> } {
  const { H, nh, nkv, d, g, I, Vd, K } = dims(c);
  const B = batch.batch, T = batch.seq, eps = c.rmsEps;
  const tg = referenceTarget(c, w, batch);
  const loss = referenceLoss(c, w, batch, tg);
  const G: Record<string, Float64Array> = {};
  for (const n of REF_TRAINABLE) G[n] = new Float64Array(w[n].length);
  // gradient accumulators for keys/values (step st, position sp) read by a query of a later step
  const pending = new Map<string, Float64Array>();
  const pend = (key: string): Float64Array => {
    let a = pending.get(key);
    if (!a) { a = new Float64Array(nkv * d); pending.set(key, a); }
    return a;
  };
  const pendK = (st: number, sp: number) => pend(`k${st}:${sp}`);
  const pendV = (st: number, sp: number) => pend(`v${st}:${sp}`);
  for (let b = 0; b < B; b++) {
    const cache = forwardSample(c, w, batch, tg, b);
    // gradient flowing into each position's h2 from the next step's hin, per step
    let dNextHin: Float64Array[] = Array.from({ length: T }, () => new Float64Array(H));
    for (let k = K - 1; k >= 0; k--) {
      const row = cache[k];
      const coef = Math.pow(STEP_DECAY, k) / (B * T);
      // gradients w.r.t. roped keys / values of this step (and, for k = 0, also from later steps)
      const dkr: Float64Array[] = Array.from({ length: T }, () => new Float64Array(nkv * d));
      const dvv: Float64Array[] = Array.from({ length: T }, () => new Float64Array(nkv * d));
      const dhin: Float64Array[] = Array.from({ length: T }, () => new Float64Array(H));
      const dqr: Float64Array[] = Array.from({ length: T }, () => new Float64Array(nh * d));
      // keys/values of an earlier step read by these queries go to pendK/pendV; they are added
      // in when that step is processed (steps run backward, so every reader comes first).
      for (let t = 0; t < T; t++) {
        const pc = row[t];
        // logits → h2
        const dlog = new Float64Array(Vd);
        if (pc.w !== 0) {
          const lp = logSoftmax(pc.logits);
          const p = tg.p[b][pc.u];
          let ps = 0;
          for (let j = 0; j < Vd; j++) ps += p[j];
          // d/dz of −w·Σ p_j log_softmax(z)_j = w·(softmax(z)·Σp − p)
          for (let j = 0; j < Vd; j++) dlog[j] = coef * pc.w * (Math.exp(lp[j]) * ps - p[j]);
        }
        outerAdd(G.lm, dlog, pc.fin);
        const dfin = matvecT(w.lm, dlog, Vd, H);
        const dh2 = rmsnormBack(pc.h2, w.n_final, eps, dfin, G.n_final);
        for (let i = 0; i < H; i++) dh2[i] += dNextHin[t][i];
        // MLP
        outerAdd(G.down, dh2, pc.act);
        const dact = matvecT(w.down, dh2, H, I);
        const dga = new Float64Array(I), dup = new Float64Array(I);
        for (let i = 0; i < I; i++) {
          const s = sigmoid(pc.ga[i]);
          const silu = pc.ga[i] * s;
          dup[i] = dact[i] * silu;
          dga[i] = dact[i] * pc.up[i] * (s * (1 + pc.ga[i] * (1 - s)));
        }
        outerAdd(G.gate, dga, pc.uu);
        outerAdd(G.up, dup, pc.uu);
        const duu = matvecT(w.gate, dga, I, H);
        const duu2 = matvecT(w.up, dup, I, H);
        for (let i = 0; i < H; i++) duu[i] += duu2[i];
        const dh1 = rmsnormBack(pc.h1, w.n_post, eps, duu, G.n_post);
        for (let i = 0; i < H; i++) dh1[i] += dh2[i];
        // h1 = hin + o(attOut)
        for (let i = 0; i < H; i++) dhin[t][i] += dh1[i];
        outerAdd(G.o, dh1, pc.attOut);
        const dattOut = matvecT(w.o, dh1, H, nh * d);
        // attention
        const ks = keySet(k, t);
        for (let h = 0; h < nh; h++) {
          const ch = Math.floor(h / g);
          const a = pc.att[h];
          const da = new Float64Array(ks.length);
          for (let n = 0; n < ks.length; n++) {
            const [st, sp] = ks[n];
            const val = cache[st][sp].vv;
            let s = 0;
            for (let i = 0; i < d; i++) s += dattOut[h * d + i] * val[ch * d + i];
            da[n] = s;
            const dv = st === k ? dvv[sp] : pendV(st, sp);
            for (let i = 0; i < d; i++) dv[ch * d + i] += a[n] * dattOut[h * d + i];
          }
          let dot = 0;
          for (let n = 0; n < ks.length; n++) dot += a[n] * da[n];
          for (let n = 0; n < ks.length; n++) {
            const dsc = (a[n] * (da[n] - dot)) / Math.sqrt(d);
            const [st, sp] = ks[n];
            const key = cache[st][sp].kr;
            const dk = st === k ? dkr[sp] : pendK(st, sp);
            for (let i = 0; i < d; i++) {
              dqr[t][h * d + i] += dsc * key[ch * d + i];
              dk[ch * d + i] += dsc * pc.qr[h * d + i];
            }
          }
        }
      }
      // this step's keys/values were also read by queries of later steps (processed already)
      for (let t = 0; t < T; t++) {
        const pk = pendK(k, t), pv = pendV(k, t);
        for (let i = 0; i < nkv * d; i++) { dkr[t][i] += pk[i]; dvv[t][i] += pv[i]; }
      }
      // projections → x → norms → hin
      const nextHin: Float64Array[] = [];
      for (let t = 0; t < T; t++) {
        const pc = row[t];
        const dq = rope(dqr[t], nh, d, t, c.ropeTheta, -1, c.ropeScaling);
        const dk = rope(dkr[t], nkv, d, t, c.ropeTheta, -1, c.ropeScaling);
        outerAdd(G.q, dq, pc.x);
        outerAdd(G.k, dk, pc.x);
        outerAdd(G.v, dvv[t], pc.x);
        const dx = matvecT(w.q, dq, nh * d, 2 * H);
        const dx2 = matvecT(w.k, dk, nkv * d, 2 * H);
        const dx3 = matvecT(w.v, dvv[t], nkv * d, 2 * H);
        for (let i = 0; i < 2 * H; i++) dx[i] += dx2[i] + dx3[i];
        rmsnormBack(pc.e, w.n_in, eps, dx.subarray(0, H), G.n_in);
        const dh = rmsnormBack(pc.hin, w.n_hid, eps, dx.subarray(H), G.n_hid);
        for (let i = 0; i < H; i++) dhin[t][i] += dh[i];
        nextHin.push(dhin[t]);
      }
      dNextHin = nextHin;
    }
    // step 0: hin = fc(aux)
    for (let t = 0; t < T; t++) outerAdd(G.fc, dNextHin[t], f64(batch.aux, (b * T + t) * 3 * H, 3 * H));
    pending.clear();
  }
  return { loss, grads: G };
}

// ---------------------------------------------------------------------------------------------
// Optimizer.

export interface RefAdamState {
  m: Record<string, Float64Array>;
  v: Record<string, Float64Array>;
  /** Steps taken so far (the next step uses t = step + 1). */
  step: number;
}

export interface RefAdamOptions {
  lr: number;
  clip?: number | null;
  weightDecay?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
}

export function globalNorm(grads: Record<string, Num>, names: readonly string[] = REF_TRAINABLE): number {
  let s = 0;
  for (const n of names) {
    const g = grads[n];
    for (let i = 0; i < g.length; i++) s += g[i] * g[i];
  }
  return Math.sqrt(s);
}

/** One AdamW step of docs/model-math.md (with optional global-norm clipping) in float64. */
export function referenceAdamW(
  weights: RefWeights,
  grads: Record<string, Num>,
  state: RefAdamState | null,
  opts: RefAdamOptions,
): { weights: Record<string, Float64Array>; state: RefAdamState; gradNorm: number; clipCoef: number } {
  const b1 = opts.beta1 ?? 0.9, b2 = opts.beta2 ?? 0.95, eps = opts.eps ?? 1e-8, wd = opts.weightDecay ?? 0;
  const gradNorm = globalNorm(grads);
  const clipCoef = opts.clip != null && opts.clip > 0 ? Math.min(1, opts.clip / (gradNorm + 1e-6)) : 1;
  const t = (state?.step ?? 0) + 1;
  const out: Record<string, Float64Array> = {};
  const next: RefAdamState = { m: {}, v: {}, step: t };
  for (const n of REF_TRAINABLE) {
    const w = weights[n], g = grads[n];
    const m = state ? f64(state.m[n]) : new Float64Array(w.length);
    const v = state ? f64(state.v[n]) : new Float64Array(w.length);
    const nw = new Float64Array(w.length);
    for (let i = 0; i < w.length; i++) {
      const gi = clipCoef * g[i];
      m[i] = b1 * m[i] + (1 - b1) * gi;
      v[i] = b2 * v[i] + (1 - b2) * gi * gi;
      const mh = m[i] / (1 - Math.pow(b1, t));
      const vh = v[i] / (1 - Math.pow(b2, t));
      nw[i] = w[i] - opts.lr * (mh / (Math.sqrt(vh) + eps) + wd * w[i]);
    }
    out[n] = nw;
    next.m[n] = m;
    next.v[n] = v;
  }
  return { weights: out, state: next, gradNorm, clipCoef };
}

// ---------------------------------------------------------------------------------------------
// Comparison helpers for tests.

/** ‖a − b‖ / ‖b‖ (‖a‖ when b is all zero). */
export function relErr(a: Num, b: Num): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] * b[i];
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** The worst element: max |a−b| / (|b| + floor), with its index. */
export function worstElement(a: Num, b: Num, floor: number): { index: number; got: number; want: number; ratio: number } {
  let worst = { index: -1, got: 0, want: 0, ratio: 0 };
  for (let i = 0; i < a.length; i++) {
    const r = Math.abs(a[i] - b[i]) / (Math.abs(b[i]) + floor);
    if (r > worst.ratio || worst.index < 0) worst = { index: i, got: a[i], want: b[i], ratio: r };
  }
  return worst;
}
