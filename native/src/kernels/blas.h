// Row-major SGEMM wrappers over OpenBLAS (every matrix product in the addon goes through
// here), a counter of the FLOPs they executed, and the BLAS runtime knobs.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace dw {

// C[M,N] = alpha·A[M,K]·B[N,K]ᵀ + beta·C      (y = x·Wᵀ for a Linear W[out,in])
void gemm_nt(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// C[M,N] = alpha·A[M,K]·B[K,N] + beta·C       (dx = dy·W)
void gemm_nn(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// C[M,N] = alpha·A[K,M]ᵀ·B[K,N] + beta·C      (dW = dyᵀ·x)
void gemm_tn(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// y[M] = A[M,K]·x[K] (+ beta·y)
void gemv_n(int64_t M, int64_t K, const float* A, int64_t lda, const float* x, float beta, float* y);

// FLOPs (2·M·N·K per product) executed by the wrappers since load, all threads together.
double gemm_flops_executed();

// Runs fn with OpenBLAS on one thread (the old count is restored after), for regions that run
// many small independent GEMMs in parallel on the addon's pool instead (attention heads).
// Does nothing special when the pool itself has one thread.
void with_serial_blas(const std::function<void()>& fn);

std::string blas_config();
int blas_threads();
void set_blas_threads(int n);
// GFLOP/s of `reps` n×n×n SGEMMs run with `threads` BLAS threads (restores the old count).
double sgemm_bench(int n, int reps, int threads);

}  // namespace dw
