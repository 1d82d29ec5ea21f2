// The CUDA kernels of cuda/kernels.h: grid-stride loops over elements, one block per row where
// a row is reduced. The arithmetic is cuda/bodies.h's; only the reductions live here.
#include <cuda_runtime.h>

#include <cfloat>

#include "cuda/kernels.h"

namespace dw::cuda {
namespace {

constexpr int kThreads = 256;

std::string status(cudaError_t e) {
  return e == cudaSuccess ? std::string() : std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}
std::string launched() { return status(cudaGetLastError()); }
cudaStream_t st(Stream s) { return static_cast<cudaStream_t>(s); }
unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads < 65535 * 16 ? (n + kThreads - 1) / kThreads : 65535 * 16); }

// Block-wide reductions (kThreads threads); every thread gets the result.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T part[kThreads / 32];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  T t = 0;
  for (int i = 0; i < kThreads / 32; i++) t += part[i];
  __syncthreads();
  return t;
}
__device__ float block_max(float v) {
  __shared__ float part[kThreads / 32];
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  float t = -FLT_MAX;
  for (int i = 0; i < kThreads / 32; i++) t = fmaxf(t, part[i]);
  __syncthreads();
  return t;
}
// (value, index) argmax, lowest index among equal maxima (argmax_better).
__device__ int64_t block_argmax(float v, int64_t i) {
  __shared__ float pv[kThreads / 32];
  __shared__ int64_t pi[kThreads / 32];
  for (int o = 16; o > 0; o /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (oi >= 0 && argmax_better(ov, oi, v, i)) { v = ov; i = oi; }
  }
  if (threadIdx.x % 32 == 0) { pv[threadIdx.x / 32] = v; pi[threadIdx.x / 32] = i; }
  __syncthreads();
  float bv = -FLT_MAX;
  int64_t bi = -1;
  for (int w = 0; w < kThreads / 32; w++)
    if (pi[w] >= 0 && argmax_better(pv[w], pi[w], bv, bi)) { bv = pv[w]; bi = pi[w]; }
  __syncthreads();
  return bi;
}
// The thread's own argmax over a strided row, combined across the block.
__device__ int64_t row_argmax(const float* z, int64_t n) {
  float bv = -FLT_MAX;
  int64_t bi = -1;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
    if (argmax_better(z[j], j, bv, bi)) { bv = z[j]; bi = j; }
  return block_argmax(bv, bi);
}

__global__ void k_rmsnorm_fwd(int64_t H, const float* x, const float* w, double eps, float* y, float* rstd) {
  const float* xr = x + blockIdx.x * H;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) ss += xr[i] * xr[i];
  const float r = rmsnorm_rstd(double(block_sum(ss)), H, eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) y[blockIdx.x * H + i] = rmsnorm_fwd(xr[i], w[i], r);
}

__global__ void k_rmsnorm_bwd(int64_t H, const float* x, const float* w, const float* rstd, const float* dy, float* dx) {
  const int64_t o = blockIdx.x * H;
  const float r = rstd[blockIdx.x];
  float acc = 0;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) acc += w[i] * dy[o + i] * x[o + i];
  const float c = rmsnorm_bwd_coef(block_sum(acc), r, H);
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) dx[o + i] = rmsnorm_bwd_dx(x[o + i], w[i], dy[o + i], r, c);
}

// dw[i] += Σ_r dy[r,i]·x[r,i]·rstd[r]: a thread per column, rows in order (deterministic, coalesced).
__global__ void k_rmsnorm_dw(int64_t rows, int64_t H, const float* x, const float* rstd, const float* dy, float* dw) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < H; i += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0;
    for (int64_t r = 0; r < rows; r++) acc += rmsnorm_bwd_dw(x[r * H + i], dy[r * H + i], rstd[r]);
    dw[i] += acc;
  }
}

__global__ void k_rope(int64_t rows, const int32_t* pos, float* x, int64_t ld, int64_t nheads, int64_t d,
                       const float* cos, const float* sin, bool inverse) {
  const int64_t half = d / 2, n = rows * nheads * half;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t % half, h = (t / half) % nheads, r = t / (half * nheads);
    float* a = x + r * ld + h * d + i;
    const int64_t c = int64_t(pos[r]) * half + i;
    rope_pair(a[0], a[half], cos[c], sin[c], inverse, a, a + half);
  }
}

__global__ void k_swiglu_fwd(int64_t rows, int64_t I, const float* gu, float* act) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < rows * I; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = t / I, i = t % I;
    act[t] = swiglu_fwd(gu[r * 2 * I + i], gu[r * 2 * I + I + i]);
  }
}

