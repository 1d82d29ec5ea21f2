#include "loss.h"

#include <algorithm>
#include <cmath>

#include "blas.h"
#include "parallel.h"
#include "vec.h"

namespace dw {

void target_distribution(int64_t N, const uint8_t* need, const float* last, int64_t H, const float* Wt,
                         int64_t V, const int32_t* d2t, const int32_t* t2d, int64_t Vd, float* p,
                         int32_t* tgt, std::vector<float>& scratch) {
  const int64_t C = 512;  // rows per GEMM chunk (z is C·V floats)
  scratch.resize(static_cast<size_t>(C * H + C * V));
  float* xb = scratch.data();
  float* z = xb + C * H;
  std::vector<int64_t> rows;
  rows.reserve(static_cast<size_t>(C));
  for (int64_t r = 0; r < N; r++) tgt[r] = -1;
  int64_t r = 0;
  while (r < N) {
    rows.clear();
    for (; r < N && int64_t(rows.size()) < C; r++)
      if (need[r]) rows.push_back(r);
    const int64_t n = int64_t(rows.size());
    if (n == 0) continue;
    for (int64_t i = 0; i < n; i++) std::copy_n(last + rows[size_t(i)] * H, H, xb + i * H);
    gemm_nt(n, V, H, 1.0f, xb, H, Wt, H, 0.0f, z, V);
    parallel_for(n, 8, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; i++) {
        const int64_t row = rows[size_t(i)];
        const float* zi = z + i * V;
        float* pr = p + row * Vd;
        const int64_t y = vargmax(zi, V);
        tgt[row] = y >= 0 ? t2d[y] : -1;
        for (int64_t j = 0; j < Vd; j++) pr[j] = zi[d2t[j]];
        const float m = vmax(pr, Vd);
        const float s = vexp_sub_sum(pr, pr, m, Vd);
        vscale(pr, 1.0f / s, pr, Vd);
      }
    });
  }
}

void soft_cross_entropy(int64_t n, int64_t Vd, float* logits, const float* p, const int32_t* prow,
                        const float* w, const int32_t* tgt, float grad_scale, double* ce, double* hit) {
  parallel_for(n, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      float* l = logits + r * Vd;
      const float* pr = p + int64_t(prow[r]) * Vd;
      const float wr = w[r];
      const int64_t am = vargmax(l, Vd);
      hit[r] = (am == tgt[r]) ? double(wr) : 0.0;
      const float m = vmax(l, Vd);
      const double pl = vdot(pr, l, Vd);
      const double sp = vsum(pr, Vd);
      if (grad_scale != 0.0f) {
        const float s = vexp_sub_sum(l, l, m, Vd);
        const double lse = double(m) + std::log(double(s));
        ce[r] = double(wr) * (lse * sp - pl);
        const float a = grad_scale * wr * float(sp) / s, b = grad_scale * wr;
        for (int64_t j = 0; j < Vd; j++) l[j] = a * l[j] - b * pr[j];
      } else {
        // keep the logits: sum the exponentials without storing them
        double s = 0;
        const int64_t B = 256;
        float buf[B];
        for (int64_t j = 0; j < Vd; j += B) s += vexp_sub_sum(buf, l + j, m, std::min(B, Vd - j));
        const double lse = double(m) + std::log(s);
        ce[r] = double(wr) * (lse * sp - pl);
      }
    }
  });
}

}  // namespace dw
