// Vectorised elementwise kernels on float rows. The addon is compiled for a portable baseline
// (x86-64-v2); these hot loops also get AVX2/AVX-512 clones picked at load time (GCC
// target_clones), so one binary runs everywhere and still uses the wide units.
#pragma once
#include <cstdint>
#include <cstring>

// AVX-512 / AVX2 / baseline clones of a function, chosen once at load time.
#define DW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

namespace dw {

// Cephes-style expf: 2^n·P(r), r = x − n·ln2, n = round(x·log2 e); branch-free so loops around
// it vectorise (the rounding uses the 1.5·2^23 trick: floorf would need -fno-trapping-math).
// Inputs are clamped to [−87, 88] (so exp(−inf) gives ~1.6e−38, not 0).
__attribute__((always_inline)) static inline float exp_poly(float v) {
  v = v > -87.0f ? v : -87.0f;
  v = v < 88.0f ? v : 88.0f;
  const float fl = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const int32_t ni = static_cast<int32_t>(fl);
  const float r = v - fl * 0.693359375f - fl * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  int32_t bits = (ni + 127) << 23;
  float sc;
  std::memcpy(&sc, &bits, 4);
  return e * sc;
}

float vdot(const float* a, const float* b, int64_t n);
float vsumsq(const float* a, int64_t n);
float vsum(const float* a, int64_t n);
float vmax(const float* a, int64_t n);
// y += a·x
void vaxpy(float* y, float a, const float* x, int64_t n);
// y = a·x (y may alias x)
void vscale(float* y, float a, const float* x, int64_t n);
// y[i] = exp(x[i] − m); returns Σ y. y may alias x. Accurate to ~2 ulp for x − m in [−87, 88].
float vexp_sub_sum(float* y, const float* x, float m, int64_t n);
// Lowest index of the maximum (NaN never wins).
int64_t vargmax(const float* a, int64_t n);
// Scalar exp with the same polynomial as vexp_sub_sum.
float fast_expf(float x);

}  // namespace dw
