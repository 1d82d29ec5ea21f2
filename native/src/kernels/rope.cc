#include "kernels/rope.h"

#include <algorithm>
#include <cmath>

#include "kernels/parallel.h"

namespace dw {

std::string RopeScaling::check() const {
  if (kind < 0 || kind > 2) return "rope scaling kind must be none, linear or llama3";
  if (kind == 0) return "";
  if (!(factor > 0) || factor > 1e6) return "rope scaling factor must be in (0, 1e6]";
  if (kind == 2) {
    if (!(low_freq_factor > 0) || !(high_freq_factor > low_freq_factor) || high_freq_factor > 1e6)
      return "rope scaling needs 0 < low_freq_factor < high_freq_factor";
    if (!(original_max_position >= 1) || original_max_position > 1e9)
      return "rope scaling original_max_position_embeddings must be in [1, 1e9]";
  }
  return "";
}

std::vector<double> rope_inv_freq(int64_t d, double theta, const RopeScaling& s) {
  const int64_t half = d / 2;
  std::vector<double> f(static_cast<size_t>(half));
  const double pi = 3.14159265358979323846;
  for (int64_t i = 0; i < half; i++) {
    double x = std::pow(theta, -2.0 * double(i) / double(d));
    if (s.kind == 1) {
      x /= s.factor;
    } else if (s.kind == 2) {
      const double wavelen = 2 * pi / x;
      const double low_wavelen = s.original_max_position / s.low_freq_factor;
      const double high_wavelen = s.original_max_position / s.high_freq_factor;
      if (wavelen > low_wavelen) {
        x /= s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (s.original_max_position / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        x = (1 - smooth) * x / s.factor + smooth * x;
      }
    }
    f[size_t(i)] = x;
  }
  return f;
}

void RopeTable::ensure(int64_t max_pos, int64_t d, double theta, const RopeScaling& scaling) {
  if (max_pos <= n_ && d == d_ && theta == theta_ && scaling == scaling_) return;
  if (d != d_ || theta != theta_ || !(scaling == scaling_)) {
    n_ = 0;
    inv_freq_ = rope_inv_freq(d, theta, scaling);
  }
  int64_t n = std::max<int64_t>(max_pos, 2 * n_);
  int64_t half = d / 2;
  cos_.resize(static_cast<size_t>(n * half));
  sin_.resize(static_cast<size_t>(n * half));
  for (int64_t p = n_; p < n; p++)
    for (int64_t i = 0; i < half; i++) {
      double a = double(p) * inv_freq_[size_t(i)];
      cos_[size_t(p * half + i)] = float(std::cos(a));
      sin_[size_t(p * half + i)] = float(std::sin(a));
    }
  n_ = n;
  d_ = d;
  theta_ = theta;
  scaling_ = scaling;
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
