#include "cuda/cuda_ops.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "cuda/device.h"
#include "cuda/gemm_map.h"
#include "cuda/kernels.h"
#include "cuda/libs.h"

namespace dw::cuda {
namespace {

void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("cuda: ") + what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}
void ok(const std::string& launch, const char* what) {
  if (!launch.empty()) throw std::runtime_error(std::string("cuda: ") + what + ": " + launch);
}

constexpr size_t kStaging = size_t(32) << 20;  // pinned bytes per upload chunk (two of them)

class CudaOps final : public step::StepOps {
 public:
  CudaOps(int device, const CublasApi& blas) : blas_(blas), device_(device) {
    ok(cudaSetDevice(device), "cudaSetDevice");
    ok(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    ok(cudaStreamCreateWithFlags(&copies_, cudaStreamNonBlocking), "cudaStreamCreate (uploads)");
    for (cudaEvent_t* e : {&staged_[0], &staged_[1], &released_, &uploaded_})
      ok(cudaEventCreateWithFlags(e, cudaEventDisableTiming), "cudaEventCreate");
    ok(cudaMallocHost(&staging_, 2 * kStaging), "cudaMallocHost (pinned staging)");
    if (blas_.create(&handle_) != 0) throw std::runtime_error("cuda: cublasCreate_v2 failed");
    if (blas_.set_stream(handle_, stream_) != 0) throw std::runtime_error("cuda: cublasSetStream_v2 failed");
  }
  ~CudaOps() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    for (void* p : blocks_) cudaFree(p);
    cudaFree(a16_);
    cudaFree(b16_);
    if (handle_) blas_.destroy(handle_);
    cudaStreamSynchronize(copies_);
    cudaFreeHost(staging_);
    for (cudaEvent_t e : {staged_[0], staged_[1], released_, uploaded_}) cudaEventDestroy(e);
    cudaStreamDestroy(copies_);
    cudaStreamDestroy(stream_);
  }
  std::string name() const override { return "cuda"; }

