#include "kernels/rope.h"

#include <cmath>

#include "kernels/parallel.h"

namespace dw {

void RopeTable::ensure(int64_t max_pos, int64_t d, double theta) {
  if (max_pos <= n_ && d == d_ && theta == theta_) return;
  if (d != d_ || theta != theta_) n_ = 0;
  int64_t n = std::max<int64_t>(max_pos, 2 * n_);
  int64_t half = d / 2;
  cos_.resize(static_cast<size_t>(n * half));
  sin_.resize(static_cast<size_t>(n * half));
  for (int64_t p = n_; p < n; p++)
    for (int64_t i = 0; i < half; i++) {
      double f = std::pow(theta, -2.0 * double(i) / double(d));
      double a = double(p) * f;
      cos_[size_t(p * half + i)] = float(std::cos(a));
      sin_[size_t(p * half + i)] = float(std::sin(a));
    }
  n_ = n;
  d_ = d;
  theta_ = theta;
}

void rope_apply(int64_t rows, const int32_t* pos, float* x, int64_t ld, int64_t nheads, int64_t d,
                const RopeTable& table, bool inverse) {
  const int64_t half = d / 2;
  const float sgn = inverse ? -1.0f : 1.0f;
  parallel_for(rows, 128, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const float* c = table.cos_row(pos[r]);
      const float* s = table.sin_row(pos[r]);
      for (int64_t h = 0; h < nheads; h++) {
        float* a = x + r * ld + h * d;
        float* b = a + half;
        for (int64_t i = 0; i < half; i++) {
          float x1 = a[i], x2 = b[i], si = sgn * s[i];
          a[i] = x1 * c[i] - x2 * si;
          b[i] = x2 * c[i] + x1 * si;
        }
      }
    }
  });
}

}  // namespace dw
