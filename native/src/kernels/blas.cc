#include "kernels/blas.h"

#include <cblas.h>

#include <atomic>
#include <chrono>
#include <vector>

#include "kernels/parallel.h"

extern "C" {
// Declared by OpenBLAS's cblas.h in most builds; repeated here for builds that omit them.
char* openblas_get_config(void);
int openblas_get_num_threads(void);
void openblas_set_num_threads(int);
}

namespace dw {

static std::atomic<double> g_flops{0.0};

static void count(int64_t M, int64_t N, int64_t K) {
  double f = 2.0 * double(M) * double(N) * double(K);
  double cur = g_flops.load(std::memory_order_relaxed);
  while (!g_flops.compare_exchange_weak(cur, cur + f, std::memory_order_relaxed)) {
  }
}

// K == 0 is legal (an empty sum) but some BLAS builds reject lda < 1: handle it here.
static bool trivial(int64_t M, int64_t N, int64_t K, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return true;
  if (K > 0) return false;
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
  return true;
}

void gemm_nt(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (trivial(M, N, K, beta, C, ldc)) return;
  count(M, N, K);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), alpha, A, int(lda), B,
              int(ldb), beta, C, int(ldc));
}

void gemm_nn(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (trivial(M, N, K, beta, C, ldc)) return;
  count(M, N, K);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(M), int(N), int(K), alpha, A, int(lda), B,
              int(ldb), beta, C, int(ldc));
}

void gemm_tn(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (trivial(M, N, K, beta, C, ldc)) return;
  count(M, N, K);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(M), int(N), int(K), alpha, A, int(lda), B,
              int(ldb), beta, C, int(ldc));
}

void gemv_n(int64_t M, int64_t K, const float* A, int64_t lda, const float* x, float beta, float* y) {
  if (M <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; i++) y[i] = beta == 0.0f ? 0.0f : beta * y[i];
    return;
  }
  count(M, 1, K);
  cblas_sgemv(CblasRowMajor, CblasNoTrans, int(M), int(K), 1.0f, A, int(lda), x, 1, beta, y, 1);
}

void with_serial_blas(const std::function<void()>& fn) {
  const int old = blas_threads();
  if (pool_threads() <= 1 || old <= 1) {
    fn();
    return;
  }
  openblas_set_num_threads(1);
  try {
    fn();
  } catch (...) {
    openblas_set_num_threads(old);
    throw;
  }
  openblas_set_num_threads(old);
}

double gemm_flops_executed() { return g_flops.load(); }

std::string blas_config() {
  const char* c = openblas_get_config();
  return c ? std::string(c) : std::string("unknown");
}

int blas_threads() { return openblas_get_num_threads(); }

void set_blas_threads(int n) {
  if (n >= 1) openblas_set_num_threads(n);
}

double sgemm_bench(int n, int reps, int threads) {
  int old = blas_threads();
  set_blas_threads(threads);
  std::vector<float> a(size_t(n) * n), b(size_t(n) * n), c(size_t(n) * n);
  for (size_t i = 0; i < a.size(); i++) {
    a[i] = float((i * 7919) % 1000) * 1e-3f - 0.5f;
    b[i] = float((i * 104729) % 1000) * 1e-3f - 0.5f;
  }
  // one warm-up product (thread start-up, page faults) outside the timing
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f,
              c.data(), n);
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; r++)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f,
                c.data(), n);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  set_blas_threads(old);
  return 2.0 * double(n) * n * n * reps / s / 1e9;
}

}  // namespace dw