__global__ void k_swiglu_bwd(int64_t rows, int64_t I, const float* gu, const float* da, float* dgu) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < rows * I; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = t / I, i = t % I;
    swiglu_bwd(gu[r * 2 * I + i], gu[r * 2 * I + I + i], da[t], dgu + r * 2 * I + i, dgu + r * 2 * I + I + i);
  }
}

__global__ void k_bf16_to_f32(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) dst[t] = bf16_to_f32(src[t]);
}
__global__ void k_f32_to_bf16(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) dst[t] = f32_to_bf16(src[t]);
}

__global__ void k_embed(const int32_t* tok, int64_t rows, const float* E, int64_t H, float* out) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < rows * H; t += int64_t(gridDim.x) * blockDim.x)
    out[t] = E[int64_t(tok[t / H]) * H + t % H];
}

__global__ void k_sum_squares(int64_t n, const float* g, double* acc) {
  double s = 0;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) s += double(g[t]) * double(g[t]);
  s = block_sum(s);
  if (threadIdx.x == 0) atomicAdd(acc, s);
}

__global__ void k_adamw(int64_t n, float* w, const float* g, float* m, float* v, AdamWStep s) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) adamw_elem(w + t, g[t], m + t, v + t, s);
}

__global__ void k_target(const float* z, int64_t V, const int32_t* d2t, const int32_t* t2d, int64_t Vd, float* p, int32_t* tgt) {
  const float* zr = z + blockIdx.x * V;
  float* pr = p + blockIdx.x * Vd;
  const int64_t y = row_argmax(zr, V);
  if (threadIdx.x == 0) tgt[blockIdx.x] = y >= 0 ? t2d[y] : -1;
  float m = -FLT_MAX;
  for (int64_t j = threadIdx.x; j < Vd; j += blockDim.x) m = fmaxf(m, zr[d2t[j]]);
  m = block_max(m);
  float s = 0;
  for (int64_t j = threadIdx.x; j < Vd; j += blockDim.x) s += softmax_term(zr[d2t[j]], m);
  s = block_sum(s);
  for (int64_t j = threadIdx.x; j < Vd; j += blockDim.x) pr[j] = softmax_term(zr[d2t[j]], m) / s;
}

__global__ void k_soft_ce(int64_t Vd, float* logits, const float* p, const int32_t* prow, const float* w, const int32_t* tgt,
                          float scale, double* ce, double* hit) {
  float* z = logits + blockIdx.x * Vd;
  const float* pr = p + int64_t(prow[blockIdx.x]) * Vd;
  const float wr = w[blockIdx.x];
  const int64_t am = row_argmax(z, Vd);
  float m = -FLT_MAX;
  for (int64_t j = threadIdx.x; j < Vd; j += blockDim.x) m = fmaxf(m, z[j]);
  m = block_max(m);
  float s = 0;
  double sp = 0, spz = 0;
  for (int64_t j = threadIdx.x; j < Vd; j += blockDim.x) { s += softmax_term(z[j], m); sp += pr[j]; spz += double(pr[j]) * z[j]; }
  s = block_sum(s);
  sp = block_sum(sp);
  spz = block_sum(spz);
  if (threadIdx.x == 0) {
    ce[blockIdx.x] = soft_ce(m, s, sp, spz, wr);
    hit[blockIdx.x] = am == tgt[blockIdx.x] ? double(wr) : 0.0;
  }
  if (scale != 0.0f)
    for (int64_t j = threadIdx.x; j < Vd; j += blockDim.x) z[j] = soft_ce_grad(z[j], m, s, float(sp), pr[j], wr, scale);
}

__global__ void k_attn_softmax(int64_t q0, float* S, int64_t ld, float* E, int64_t ne, float* lse) {
  const int64_t i = blockIdx.x, qp = q0 + i;
  float* sr = S + i * ld;
  float* er = E + i * ne;
  float m = -FLT_MAX;
  for (int64_t j = threadIdx.x; j < ld; j += blockDim.x) if (attn_visible(j, qp)) m = fmaxf(m, sr[j]);
  for (int64_t j = threadIdx.x; j < ne; j += blockDim.x) m = fmaxf(m, er[j]);
  m = block_max(m);
  float s = 0;
  for (int64_t j = threadIdx.x; j < ld; j += blockDim.x) if (attn_visible(j, qp)) s += softmax_term(sr[j], m);
  for (int64_t j = threadIdx.x; j < ne; j += blockDim.x) s += softmax_term(er[j], m);
  s = block_sum(s);
  const float l = m + logf(s);
  if (threadIdx.x == 0) lse[i] = l;
  // The scores are already scaled: a = e^(score − lse) is attn_prob with scale 1.
  for (int64_t j = threadIdx.x; j < ld; j += blockDim.x) sr[j] = attn_visible(j, qp) ? attn_prob(sr[j], 1.0f, l) : 0.0f;
  for (int64_t j = threadIdx.x; j < ne; j += blockDim.x) er[j] = attn_prob(er[j], 1.0f, l);
}

