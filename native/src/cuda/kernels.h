// The CUDA kernels of the draft step, each a launcher over device pointers on a stream (a
// cudaStream_t passed as void*, so this header needs no CUDA headers). Each kernel's arithmetic
// is the body of the same name in cuda/bodies.h; reductions over a row are one block per row.
// Matrix products are not here: they go through cuBLAS (cuda/libs.h, cuda/gemm_map.h).
// Every launcher returns "" or the CUDA error's name and message.
#pragma once
#include <cstdint>
#include <string>

#include "cuda/bodies.h"

namespace dw::cuda {

using Stream = void*;

// y[r] = RMSNorm(x[r]; w), rstd[r] kept (rows of H, contiguous).
std::string rmsnorm_forward(Stream s, int64_t rows, int64_t H, const float* x, const float* w, double eps, float* y, float* rstd);
// dx[r] = ∂/∂x; dw += Σ_r dy ⊙ x·rstd (rows summed in order by one thread per column: deterministic).
std::string rmsnorm_backward(Stream s, int64_t rows, int64_t H, const float* x, const float* w, const float* rstd,
                             const float* dy, float* dx, float* dw);
// In place on rows of `nheads` heads of d (row stride ld); cos/sin tables [max_pos, d/2].
std::string rope_apply(Stream s, int64_t rows, const int32_t* pos, float* x, int64_t ld, int64_t nheads, int64_t d,
                       const float* cos, const float* sin, bool inverse);
// gu rows [g (I) | u (I)] → act [rows, I]; the backward pass writes dgu.
std::string swiglu_forward(Stream s, int64_t rows, int64_t I, const float* gu, float* act);
std::string swiglu_backward(Stream s, int64_t rows, int64_t I, const float* gu, const float* dact, float* dgu);
std::string bf16_to_f32(Stream s, const uint16_t* src, float* dst, int64_t n);
std::string f32_to_bf16(Stream s, const float* src, uint16_t* dst, int64_t n);
// out[r] = E[tok[r]] (rows of H).
std::string embed_gather(Stream s, const int32_t* tok, int64_t rows, const float* E, int64_t H, float* out);
// *acc += Σ g² (double, atomics: the order, and so the last bits, vary run to run).
std::string sum_squares(Stream s, int64_t n, const float* g, double* acc);
std::string adamw_update(Stream s, int64_t n, float* w, const float* g, float* m, float* v, const AdamWStep& st);
// Rows of target logits z [n, V] → tgt[r] = t2d[argmax z[r]] and p[r] = softmax(z[r][d2t]) [n, Vd].
std::string target_distribution(Stream s, int64_t n, const float* z, int64_t V, const int32_t* d2t,
                                const int32_t* t2d, int64_t Vd, float* p, int32_t* tgt);
// Soft cross-entropy over rows of logits [n, Vd] (kernels/loss.h); logits become the gradient
// when grad_scale != 0.
std::string soft_cross_entropy(Stream s, int64_t n, int64_t Vd, float* logits, const float* p, const int32_t* prow,
                               const float* w, const int32_t* tgt, float grad_scale, double* ce, double* hit);
// Rows of scaled scores S [Tq, ld] (query row i sees columns [0, q0+i]) and the extras' scaled
// scores E [Tq, nextra]: both become probabilities in place, lse[i] written; masked columns 0.
std::string attention_softmax(Stream s, int64_t Tq, int64_t q0, float* S, int64_t ld, float* E, int64_t nextra, float* lse);
// dS = P ⊙ (dP − δ)·scale in place of dP, rows as above; δ[i] = dout[i]·out[i] given.
std::string attention_dscores(Stream s, int64_t Tq, int64_t q0, const float* P, float* dP, int64_t ld,
                              const float* delta, float scale);

// y += alpha·x.
std::string axpy(Stream s, int64_t n, float alpha, const float* x, float* y);
// The rows of TTT step k of a batch [B, T] (step_row); lengths may be null.
std::string step_rows(Stream s, int64_t B, int64_t T, int64_t k, const int32_t* ids, const uint8_t* mask,
                      const int32_t* lengths, const int32_t* tgt, int32_t* tok, int32_t* pos, int32_t* prow,
                      int32_t* ltgt, float* w, float* lsc);
// The TTT extras (step/step_ops.h): x_j = x + j·xstride, rows of d with stride ld, i < n, j < ne.
// out[i·ne + j] = alpha·(a_i · x_j[i]); one warp per (i, j).
std::string row_dots(Stream s, int64_t n, int64_t ne, int64_t d, float alpha, const float* a, int64_t lda, const float* x,
                     int64_t ldx, int64_t xstride, float* out);
// y_i += Σ_j c[i·ne + j]·x_j[i] (a thread per element of y, the extras summed in order).
std::string rows_combine(Stream s, int64_t n, int64_t ne, int64_t d, const float* c, const float* x, int64_t ldx,
                         int64_t xstride, float* y, int64_t ldy);
// x_j[i] += c[i·ne + j]·a_i (a thread per element of every x_j).
std::string rows_spread(Stream s, int64_t n, int64_t ne, int64_t d, const float* c, const float* a, int64_t lda, float* x,
                        int64_t ldx, int64_t xstride);

}  // namespace dw::cuda
