#include "step/host_ops.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "kernels/adamw.h"
#include "kernels/blas.h"
#include "kernels/loss.h"
#include "kernels/rmsnorm.h"
#include "kernels/swiglu.h"
#include "kernels/vec.h"

namespace dw::step {

void* HostOps::alloc_bytes(size_t bytes) {
  std::unique_ptr<double[]> b(new double[(bytes + 7) / 8]());
  void* p = b.get();
  blocks_.emplace(p, std::move(b));
  return p;
}
void HostOps::free_bytes(void* p) { blocks_.erase(p); }
void HostOps::upload(void* dst, const void* src, size_t bytes) { if (bytes) std::memcpy(dst, src, bytes); }
void HostOps::download(void* dst, const void* src, size_t bytes) { if (bytes) std::memcpy(dst, src, bytes); }
void HostOps::zero(void* p, size_t bytes) { if (bytes) std::memset(p, 0, bytes); }
void HostOps::copy(void* dst, const void* src, size_t bytes) { if (bytes) std::memmove(dst, src, bytes); }

void HostOps::gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (ta && tb) throw std::logic_error("HostOps::gemm: op(A)ᵀ·op(B)ᵀ is not a product of the step");
  if (M == 0 || N == 0) return;
  if (bf16_matmul) {  // the operands rounded as the device rounds them (cuda::f32_to_bf16)
    auto rounded = [](const float* X, int64_t rows, int64_t cols, int64_t ld, std::vector<float>& out) {
      out.assign(size_t((rows - 1) * ld + cols), 0.0f);
      for (size_t i = 0; i < out.size(); i++) out[i] = cuda::bf16_to_f32(cuda::f32_to_bf16(X[i]));
      return out.data();
    };
    A = rounded(A, ta ? K : M, ta ? M : K, lda, a16_);
    B = rounded(B, tb ? N : K, tb ? K : N, ldb, b16_);
  }
  if (ta) gemm_tn(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else if (tb) gemm_nt(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else gemm_nn(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void HostOps::axpy(int64_t n, float alpha, const float* x, float* y) { vaxpy(y, alpha, x, n); }

void HostOps::embed_gather(const int32_t* tok, int64_t rows, const float* E, int64_t H, float* out) {
  for (int64_t r = 0; r < rows; r++) std::copy_n(E + int64_t(tok[r]) * H, H, out + r * H);
}

void HostOps::rmsnorm_forward(int64_t rows, int64_t H, const float* x, const float* w, double eps, float* y, float* rstd) {
  dw::rmsnorm_forward(rows, H, x, H, w, eps, y, H, rstd);
}
void HostOps::rmsnorm_backward(int64_t rows, int64_t H, const float* x, const float* w, const float* rstd, const float* dy,
                               float* dx, float* dw) {
  dw::rmsnorm_backward(rows, H, x, H, w, rstd, dy, H, dx, H, false, dw);
}

void HostOps::rope(int64_t rows, const int32_t* pos, float* x, int64_t ld, int64_t nheads, int64_t d, const float* cos,
                   const float* sin, bool inverse) {
  const int64_t half = d / 2;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t h = 0; h < nheads; h++)
      for (int64_t i = 0; i < half; i++) {
        float* a = x + r * ld + h * d + i;
        const int64_t c = int64_t(pos[r]) * half + i;
        cuda::rope_pair(a[0], a[half], cos[c], sin[c], inverse, a, a + half);
      }
}

void HostOps::swiglu_forward(int64_t rows, int64_t I, const float* gu, float* act) {
  dw::swiglu_forward(rows, I, gu, 2 * I, act, I);
}
void HostOps::swiglu_backward(int64_t rows, int64_t I, const float* gu, const float* dact, float* dgu) {
  dw::swiglu_backward(rows, I, gu, 2 * I, dact, I, dgu, 2 * I);
}

// The CPU target distribution (kernels/loss.cc) from logits already computed.
void HostOps::target_distribution(int64_t n, const float* z, int64_t V, const int32_t* d2t, const int32_t* t2d,
                                  int64_t Vd, float* p, int32_t* tgt) {
  for (int64_t r = 0; r < n; r++) tgt[r] = target_row(z + r * V, V, d2t, t2d, Vd, p + r * Vd);
}

void HostOps::step_rows(int64_t B, int64_t T, int64_t k, const int32_t* ids, const uint8_t* mask, const int32_t* lengths,
                        const int32_t* tgt, int32_t* tok, int32_t* pos, int32_t* prow, int32_t* ltgt, float* w,
                        float* lsc) {
  for (int64_t r = 0; r < B * T; r++) {
    const cuda::StepRow s = cuda::step_row(r, T, k, ids, mask, lengths, tgt);
    tok[r] = s.tok; pos[r] = s.pos; prow[r] = s.prow; ltgt[r] = s.tgt; w[r] = s.w; lsc[r] = s.lsc;
  }
}

void HostOps::soft_cross_entropy(int64_t n, int64_t Vd, float* logits, const float* p, const int32_t* prow, const float* w,
                                 const int32_t* tgt, float grad_scale, double* ce, double* hit) {
  dw::soft_cross_entropy(n, Vd, logits, p, prow, w, tgt, grad_scale, ce, hit);
}

// The CUDA kernel's arithmetic (kernels.cu k_attn_softmax), with the row reductions in order.
void HostOps::attention_softmax(int64_t Tq, int64_t q0, float* S, int64_t ld, float* E, int64_t ne, float* lse) {
  for (int64_t i = 0; i < Tq; i++) {
    float* sr = S + i * ld;
    float* er = E + i * ne;
    const int64_t qp = q0 + i;
    float m = -3.4028234663852886e38f, s = 0;
    for (int64_t j = 0; j < ld; j++) if (cuda::attn_visible(j, qp)) m = std::max(m, sr[j]);
    for (int64_t j = 0; j < ne; j++) m = std::max(m, er[j]);
    for (int64_t j = 0; j < ld; j++) if (cuda::attn_visible(j, qp)) s += cuda::softmax_term(sr[j], m);
    for (int64_t j = 0; j < ne; j++) s += cuda::softmax_term(er[j], m);
    const float l = m + std::log(s);
    lse[i] = l;
    for (int64_t j = 0; j < ld; j++) sr[j] = cuda::attn_visible(j, qp) ? cuda::attn_prob(sr[j], 1.0f, l) : 0.0f;
    for (int64_t j = 0; j < ne; j++) er[j] = cuda::attn_prob(er[j], 1.0f, l);
  }
}

void HostOps::attention_dscores(int64_t Tq, int64_t q0, const float* P, float* dP, int64_t ld, const float* delta,
                                float scale) {
  for (int64_t i = 0; i < Tq; i++)
    for (int64_t j = 0; j < ld; j++)
      dP[i * ld + j] = cuda::attn_visible(j, q0 + i) ? cuda::attn_dscore(P[i * ld + j], dP[i * ld + j], delta[i], scale) : 0.0f;
}

void HostOps::row_dots(int64_t n, int64_t ne, int64_t d, float alpha, const float* a, int64_t lda, const float* x,
                       int64_t ldx, int64_t xstride, float* out) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < ne; j++) out[i * ne + j] = alpha * cuda::row_dot(a + i * lda, x + j * xstride + i * ldx, d);
}

void HostOps::rows_combine(int64_t n, int64_t ne, int64_t d, const float* c, const float* x, int64_t ldx, int64_t xstride,
                           float* y, int64_t ldy) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < ne; j++) vaxpy(y + i * ldy, c[i * ne + j], x + j * xstride + i * ldx, d);
}

void HostOps::rows_spread(int64_t n, int64_t ne, int64_t d, const float* c, const float* a, int64_t lda, float* x,
                          int64_t ldx, int64_t xstride) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < ne; j++) vaxpy(x + j * xstride + i * ldx, c[i * ne + j], a + i * lda, d);
}

void HostOps::sum_squares(int64_t n, const float* g, double* acc) { *acc += dw::sum_squares(n, g); }

void HostOps::adamw(int64_t n, float* w, const float* g, float* m, float* v, const AdamWStep& s) {
  for (int64_t i = 0; i < n; i++) cuda::adamw_elem(w + i, g[i], m + i, v + i, s);
}

}  // namespace dw::step