__global__ void k_attn_dscores(int64_t q0, const float* P, float* dP, int64_t ld, const float* delta, float scale) {
  const int64_t i = blockIdx.x, qp = q0 + i;
  for (int64_t j = threadIdx.x; j < ld; j += blockDim.x)
    dP[i * ld + j] = attn_visible(j, qp) ? attn_dscore(P[i * ld + j], dP[i * ld + j], delta[i], scale) : 0.0f;
}

__global__ void k_axpy(int64_t n, float alpha, const float* x, float* y) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) y[t] += alpha * x[t];
}

__global__ void k_step_rows(int64_t n, int64_t T, int64_t k, const int32_t* ids, const uint8_t* mask, const int32_t* lengths,
                            const int32_t* tgt, int32_t* tok, int32_t* pos, int32_t* prow, int32_t* ltgt, float* w, float* lsc) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < n; r += int64_t(gridDim.x) * blockDim.x) {
    const StepRow s = step_row(r, T, k, ids, mask, lengths, tgt);
    tok[r] = s.tok; pos[r] = s.pos; prow[r] = s.prow; ltgt[r] = s.tgt; w[r] = s.w; lsc[r] = s.lsc;
  }
}

// A warp per (i, j): lanes take strided columns, then a warp sum.
__global__ void k_row_dots(int64_t n, int64_t ne, int64_t d, float alpha, const float* a, int64_t lda, const float* x,
                           int64_t ldx, int64_t xstride, float* out) {
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t t = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; t < n * ne; t += warps) {
    const int64_t i = t / ne, j = t % ne;
    const float* ar = a + i * lda;
    const float* xr = x + j * xstride + i * ldx;
    float s = 0;
    for (int64_t c = threadIdx.x % 32; c < d; c += 32) s += ar[c] * xr[c];
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x % 32 == 0) out[t] = alpha * s;
  }
}

__global__ void k_rows_combine(int64_t n, int64_t ne, int64_t d, const float* c, const float* x, int64_t ldx, int64_t xstride,
                               float* y, int64_t ldy) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n * d; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t / d, col = t % d;
    float acc = y[i * ldy + col];
    for (int64_t j = 0; j < ne; j++) acc += c[i * ne + j] * x[j * xstride + i * ldx + col];
    y[i * ldy + col] = acc;
  }
}

__global__ void k_rows_spread(int64_t n, int64_t ne, int64_t d, const float* c, const float* a, int64_t lda, float* x,
                              int64_t ldx, int64_t xstride) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n * ne * d; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = t % d, j = (t / d) % ne, i = t / (d * ne);
    x[j * xstride + i * ldx + col] += c[i * ne + j] * a[i * lda + col];
  }
}

}  // namespace

