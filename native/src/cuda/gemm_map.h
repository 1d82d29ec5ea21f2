// The one place the CPU step's row-major GEMMs (kernels/blas.h: gemm_nt, gemm_nn, gemm_tn)
// become column-major calls (cuBLAS; CBLAS with CblasColMajor in the CPU test). A row-major
// X[r,c] with leading dimension ld is, read column-major, Xᵀ[c,r] with the same ld. So
// C = op(A)·op(B) (row-major, C[M,N]) is computed as Cᵀ = op(B)ᵀ·op(A)ᵀ: the operands swap,
// M and N swap, each operand keeps its own transpose flag and leading dimension.
#pragma once
#include <cstdint>

namespace dw::cuda {

enum class Trans { N, T };

struct ColMajorGemm {
  Trans transa, transb;
  int64_t m, n, k;
  float alpha;
  const void* a; int64_t lda;  // untyped: fp32 for Sgemm, bf16 inputs for GemmEx
  const void* b; int64_t ldb;
  float beta;
  void* c; int64_t ldc;
};

// Row-major C[M,N] = alpha·op(A)·op(B) + beta·C, with op(A) [M,K] (ta: A is stored [K,M]) and
// op(B) [K,N] (tb: B is stored [N,K]); gemm_nt is (false, true), gemm_nn (false, false),
// gemm_tn (true, false).
inline ColMajorGemm col_major_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
                                   int64_t lda, const void* B, int64_t ldb, float beta, void* C, int64_t ldc) {
  return {tb ? Trans::T : Trans::N, ta ? Trans::T : Trans::N, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc};
}

}  // namespace dw::cuda
