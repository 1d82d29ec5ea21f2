// The per-element and per-row arithmetic of every CUDA kernel of the draft step
// (docs/model-math.md), written once for both sides (DW_HD): the .cu kernels call these inside
// their thread/block loops, and cuda/host_check.cc runs them on the CPU against the CPU step's
// layer functions (kernels/*.h). Reductions (row sums, maxima, argmax) are the kernels' own
// business; what they combine is here, in the same order of operations as the CPU kernels.
#pragma once
#include <math.h>

#include "cuda/hd.h"

namespace dw::cuda {

// ---- RMSNorm: y = w ⊙ x·rstd, rstd = 1/√(mean(x²) + ε) ----------------------------------
DW_HD float rmsnorm_rstd(double sumsq, int64_t H, double eps) { return float(1.0 / ::sqrt(sumsq / double(H) + eps)); }
DW_HD float rmsnorm_fwd(float x, float w, float rstd) { return w * (x * rstd); }
// dx_j = r·w_j·dy_j − c·x_j with c = r³·(Σ_i w_i·dy_i·x_i)/H; dw_j += dy_j·x_j·r.
DW_HD float rmsnorm_bwd_coef(float sum_wdyx, float rstd, int64_t H) { return sum_wdyx * rstd * rstd * rstd / float(H); }
DW_HD float rmsnorm_bwd_dx(float x, float w, float dy, float rstd, float c) { return rstd * (w * dy) - c * x; }
DW_HD float rmsnorm_bwd_dw(float x, float dy, float rstd) { return dy * x * rstd; }

// ---- RoPE (rotate-half): the pair (a, b) = (x[i], x[i+d/2]) at angle ±pos·f_i -------------
DW_HD void rope_pair(float a, float b, float c, float s, bool inverse, float* ra, float* rb) {
  const float sn = inverse ? -s : s;
  *ra = a * c - b * sn;
  *rb = b * c + a * sn;
}

// ---- SwiGLU: act = silu(g)·u ---------------------------------------------------------------
DW_HD float sigmoid(float x) { return 1.0f / (1.0f + ::expf(-x)); }
DW_HD float swiglu_fwd(float g, float u) { return g * sigmoid(g) * u; }
DW_HD void swiglu_bwd(float g, float u, float da, float* dg, float* du) {
  const float sg = sigmoid(g);
  *du = da * g * sg;
  *dg = da * u * sg * (1.0f + g * (1.0f - sg));
}

// ---- bf16 <-> f32 (the features arrive as bf16; bf16 activations are an option) ---------------
DW_HD float bf16_to_f32(uint16_t b) { return bits_f32(uint32_t(b) << 16); }
// Round to nearest even; a NaN stays a NaN (its top half, quieted).
DW_HD uint16_t f32_to_bf16(float f) {
  const uint32_t x = f32_bits(f);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  return uint16_t((x & 0x7fffffffu) > 0x7f800000u ? ((x >> 16) | 0x40u) : rounded);
}

// ---- AdamW with bias correction and the clip coefficient folded into the gradient -----------
struct AdamWStep {
  float lr, b1, b2, eps, wd, inv_bc1, inv_bc2, clip;
};
// The constants of update t (1-based), computed once per step on the host.
inline AdamWStep adamw_step(double lr, double beta1, double beta2, double eps, double wd, int64_t t, float clip) {
  const double bc1 = 1.0 - ::pow(beta1, double(t)), bc2 = 1.0 - ::pow(beta2, double(t));
  return {float(lr), float(beta1), float(beta2), float(eps), float(wd), float(1.0 / bc1), float(1.0 / bc2), clip};
}
DW_HD void adamw_elem(float* w, float g, float* m, float* v, const AdamWStep& s) {
  const float gi = g * s.clip;
  *m = s.b1 * *m + (1.0f - s.b1) * gi;
  *v = s.b2 * *v + (1.0f - s.b2) * gi * gi;
  const float mh = *m * s.inv_bc1, vh = *v * s.inv_bc2;
  *w -= s.lr * (mh / (::sqrtf(vh) + s.eps) + s.wd * *w);
}
// Global-norm clipping: the factor every gradient is multiplied by (1 when clip <= 0).
DW_HD float clip_coef(double grad_norm, double clip) { return clip > 0 ? float(fmin(1.0, clip / (grad_norm + 1e-6))) : 1.0f; }

// ---- argmax (lowest index among equal maxima; NaN never wins) --------------------------------
DW_HD bool argmax_better(float v, int64_t i, float best, int64_t best_i) { return v > best || (v == best && best_i >= 0 && i < best_i) || (best_i < 0 && v == v); }

// ---- softmax over the draft vocabulary, and the soft cross-entropy ---------------------------
// p_j = e^(z_j − m) / s with m the row maximum and s = Σ e^(z − m).
DW_HD float softmax_term(float z, float m) { return ::expf(z - m); }
// ce = w·(lse·Σp − Σ p·z), lse = m + log s.
DW_HD double soft_ce(float m, double s, double sum_p, double sum_pz, float w) { return double(w) * ((double(m) + ::log(s)) * sum_p - sum_pz); }
// ∂(scale·ce)/∂z_j = scale·w·(softmax_j·Σp − p_j).
DW_HD float soft_ce_grad(float z, float m, float s, float sum_p, float p, float w, float scale) {
  return (scale * w * sum_p / s) * softmax_term(z, m) - (scale * w) * p;
}

// ---- attention with the TTT mask (kernels/attention.h) ---------------------------------------
// Query row i (position q0+i) sees the shared keys at positions ≤ q0+i and its own extras.
DW_HD bool attn_visible(int64_t key_pos, int64_t query_pos) { return key_pos <= query_pos; }
// a = e^(scale·q·k − lse); dscore = a·(dp − δ)·scale with δ = Σ a·dp = dout·out.
DW_HD float attn_prob(float qk, float scale, float lse) { return ::expf(scale * qk - lse); }
DW_HD float attn_dscore(float a, float dp, float delta, float scale) { return a * (dp - delta) * scale; }

// ---- the rows of TTT step k (model/draft_model.cc prepare_step_rows, every row kept) --------
// Row r = (b, t) of a batch [B, T]: u = t+1+k; inside the sample (u < len) its token is ids[u],
// its target row (b, u) with target draft id tgt[(b, u)] (−1: not in the draft vocabulary) and
// weight mask[(b, u)]·[tgt ≥ 0]·T/len; outside, token 0 and weight 0. lengths null: len = T.
struct StepRow {
  int32_t tok, pos, prow, tgt;
  float w, lsc;
};
DW_HD StepRow step_row(int64_t r, int64_t T, int64_t k, const int32_t* ids, const uint8_t* mask, const int32_t* lengths,
                       const int32_t* tgt) {
  const int64_t b = r / T, t = r % T, len = lengths ? lengths[b] : T, u = t + 1 + k, ur = b * T + u;
  const bool in = u < len;
  const float lsc = lengths ? float(double(T) / double(len)) : 1.0f;
  const int32_t tg = in ? tgt[ur] : -1;
  const float w = (in && mask[ur] && tg >= 0) ? 1.0f : 0.0f;
  return {in ? ids[ur] : 0, int32_t(t), int32_t(in ? ur : r), tg, w * lsc, lsc};
}

// ---- the TTT extras of attention: the k same-position keys of a query row ------------------
// Extra j of row i lives at base + j·stride + i·ld (the steps' q|k|v buffers are one array).
DW_HD float row_dot(const float* a, const float* b, int64_t d) {
  float s = 0;
  for (int64_t c = 0; c < d; c++) s += a[c] * b[c];
  return s;
}

}  // namespace dw::cuda
