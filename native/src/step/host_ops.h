// The resident step's CPU backend: host memory, the CPU step's GEMMs and layer functions
// (kernels/*.h) where they take the same arguments, and the CUDA kernels' own bodies
// (cuda/bodies.h) elsewhere, one row or element at a time. It is what the resident step is
// checked with here, against DraftModel, and the reference a device's step is compared with.
#pragma once
#include <memory>
#include <unordered_map>
#include <vector>

#include "step/step_ops.h"

namespace dw::step {

class HostOps final : public StepOps {
 public:
  std::string name() const override { return "host"; }
  void* alloc_bytes(size_t bytes) override;
  void free_bytes(void* p) override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;
  void zero(void* p, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
            int64_t ldb, float beta, float* C, int64_t ldc) override;
  void axpy(int64_t n, float alpha, const float* x, float* y) override;
  void embed_gather(const int32_t* tok, int64_t rows, const float* E, int64_t H, float* out) override;
  void rmsnorm_forward(int64_t rows, int64_t H, const float* x, const float* w, double eps, float* y,
                       float* rstd) override;
  void rmsnorm_backward(int64_t rows, int64_t H, const float* x, const float* w, const float* rstd, const float* dy,
                        float* dx, float* dw) override;
  void rope(int64_t rows, const int32_t* pos, float* x, int64_t ld, int64_t nheads, int64_t d, const float* cos,
            const float* sin, bool inverse) override;
  void swiglu_forward(int64_t rows, int64_t I, const float* gu, float* act) override;
  void swiglu_backward(int64_t rows, int64_t I, const float* gu, const float* dact, float* dgu) override;
  void target_distribution(int64_t n, const float* z, int64_t V, const int32_t* d2t, const int32_t* t2d, int64_t Vd,
                           float* p, int32_t* tgt) override;
  void step_rows(int64_t B, int64_t T, int64_t k, const int32_t* ids, const uint8_t* mask, const int32_t* lengths,
                 const int32_t* tgt, int32_t* tok, int32_t* pos, int32_t* prow, int32_t* ltgt, float* w,
                 float* lsc) override;
  void soft_cross_entropy(int64_t n, int64_t Vd, float* logits, const float* p, const int32_t* prow, const float* w,
                          const int32_t* tgt, float grad_scale, double* ce, double* hit) override;
  void attention_softmax(int64_t Tq, int64_t q0, float* S, int64_t ld, float* E, int64_t nextra, float* lse) override;
  void attention_dscores(int64_t Tq, int64_t q0, const float* P, float* dP, int64_t ld, const float* delta,
                         float scale) override;
  void row_dots(int64_t n, int64_t ne, int64_t d, float alpha, const float* a, int64_t lda, const float* x, int64_t ldx,
                int64_t xstride, float* out) override;
  void rows_combine(int64_t n, int64_t ne, int64_t d, const float* c, const float* x, int64_t ldx, int64_t xstride,
                    float* y, int64_t ldy) override;
  void rows_spread(int64_t n, int64_t ne, int64_t d, const float* c, const float* a, int64_t lda, float* x,
                   int64_t ldx, int64_t xstride) override;
  void sum_squares(int64_t n, const float* g, double* acc) override;
  void adamw(int64_t n, float* w, const float* g, float* m, float* v, const AdamWStep& s) override;

 private:
  std::unordered_map<void*, std::unique_ptr<double[]>> blocks_;
  std::vector<float> a16_, b16_;  // bf16-rounded operands (bf16_matmul)  // 8-byte aligned: enough for every element type
};

}  // namespace dw::step