  void* alloc_bytes(size_t bytes) override {
    void* p = nullptr;
    ok(cudaMalloc(&p, bytes), "cudaMalloc");
    // zeroed before any stream uses it (the upload stream included): allocations are setup work
    ok(cudaMemsetAsync(p, 0, bytes, stream_), "cudaMemsetAsync");
    ok(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    blocks_.push_back(p);
    return p;
  }
  void free_bytes(void* p) override {
    ok(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    ok(cudaStreamSynchronize(copies_), "cudaStreamSynchronize (uploads)");
    blocks_.erase(std::remove(blocks_.begin(), blocks_.end(), p), blocks_.end());
    ok(cudaFree(p), "cudaFree");
  }
  // Through the pinned staging buffer, in two halves: the host fills one while the device
  // reads the other.
  void upload(void* dst, const void* src, size_t bytes) override { staged_copy(stream_, dst, src, bytes); }
  // On the upload stream, after the previous step's last read of the inputs: beside its AdamW.
  void upload_inputs(void* dst, const void* src, size_t bytes) override {
    ok(cudaStreamWaitEvent(copies_, released_, 0), "cudaStreamWaitEvent (inputs released)");
    staged_copy(copies_, dst, src, bytes);
  }
  void inputs_ready() override {
    ok(cudaEventRecord(uploaded_, copies_), "cudaEventRecord (inputs uploaded)");
    ok(cudaStreamWaitEvent(stream_, uploaded_, 0), "cudaStreamWaitEvent (inputs uploaded)");
  }
  void release_inputs() override { ok(cudaEventRecord(released_, stream_), "cudaEventRecord (inputs released)"); }
  void download(void* dst, const void* src, size_t bytes) override {
    ok(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "copy from the device");
    ok(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  void zero(void* p, size_t bytes) override { ok(cudaMemsetAsync(p, 0, bytes, stream_), "cudaMemsetAsync"); }
  void copy(void* dst, const void* src, size_t bytes) override {
    ok(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "copy on the device");
  }

  void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
            int64_t ldb, float beta, float* C, int64_t ldc) override {
    if (M == 0 || N == 0) return;
    if (!bf16_matmul) {
      const ColMajorGemm g = col_major_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      const int r = blas_.sgemm(handle_, op(g.transa), op(g.transb), int(g.m), int(g.n), int(g.k), &g.alpha,
                                static_cast<const float*>(g.a), int(g.lda), static_cast<const float*>(g.b), int(g.ldb),
                                &g.beta, static_cast<float*>(g.c), int(g.ldc));
      if (r != 0) throw std::runtime_error("cuda: cublasSgemm_v2 returned status " + std::to_string(r));
      return;
    }
    const uint16_t* a16 = rounded(A, ta ? K : M, ta ? M : K, lda, &a16_, &a16_n_);
    const uint16_t* b16 = rounded(B, tb ? N : K, tb ? K : N, ldb, &b16_, &b16_n_);
    const ColMajorGemm g = col_major_gemm(ta, tb, M, N, K, alpha, a16, lda, b16, ldb, beta, C, ldc);
    const int r = blas_.gemm_ex(handle_, op(g.transa), op(g.transb), int(g.m), int(g.n), int(g.k), &g.alpha, g.a, kR16BF,
                                int(g.lda), g.b, kR16BF, int(g.ldb), &g.beta, g.c, kR32F, int(g.ldc), kCompute32F, kGemmDefault);
    if (r != 0) throw std::runtime_error("cuda: cublasGemmEx (bf16) returned status " + std::to_string(r));
  }
  void axpy(int64_t n, float alpha, const float* x, float* y) override { ok(cuda::axpy(stream_, n, alpha, x, y), "axpy"); }
  void embed_gather(const int32_t* tok, int64_t rows, const float* E, int64_t H, float* out) override {
    ok(cuda::embed_gather(stream_, tok, rows, E, H, out), "embed_gather");
  }
  void rmsnorm_forward(int64_t rows, int64_t H, const float* x, const float* w, double eps, float* y, float* rstd) override {
    ok(cuda::rmsnorm_forward(stream_, rows, H, x, w, eps, y, rstd), "rmsnorm_forward");
  }
  void rmsnorm_backward(int64_t rows, int64_t H, const float* x, const float* w, const float* rstd, const float* dy, float* dx,
                        float* dw) override {
    ok(cuda::rmsnorm_backward(stream_, rows, H, x, w, rstd, dy, dx, dw), "rmsnorm_backward");
  }
  void rope(int64_t rows, const int32_t* pos, float* x, int64_t ld, int64_t nheads, int64_t d, const float* cos,
            const float* sin, bool inverse) override {
    ok(cuda::rope_apply(stream_, rows, pos, x, ld, nheads, d, cos, sin, inverse), "rope_apply");
  }
  void swiglu_forward(int64_t rows, int64_t I, const float* gu, float* act) override {
    ok(cuda::swiglu_forward(stream_, rows, I, gu, act), "swiglu_forward");
  }
  void swiglu_backward(int64_t rows, int64_t I, const float* gu, const float* dact, float* dgu) override {
    ok(cuda::swiglu_backward(stream_, rows, I, gu, dact, dgu), "swiglu_backward");
  }
  void target_distribution(int64_t n, const float* z, int64_t V, const int32_t* d2t, const int32_t* t2d, int64_t Vd, float* p,
                           int32_t* tgt) override {
    ok(cuda::target_distribution(stream_, n, z, V, d2t, t2d, Vd, p, tgt), "target_distribution");
  }
  void step_rows(int64_t B, int64_t T, int64_t k, const int32_t* ids, const uint8_t* mask, const int32_t* lengths,
                 const int32_t* tgt, int32_t* tok, int32_t* pos, int32_t* prow, int32_t* ltgt, float* w, float* lsc) override {
    ok(cuda::step_rows(stream_, B, T, k, ids, mask, lengths, tgt, tok, pos, prow, ltgt, w, lsc), "step_rows");
  }
  void soft_cross_entropy(int64_t n, int64_t Vd, float* logits, const float* p, const int32_t* prow, const float* w,
                          const int32_t* tgt, float grad_scale, double* ce, double* hit) override {
    ok(cuda::soft_cross_entropy(stream_, n, Vd, logits, p, prow, w, tgt, grad_scale, ce, hit), "soft_cross_entropy");
  }
  void attention_softmax(int64_t Tq, int64_t q0, float* S, int64_t ld, float* E, int64_t nextra, float* lse) override {
    ok(cuda::attention_softmax(stream_, Tq, q0, S, ld, E, nextra, lse), "attention_softmax");
  }
  void attention_dscores(int64_t Tq, int64_t q0, const float* P, float* dP, int64_t ld, const float* delta,
                         float scale) override {
    ok(cuda::attention_dscores(stream_, Tq, q0, P, dP, ld, delta, scale), "attention_dscores");
  }
  void row_dots(int64_t n, int64_t ne, int64_t d, float alpha, const float* a, int64_t lda, const float* x, int64_t ldx,
                int64_t xstride, float* out) override {
    ok(cuda::row_dots(stream_, n, ne, d, alpha, a, lda, x, ldx, xstride, out), "row_dots");
  }
  void rows_combine(int64_t n, int64_t ne, int64_t d, const float* c, const float* x, int64_t ldx, int64_t xstride, float* y,
                    int64_t ldy) override {
    ok(cuda::rows_combine(stream_, n, ne, d, c, x, ldx, xstride, y, ldy), "rows_combine");
  }
  void rows_spread(int64_t n, int64_t ne, int64_t d, const float* c, const float* a, int64_t lda, float* x, int64_t ldx,
                   int64_t xstride) override {
    ok(cuda::rows_spread(stream_, n, ne, d, c, a, lda, x, ldx, xstride), "rows_spread");
  }
  void sum_squares(int64_t n, const float* g, double* acc) override { ok(cuda::sum_squares(stream_, n, g, acc), "sum_squares"); }
  void adamw(int64_t n, float* w, const float* g, float* m, float* v, const AdamWStep& s) override {
    ok(cuda::adamw_update(stream_, n, w, g, m, v, s), "adamw_update");
  }

 private:
  static int op(Trans t) { return t == Trans::T ? kOpT : kOpN; }
  void staged_copy(cudaStream_t s, void* dst, const void* src, size_t bytes) {
    for (size_t o = 0; o < bytes; o += kStaging) {
      const size_t n = std::min(kStaging, bytes - o);
      char* half = static_cast<char*>(staging_) + half_ * kStaging;
      ok(cudaEventSynchronize(staged_[half_]), "cudaEventSynchronize (staging)");  // its last copy has been read
      std::memcpy(half, static_cast<const char*>(src) + o, n);
      ok(cudaMemcpyAsync(static_cast<char*>(dst) + o, half, n, cudaMemcpyHostToDevice, s), "copy to the device");
      ok(cudaEventRecord(staged_[half_], s), "cudaEventRecord (staging)");
      half_ ^= 1;
    }
  }
  // X's span (rows of cols with stride ld) rounded to bf16 into a device scratch that grows.
  const uint16_t* rounded(const float* X, int64_t rows, int64_t cols, int64_t ld, uint16_t** buf, size_t* cap) {
    const size_t n = size_t((rows - 1) * ld + cols);
    if (n > *cap) {
      ok(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
      cudaFree(*buf);
      *buf = nullptr;
      ok(cudaMalloc(buf, n * 2), "cudaMalloc (bf16 operands)");
      *cap = n;
    }
    ok(cuda::f32_to_bf16(stream_, X, *buf, int64_t(n)), "f32_to_bf16");
    return *buf;
  }

  const CublasApi& blas_;
  int device_;
  cudaStream_t stream_ = nullptr, copies_ = nullptr;  // compute; batch uploads
  cudaEvent_t staged_[2] = {nullptr, nullptr};        // a staging half's last copy
  cudaEvent_t released_ = nullptr, uploaded_ = nullptr;
  void* staging_ = nullptr;  // pinned, 2 halves of kStaging
  int half_ = 0;
  void* handle_ = nullptr;
  std::vector<void*> blocks_;
  uint16_t *a16_ = nullptr, *b16_ = nullptr;
  size_t a16_n_ = 0, b16_n_ = 0;
};

}  // namespace

std::unique_ptr<step::StepOps> make_cuda_ops(int device) {
  const DeviceInfo info = device_info();
  if (info.gpus.empty()) throw std::runtime_error(info.error);
  if (device < 0 || device >= int(info.gpus.size()))
    throw std::runtime_error("no CUDA device " + std::to_string(device) + " (this machine has " +
                             std::to_string(info.gpus.size()) + ")");
  std::string why;
  const CublasApi* b = cublas(&why);
  if (!b) throw std::runtime_error(why);
  return std::make_unique<CudaOps>(device, *b);
}

}  // namespace dw::cuda
