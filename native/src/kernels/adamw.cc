#include "kernels/adamw.h"

#include <cmath>
#include <vector>

#include "kernels/parallel.h"

namespace dw {

void adamw_update(int64_t n, float* w, const float* g, float* m, float* v, const AdamWParams& p,
                  int64_t t, float clip_coef) {
  const float b1 = float(p.beta1), b2 = float(p.beta2);
  const double bc1 = 1.0 - std::pow(p.beta1, double(t)), bc2 = 1.0 - std::pow(p.beta2, double(t));
  const float inv_bc1 = float(1.0 / bc1), inv_bc2 = float(1.0 / bc2);
  const float lr = float(p.lr), eps = float(p.eps), wd = float(p.weight_decay);
  parallel_for(n, 1 << 16, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; i++) {
      const float gi = g[i] * clip_coef;
      m[i] = b1 * m[i] + (1.0f - b1) * gi;
      v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
      const float mh = m[i] * inv_bc1, vh = v[i] * inv_bc2;
      w[i] -= lr * (mh / (std::sqrt(vh) + eps) + wd * w[i]);
    }
  });
}

double sum_squares(int64_t n, const float* g) {
  const int64_t grain = 1 << 16;
  const int64_t nchunks = (n + grain - 1) / grain;
  std::vector<double> part(size_t(std::max<int64_t>(1, nchunks)), 0.0);
  parallel_chunks(nchunks, [&](int64_t c) {
    double s = 0;
    const int64_t e = std::min(n, (c + 1) * grain);
    for (int64_t i = c * grain; i < e; i++) s += double(g[i]) * double(g[i]);
    part[size_t(c)] = s;
  });
  double s = 0;
  for (double x : part) s += x;
  return s;
}

double grad_norm(int64_t n, const float* g) { return std::sqrt(sum_squares(n, g)); }

}  // namespace dw
