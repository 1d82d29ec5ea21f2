#include "kernels/vec.h"

#include <limits>

namespace dw {

float fast_expf(float x) { return exp_poly(x); }

DW_CLONES float vdot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

DW_CLONES float vsumsq(const float* a, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += a[i] * a[i];
  return s;
}

DW_CLONES float vsum(const float* a, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += a[i];
  return s;
}

DW_CLONES float vmax(const float* a, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; i++) m = a[i] > m ? a[i] : m;
  return m;
}

DW_CLONES void vaxpy(float* y, float a, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

DW_CLONES void vscale(float* y, float a, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) y[i] = a * x[i];
}

DW_CLONES float vexp_sub_sum(float* y, const float* x, float m, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) {
    float e = exp_poly(x[i] - m);
    y[i] = e;
    s += e;
  }
  return s;
}

int64_t vargmax(const float* a, int64_t n) {
  if (n <= 0) return -1;
  float m = vmax(a, n);
  for (int64_t i = 0; i < n; i++)
    if (a[i] == m) return i;
  return 0;  // all NaN
}

}  // namespace dw
