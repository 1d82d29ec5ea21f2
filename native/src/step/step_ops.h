// The memory and kernels a backend gives the resident step (step/resident_step.h): the step is
// written once against this interface, and each backend is an instance of it. HostOps
// (step/host_ops.h) runs on the CPU with the CPU step's layer functions and the kernel bodies
// of cuda/bodies.h; CudaOps (cuda/cuda_ops.h) runs the kernels of cuda/kernels.h and cuBLAS
// on one stream. Every pointer is the backend's own (a device pointer for CUDA); matrices are
// row-major with explicit leading dimensions, as in kernels/blas.h. A failure throws
// std::runtime_error naming the operation (for CUDA, the error the runtime gave).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "cuda/bodies.h"

namespace dw::step {

using cuda::AdamWStep;

class StepOps {
 public:
  virtual ~StepOps() = default;
  virtual std::string name() const = 0;

  // Mixed precision (autocast-style): every gemm rounds both inputs to bf16 and accumulates and
  // writes in fp32; weights, moments and every other kernel stay fp32.
  bool bf16_matmul = false;

  // ---- memory: zeroed blocks, each freed by free_bytes or with the ops ----
  virtual void* alloc_bytes(size_t bytes) = 0;
  virtual void free_bytes(void* p) = 0;
  template <typename T>
  T* alloc(int64_t n) { return static_cast<T*>(alloc_bytes(size_t(n > 0 ? n : 1) * sizeof(T))); }
  // host → backend, in stream order; `src` may be reused as soon as this returns.
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  // backend → host; waits for the work before it.
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  virtual void zero(void* p, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  // The batch's uploads, which a backend may run beside the compute still queued (the previous
  // step's AdamW): upload_inputs copies into the input buffers once the previous step has
  // released them (release_inputs, in stream order, after their last reader); inputs_ready
  // makes the work queued after it wait for those copies. Default: plain stream-ordered uploads.
  virtual void upload_inputs(void* dst, const void* src, size_t bytes) { upload(dst, src, bytes); }
  virtual void inputs_ready() {}
  virtual void release_inputs() {}

  // ---- math ----
  // C[M,N] = alpha·op(A)·op(B) + beta·C; op(A) [M,K] (ta: A stored [K,M]), op(B) [K,N] (tb: B
  // stored [N,K]).
  virtual void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float beta, float* C, int64_t ldc) = 0;
  virtual void axpy(int64_t n, float alpha, const float* x, float* y) = 0;  // y += alpha·x
  virtual void embed_gather(const int32_t* tok, int64_t rows, const float* E, int64_t H, float* out) = 0;
  virtual void rmsnorm_forward(int64_t rows, int64_t H, const float* x, const float* w, double eps, float* y,
                               float* rstd) = 0;
  // dx written, dw accumulated.
  virtual void rmsnorm_backward(int64_t rows, int64_t H, const float* x, const float* w, const float* rstd,
                                const float* dy, float* dx, float* dw) = 0;
  // cos/sin: [positions, d/2] tables on the backend.
  virtual void rope(int64_t rows, const int32_t* pos, float* x, int64_t ld, int64_t nheads, int64_t d, const float* cos,
                    const float* sin, bool inverse) = 0;
  virtual void swiglu_forward(int64_t rows, int64_t I, const float* gu, float* act) = 0;
  virtual void swiglu_backward(int64_t rows, int64_t I, const float* gu, const float* dact, float* dgu) = 0;
  // Target logits z [n, V] → tgt[r] = t2d[argmax z[r]], p[r] = softmax(z[r][d2t]) [n, Vd].
  virtual void target_distribution(int64_t n, const float* z, int64_t V, const int32_t* d2t, const int32_t* t2d,
                                   int64_t Vd, float* p, int32_t* tgt) = 0;
  // The rows of TTT step k (cuda::step_row) for a batch [B, T]: one entry per row of each output.
  virtual void step_rows(int64_t B, int64_t T, int64_t k, const int32_t* ids, const uint8_t* mask,
                         const int32_t* lengths, const int32_t* tgt, int32_t* tok, int32_t* pos, int32_t* prow,
                         int32_t* ltgt, float* w, float* lsc) = 0;
  // kernels/loss.h soft_cross_entropy.
  virtual void soft_cross_entropy(int64_t n, int64_t Vd, float* logits, const float* p, const int32_t* prow,
                                  const float* w, const int32_t* tgt, float grad_scale, double* ce, double* hit) = 0;
  // cuda/kernels.h attention_softmax and attention_dscores.
  virtual void attention_softmax(int64_t Tq, int64_t q0, float* S, int64_t ld, float* E, int64_t nextra, float* lse) = 0;
  virtual void attention_dscores(int64_t Tq, int64_t q0, const float* P, float* dP, int64_t ld, const float* delta,
                                 float scale) = 0;
  // The TTT extras, for rows i < n and extras j < ne, x_j = x + j·xstride (rows of d, stride ld):
  //   row_dots:     out[i·ne + j]  = alpha·(a_i · x_j[i])
  //   rows_combine: y_i           += Σ_j c[i·ne + j]·x_j[i]
  //   rows_spread:  x_j[i]        += c[i·ne + j]·a_i
  virtual void row_dots(int64_t n, int64_t ne, int64_t d, float alpha, const float* a, int64_t lda, const float* x,
                        int64_t ldx, int64_t xstride, float* out) = 0;
  virtual void rows_combine(int64_t n, int64_t ne, int64_t d, const float* c, const float* x, int64_t ldx,
                            int64_t xstride, float* y, int64_t ldy) = 0;
  virtual void rows_spread(int64_t n, int64_t ne, int64_t d, const float* c, const float* a, int64_t lda, float* x,
                           int64_t ldx, int64_t xstride) = 0;
  virtual void sum_squares(int64_t n, const float* g, double* acc) = 0;  // *acc += Σ g²
  virtual void adamw(int64_t n, float* w, const float* g, float* m, float* v, const AdamWStep& s) = 0;
};

}  // namespace dw::step