std::string rmsnorm_forward(Stream s, int64_t rows, int64_t H, const float* x, const float* w, double eps, float* y, float* rstd) {
  if (rows > 0) k_rmsnorm_fwd<<<unsigned(rows), kThreads, 0, st(s)>>>(H, x, w, eps, y, rstd);
  return launched();
}
std::string rmsnorm_backward(Stream s, int64_t rows, int64_t H, const float* x, const float* w, const float* rstd,
                             const float* dy, float* dx, float* dw) {
  if (rows > 0) k_rmsnorm_bwd<<<unsigned(rows), kThreads, 0, st(s)>>>(H, x, w, rstd, dy, dx);
  if (rows > 0) k_rmsnorm_dw<<<blocks_for(H), kThreads, 0, st(s)>>>(rows, H, x, rstd, dy, dw);
  return launched();
}
std::string rope_apply(Stream s, int64_t rows, const int32_t* pos, float* x, int64_t ld, int64_t nheads, int64_t d,
                       const float* cos, const float* sin, bool inverse) {
  const int64_t n = rows * nheads * (d / 2);
  if (n > 0) k_rope<<<blocks_for(n), kThreads, 0, st(s)>>>(rows, pos, x, ld, nheads, d, cos, sin, inverse);
  return launched();
}
std::string swiglu_forward(Stream s, int64_t rows, int64_t I, const float* gu, float* act) {
  if (rows * I > 0) k_swiglu_fwd<<<blocks_for(rows * I), kThreads, 0, st(s)>>>(rows, I, gu, act);
  return launched();
}
std::string swiglu_backward(Stream s, int64_t rows, int64_t I, const float* gu, const float* dact, float* dgu) {
  if (rows * I > 0) k_swiglu_bwd<<<blocks_for(rows * I), kThreads, 0, st(s)>>>(rows, I, gu, dact, dgu);
  return launched();
}
std::string bf16_to_f32(Stream s, const uint16_t* src, float* dst, int64_t n) {
  if (n > 0) k_bf16_to_f32<<<blocks_for(n), kThreads, 0, st(s)>>>(src, dst, n);
  return launched();
}
std::string f32_to_bf16(Stream s, const float* src, uint16_t* dst, int64_t n) {
  if (n > 0) k_f32_to_bf16<<<blocks_for(n), kThreads, 0, st(s)>>>(src, dst, n);
  return launched();
}
std::string embed_gather(Stream s, const int32_t* tok, int64_t rows, const float* E, int64_t H, float* out) {
  if (rows * H > 0) k_embed<<<blocks_for(rows * H), kThreads, 0, st(s)>>>(tok, rows, E, H, out);
  return launched();
}
std::string sum_squares(Stream s, int64_t n, const float* g, double* acc) {
  if (n > 0) k_sum_squares<<<blocks_for(n) < 1024 ? blocks_for(n) : 1024, kThreads, 0, st(s)>>>(n, g, acc);
  return launched();
}
std::string adamw_update(Stream s, int64_t n, float* w, const float* g, float* m, float* v, const AdamWStep& a) {
  if (n > 0) k_adamw<<<blocks_for(n), kThreads, 0, st(s)>>>(n, w, g, m, v, a);
  return launched();
}
std::string target_distribution(Stream s, int64_t n, const float* z, int64_t V, const int32_t* d2t, const int32_t* t2d,
                                int64_t Vd, float* p, int32_t* tgt) {
  if (n > 0) k_target<<<unsigned(n), kThreads, 0, st(s)>>>(z, V, d2t, t2d, Vd, p, tgt);
  return launched();
}
std::string soft_cross_entropy(Stream s, int64_t n, int64_t Vd, float* logits, const float* p, const int32_t* prow,
                               const float* w, const int32_t* tgt, float grad_scale, double* ce, double* hit) {
  if (n > 0) k_soft_ce<<<unsigned(n), kThreads, 0, st(s)>>>(Vd, logits, p, prow, w, tgt, grad_scale, ce, hit);
  return launched();
}
std::string attention_softmax(Stream s, int64_t Tq, int64_t q0, float* S, int64_t ld, float* E, int64_t nextra, float* lse) {
  if (Tq > 0) k_attn_softmax<<<unsigned(Tq), kThreads, 0, st(s)>>>(q0, S, ld, E, nextra, lse);
  return launched();
}
std::string attention_dscores(Stream s, int64_t Tq, int64_t q0, const float* P, float* dP, int64_t ld, const float* delta, float scale) {
  if (Tq > 0) k_attn_dscores<<<unsigned(Tq), kThreads, 0, st(s)>>>(q0, P, dP, ld, delta, scale);
  return launched();
}

std::string axpy(Stream s, int64_t n, float alpha, const float* x, float* y) {
  if (n > 0) k_axpy<<<blocks_for(n), kThreads, 0, st(s)>>>(n, alpha, x, y);
  return launched();
}
std::string step_rows(Stream s, int64_t B, int64_t T, int64_t k, const int32_t* ids, const uint8_t* mask, const int32_t* lengths,
                      const int32_t* tgt, int32_t* tok, int32_t* pos, int32_t* prow, int32_t* ltgt, float* w, float* lsc) {
  const int64_t n = B * T;
  if (n > 0) k_step_rows<<<blocks_for(n), kThreads, 0, st(s)>>>(n, T, k, ids, mask, lengths, tgt, tok, pos, prow, ltgt, w, lsc);
  return launched();
}
std::string row_dots(Stream s, int64_t n, int64_t ne, int64_t d, float alpha, const float* a, int64_t lda, const float* x,
                     int64_t ldx, int64_t xstride, float* out) {
  if (n * ne > 0) k_row_dots<<<blocks_for(n * ne * 32), kThreads, 0, st(s)>>>(n, ne, d, alpha, a, lda, x, ldx, xstride, out);
  return launched();
}
std::string rows_combine(Stream s, int64_t n, int64_t ne, int64_t d, const float* c, const float* x, int64_t ldx, int64_t xstride,
                         float* y, int64_t ldy) {
  if (n * d > 0 && ne > 0) k_rows_combine<<<blocks_for(n * d), kThreads, 0, st(s)>>>(n, ne, d, c, x, ldx, xstride, y, ldy);
  return launched();
}
std::string rows_spread(Stream s, int64_t n, int64_t ne, int64_t d, const float* c, const float* a, int64_t lda, float* x,
                        int64_t ldx, int64_t xstride) {
  if (n * ne * d > 0) k_rows_spread<<<blocks_for(n * ne * d), kThreads, 0, st(s)>>>(n, ne, d, c, a, lda, x, ldx, xstride);
  return launched();
}

}  // namespace dw::cuda
