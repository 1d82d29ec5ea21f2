// The draft model's layer, one plain function per piece and direction (llm.c style): fc, the
// layer input (embedding and hidden norms, q|k|v, RoPE), attention over the TTT steps, the
// layer output (o, post norm, SwiGLU MLP) and the lm head, then each one's backward. The step
// that strings them together is in draft_model.cc.
#include "model/draft_model.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "collectives/comm.h"
#include "kernels/blas.h"
#include "kernels/parallel.h"
#include "kernels/rmsnorm.h"
#include "kernels/swiglu.h"
#include "kernels/vec.h"

namespace dw {

// ---------------------------------------------------------------------------------------------
// Forward

// fc: hin of step 0 = aux·fcᵀ, [n, 3H] → [n, H].
void DraftModel::fc_forward(const float* aux, int64_t n, float* out) const {
  const int64_t H = cfg.hidden;
  gemm_nt(n, H, 3 * H, 1.0f, aux, 3 * H, W(kFc), 3 * H, 0.0f, out, H);
}

void DraftModel::embed_rows(const int32_t* tok, int64_t rows, float* out) const {
  const int64_t H = cfg.hidden;
  for (int64_t r = 0; r < rows; r++) std::copy_n(embed.data() + int64_t(tok[r]) * H, H, out + r * H);
}

// x = [RMSNorm(E[tok]; n_in) | RMSNorm(hin; n_hid)]; qkv = x·[q;k;v]ᵀ (this rank's heads);
// RoPE on q and k.
void DraftModel::layer_input_forward(LayerActs& a, float* emb) {
  const int64_t n = a.rows, H = cfg.hidden, D = dims.D(), d = dims.d;
  embed_rows(a.tok.data(), n, emb);
  rmsnorm_forward(n, H, emb, H, W(kNIn), cfg.rms_eps, a.x.data(), 2 * H, a.rstd_e.data());
  rmsnorm_forward(n, H, a.hin, H, W(kNHid), cfg.rms_eps, a.x.data() + H, 2 * H, a.rstd_h.data());
  gemm_nt(n, D, 2 * H, 1.0f, a.x.data(), 2 * H, W(kQ), 2 * H, 0.0f, a.qkv.data(), D);
  rope_apply(n, a.pos.data(), a.qkv.data(), D, dims.nh, d, rope_, false);
  rope_apply(n, a.pos.data(), a.qkv.data() + dims.qd(), D, dims.nkv, d, rope_, false);
}

// SP: every position's step-0 k|v (after RoPE) of this rank's kv heads, from the whole SP
// group, into ws_.kv0 [B, Tg, 2·kvd].
void DraftModel::gather_step0_kv() {
  const int64_t B = ws_.B, T = ws_.T, N = B * T, Tg = ws_.Tg, D = dims.D(), qd = dims.qd();
  const int64_t kv2 = 2 * dims.kvd(), S = shard_layout.sp;
  const float* q0 = ws_.steps[0].qkv.data();
  for (int64_t r = 0; r < N; r++) std::copy_n(q0 + r * D + qd, kv2, ws_.kvl.data() + r * kv2);
  spc()->allGather(ws_.kvl.data(), ws_.kvx.data(), size_t(N * kv2));
  for (int64_t s = 0; s < S; s++)
    for (int64_t b = 0; b < B; b++)
      std::copy_n(ws_.kvx.data() + ((s * B + b) * T) * kv2, T * kv2, ws_.kv0.data() + (b * Tg + s * T) * kv2);
}

// SP: the gradients of the gathered step-0 k|v, summed over the SP group, back to the ranks
// that own the positions (into dqkv[0], whose k|v part has no other source).
void DraftModel::scatter_step0_dkv() {
  const int64_t B = ws_.B, T = ws_.T, N = B * T, Tg = ws_.Tg, D = dims.D(), qd = dims.qd();
  const int64_t kv2 = 2 * dims.kvd(), S = shard_layout.sp;
  for (int64_t s = 0; s < S; s++)
    for (int64_t b = 0; b < B; b++)
      std::copy_n(ws_.dkv0.data() + (b * Tg + s * T) * kv2, T * kv2, ws_.kvx.data() + ((s * B + b) * T) * kv2);
  spc()->reduceScatter(ws_.kvx.data(), ws_.kvl.data(), size_t(N * kv2));
  float* dq0 = ws_.dqkv[0].data();
  for (int64_t r = 0; r < N; r++) vaxpy(dq0 + r * D + qd, 1.0f, ws_.kvl.data() + r * kv2, kv2);
}

// Runs fn(task, scratch) for task in [0, n) on the pool, each task with its own scratch and
// single-threaded GEMMs (many small per-head products parallelise better this way).
void DraftModel::for_each_task(int64_t n, const std::function<void(int64_t, AttnScratch&)>& fn) {
  if (int64_t(attn_scratch_.size()) < n) attn_scratch_.resize(size_t(n));
  with_serial_blas([&] { parallel_chunks(n, [&](int64_t t) { fn(t, attn_scratch_[size_t(t)]); }); });
}

namespace {
// Where the step-0 keys/values a query attends to live: in step 0's qkv rows (positions of
// this rank only), or in the SP-gathered buffer (every position).
struct SharedKV {
  const float* base;  // k of (sample 0, kv head 0, position 0); v at + kvd
  float* dbase;       // its gradient
  int64_t ld, sample_stride, kvd;
};

// Query head h (kv head c) of sample b at step k, with the step-1..k keys/values `ek`/`ev`
// at the same positions: the view both attention passes hand to the kernels.
AttnHead head_view(LayerActs& a, const SharedKV& kv, const float* const* ek, const float* const* ev,
                   int64_t b, int64_t c, int64_t h, int64_t T, int64_t D, int64_t d, int64_t qd, int64_t nh) {
  const int64_t row0 = b * T;
  AttnHead hd;
  hd.q = a.qkv.data() + row0 * D + h * d;
  hd.ldq = D;
  hd.k = kv.base + b * kv.sample_stride + c * d;
  hd.ldk = kv.ld;
  hd.v = kv.base + b * kv.sample_stride + kv.kvd + c * d;
  hd.ldv = kv.ld;
  hd.ek = ek;
  hd.ev = ev;
  hd.lde = D;
  hd.o = a.attn.data() + row0 * qd + h * d;
  hd.ldo = qd;
  hd.lse = a.lse.data() + (b * nh + h) * T;
  return hd;
}
}  // namespace

// Step-k queries against step-0 keys (causal) and the step-1..k keys at the same position.
// One task per (sample, kv head) runs its query heads in turn, so the task owns every
// gradient row it accumulates into (see attention_backward_train).
void DraftModel::attention_forward_train(int64_t k) {
  const int64_t B = ws_.B, T = ws_.T, D = dims.D(), d = dims.d, nh = dims.nh;
  const int64_t nkv = dims.nkv, g = nh / nkv, qd = dims.qd(), kvd = dims.kvd();
  LayerActs& a = ws_.steps[size_t(k)];
  const SharedKV kv = spc() ? SharedKV{ws_.kv0.data(), nullptr, 2 * kvd, ws_.Tg * 2 * kvd, kvd}
                            : SharedKV{ws_.steps[0].qkv.data() + qd, nullptr, D, T * D, kvd};
  AttnShape sh;
  sh.Tq = T;
  sh.q0 = ws_.t0;
  sh.d = d;
  sh.nextra = k;
  sh.scale = float(1.0 / std::sqrt(double(d)));
  for_each_task(B * nkv, [&](int64_t task, AttnScratch& scratch) {
    const int64_t b = task / nkv, c = task % nkv, row0 = b * T;
    std::vector<const float*> ek(static_cast<size_t>(k)), ev(static_cast<size_t>(k));
    for (int64_t j = 1; j <= k; j++) {
      const float* bj = ws_.steps[size_t(j)].qkv.data() + row0 * D;
      ek[size_t(j - 1)] = bj + qd + c * d;
      ev[size_t(j - 1)] = bj + qd + kvd + c * d;
    }
    for (int64_t h = c * g; h < (c + 1) * g; h++) {
      AttnHead hd = head_view(a, kv, ek.data(), ev.data(), b, c, h, T, D, d, qd, nh);
      attention_forward(sh, hd, scratch);
    }
  });
}

// h1 = hin + attn·oᵀ; uu = RMSNorm(h1; n_post); h2 = h1 + (silu(uu·gateᵀ) ⊙ uu·upᵀ)·downᵀ.
// TP: o and down are row-parallel, so attn·oᵀ and act·downᵀ are partial sums over the TP
// group (this rank's heads / MLP columns), all-reduced before they are added.
void DraftModel::layer_output_forward(LayerActs& a) {
  const int64_t n = a.rows, H = cfg.hidden, I = dims.I, qd = dims.qd();
  Comm* tp = tpc();
  if (!tp) {
    std::copy_n(a.hin, n * H, a.h1.data());
    gemm_nt(n, H, qd, 1.0f, a.attn.data(), qd, W(kO), qd, 1.0f, a.h1.data(), H);
  } else {
    float* part = ws_.part.data();
    gemm_nt(n, H, qd, 1.0f, a.attn.data(), qd, W(kO), qd, 0.0f, part, H);
    tp->allReduce(part, size_t(n * H), ReduceOp::Sum);
    for (int64_t i = 0; i < n * H; i++) a.h1[size_t(i)] = a.hin[i] + part[i];
  }
  rmsnorm_forward(n, H, a.h1.data(), H, W(kNPost), cfg.rms_eps, a.uu.data(), H, a.rstd_post.data());
  gemm_nt(n, 2 * I, H, 1.0f, a.uu.data(), H, W(kGate), H, 0.0f, a.gu.data(), 2 * I);
  swiglu_forward(n, I, a.gu.data(), 2 * I, a.act.data(), I);
  if (!tp) {
    std::copy_n(a.h1.data(), n * H, a.h2.data());
    gemm_nt(n, H, I, 1.0f, a.act.data(), I, W(kDown), I, 1.0f, a.h2.data(), H);
  } else {
    float* part = ws_.part.data();
    gemm_nt(n, H, I, 1.0f, a.act.data(), I, W(kDown), I, 0.0f, part, H);
    tp->allReduce(part, size_t(n * H), ReduceOp::Sum);
    for (int64_t i = 0; i < n * H; i++) a.h2[size_t(i)] = a.h1[size_t(i)] + part[i];
  }
}

// logits = RMSNorm(h2; n_final)·lmᵀ for the loss rows only (a.lrow); TP: this rank's columns.
void DraftModel::head_forward(LayerActs& a, float* scratch) {
  const int64_t nl = int64_t(a.lrow.size()), H = cfg.hidden, Vd = dims.Vd;
  if (nl == 0) return;
  for (int64_t i = 0; i < nl; i++) std::copy_n(a.h2.data() + int64_t(a.lrow[size_t(i)]) * H, H, scratch + i * H);
  rmsnorm_forward(nl, H, scratch, H, W(kNFinal), cfg.rms_eps, a.hf.data(), H, a.rstd_f.data());
  gemm_nt(nl, Vd, H, 1.0f, a.hf.data(), H, W(kLm), H, 0.0f, a.logits.data(), Vd);
}

// ---------------------------------------------------------------------------------------------
// Backward (gradients accumulate into `grads`)

// From dlogits (in a.logits) to dh2 (accumulated), dlm, dn_final. TP: lm is column-parallel
// (vocabulary rows), so d hf is a partial sum, all-reduced.
void DraftModel::head_backward(LayerActs& a, float* dh2) {
  const int64_t nl = int64_t(a.lrow.size()), H = cfg.hidden, Vd = dims.Vd;
  if (nl == 0) return;
  float* h2g = ws_.scr.data();   // gathered h2 rows
  float* dhf = ws_.scr2.data();  // d hf, then d h2 rows
  gemm_tn(Vd, H, nl, 1.0f, a.logits.data(), Vd, a.hf.data(), H, 1.0f, G(kLm), H);
  gemm_nn(nl, H, Vd, 1.0f, a.logits.data(), Vd, W(kLm), H, 0.0f, dhf, H);
  if (tpc()) tpc()->allReduce(dhf, size_t(nl * H), ReduceOp::Sum);
  for (int64_t i = 0; i < nl; i++) std::copy_n(a.h2.data() + int64_t(a.lrow[size_t(i)]) * H, H, h2g + i * H);
  rmsnorm_backward(nl, H, h2g, H, W(kNFinal), a.rstd_f.data(), dhf, H, h2g, H, false, G(kNFinal));
  for (int64_t i = 0; i < nl; i++) vaxpy(dh2 + int64_t(a.lrow[size_t(i)]) * H, 1.0f, h2g + i * H, H);
}

// From dh2 to dh1 (= dh2 + the MLP and n_post paths), and to the attention output (ws_.dattn).
// TP: d uu through gate|up (column-parallel) is a partial sum, all-reduced.
void DraftModel::layer_output_backward(LayerActs& a, const float* dh2, float* dh1) {
  const int64_t n = a.rows, H = cfg.hidden, I = dims.I, qd = dims.qd();
  float* dact = ws_.dact.data();
  float* dgu = ws_.dgu.data();
  float* duu = ws_.duu.data();
  gemm_nn(n, I, H, 1.0f, dh2, H, W(kDown), I, 0.0f, dact, I);
  gemm_tn(H, I, n, 1.0f, dh2, H, a.act.data(), I, 1.0f, G(kDown), I);
  swiglu_backward(n, I, a.gu.data(), 2 * I, dact, I, dgu, 2 * I);
  gemm_tn(2 * I, H, n, 1.0f, dgu, 2 * I, a.uu.data(), H, 1.0f, G(kGate), H);
  gemm_nn(n, H, 2 * I, 1.0f, dgu, 2 * I, W(kGate), H, 0.0f, duu, H);
  if (tpc()) tpc()->allReduce(duu, size_t(n * H), ReduceOp::Sum);
  std::copy_n(dh2, n * H, dh1);
  rmsnorm_backward(n, H, a.h1.data(), H, W(kNPost), a.rstd_post.data(), duu, H, dh1, H, true, G(kNPost));
  gemm_tn(H, qd, n, 1.0f, dh1, H, a.attn.data(), qd, 1.0f, G(kO), qd);
  gemm_nn(n, qd, H, 1.0f, dh1, H, W(kO), qd, 0.0f, ws_.dattn.data(), qd);
}

// Step-k attention backward: dq of step k (written), dk/dv of step 0 (into dqkv[0], or the
// SP-gathered ws_.dkv0) and of steps 1..k at the same position (accumulated). Uses ws_.dattn
// as the output gradient. A task owns one (sample, kv head): all the dk/dv rows it
// accumulates into belong to it alone.
void DraftModel::attention_backward_train(int64_t k) {
  const int64_t B = ws_.B, T = ws_.T, D = dims.D(), d = dims.d, nh = dims.nh;
  const int64_t nkv = dims.nkv, g = nh / nkv, qd = dims.qd(), kvd = dims.kvd();
  LayerActs& a = ws_.steps[size_t(k)];
  const SharedKV kv = spc() ? SharedKV{ws_.kv0.data(), ws_.dkv0.data(), 2 * kvd, ws_.Tg * 2 * kvd, kvd}
                            : SharedKV{ws_.steps[0].qkv.data() + qd, ws_.dqkv[0].data() + qd, D, T * D, kvd};
  float* dbasek = ws_.dqkv[size_t(k)].data();
  AttnShape sh;
  sh.Tq = T;
  sh.q0 = ws_.t0;
  sh.d = d;
  sh.nextra = k;
  sh.scale = float(1.0 / std::sqrt(double(d)));
  for_each_task(B * nkv, [&](int64_t task, AttnScratch& scratch) {
    const int64_t b = task / nkv, c = task % nkv, row0 = b * T;
    std::vector<const float*> ek(static_cast<size_t>(k)), ev(static_cast<size_t>(k));
    std::vector<float*> dek(static_cast<size_t>(k)), dev(static_cast<size_t>(k));
    for (int64_t j = 1; j <= k; j++) {
      const float* bj = ws_.steps[size_t(j)].qkv.data() + row0 * D;
      float* dbj = ws_.dqkv[size_t(j)].data() + row0 * D;
      ek[size_t(j - 1)] = bj + qd + c * d;
      ev[size_t(j - 1)] = bj + qd + kvd + c * d;
      dek[size_t(j - 1)] = dbj + qd + c * d;
      dev[size_t(j - 1)] = dbj + qd + kvd + c * d;
    }
    for (int64_t h = c * g; h < (c + 1) * g; h++) {
      AttnHead hd = head_view(a, kv, ek.data(), ev.data(), b, c, h, T, D, d, qd, nh);
      AttnGrad gr;
      gr.dout = ws_.dattn.data() + row0 * qd + h * d;
      gr.lddo = qd;
      gr.dq = dbasek + row0 * D + h * d;
      gr.lddq = D;
      gr.dk = kv.dbase + b * kv.sample_stride + c * d;
      gr.lddk = kv.ld;
      gr.dv = kv.dbase + b * kv.sample_stride + kvd + c * d;
      gr.lddv = kv.ld;
      gr.dek = dek.data();
      gr.dev = dev.data();
      gr.ldde = D;
      attention_backward(sh, hd, gr, scratch);
    }
  });
}

// From the complete dqkv of this step (after RoPE) to dq/dk/dv weights, dn_in, dn_hid and
// dhin (accumulated). TP: dx through q|k|v (column-parallel) is a partial sum, all-reduced.
void DraftModel::layer_input_backward(LayerActs& a, float* dqkv, float* dhin) {
  const int64_t n = a.rows, H = cfg.hidden, D = dims.D(), d = dims.d;
  rope_apply(n, a.pos.data(), dqkv, D, dims.nh, d, rope_, true);
  rope_apply(n, a.pos.data(), dqkv + dims.qd(), D, dims.nkv, d, rope_, true);
  float* dx = ws_.dx.data();
  gemm_tn(D, 2 * H, n, 1.0f, dqkv, D, a.x.data(), 2 * H, 1.0f, G(kQ), 2 * H);
  gemm_nn(n, 2 * H, D, 1.0f, dqkv, D, W(kQ), 2 * H, 0.0f, dx, 2 * H);
  if (tpc()) tpc()->allReduce(dx, size_t(n * 2 * H), ReduceOp::Sum);
  rmsnorm_backward(n, H, a.hin, H, W(kNHid), a.rstd_h.data(), dx + H, 2 * H, dhin, H, true, G(kNHid));
  float* emb = ws_.scr.data();
  embed_rows(a.tok.data(), n, emb);  // the embedding gradient itself is not needed (E is frozen)
  rmsnorm_backward(n, H, emb, H, W(kNIn), a.rstd_e.data(), dx, 2 * H, ws_.scr2.data(), H, false, G(kNIn));
}

// dfc += dhinᵀ·aux (the gradient of fc's input is not needed: aux is data).
void DraftModel::fc_backward(const float* aux, int64_t n, const float* dhin) {
  const int64_t H = cfg.hidden;
  gemm_tn(H, 3 * H, n, 1.0f, dhin, H, aux, 3 * H, 1.0f, G(kFc), 3 * H);
}

}  // namespace dw
