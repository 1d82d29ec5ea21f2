#include "kernels/loss.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "collectives/comm.h"
#include "kernels/blas.h"
#include "kernels/parallel.h"
#include "kernels/vec.h"

namespace dw {

int32_t target_row(const float* z, int64_t V, const int32_t* d2t, const int32_t* t2d, int64_t Vd, float* p) {
  const int64_t y = vargmax(z, V);
  for (int64_t j = 0; j < Vd; j++) p[j] = z[d2t[j]];
  const float m = vmax(p, Vd);
  const float s = vexp_sub_sum(p, p, m, Vd);
  vscale(p, 1.0f / s, p, Vd);
  return y >= 0 ? t2d[y] : -1;
}

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
        tgt[row] = target_row(z + i * V, V, d2t, t2d, Vd, p + row * Vd);
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

void target_distribution_vp(int64_t N, const uint8_t* need, const float* last, int64_t H, const float* Wt,
                            int64_t v0, int64_t v1, const float* Wtd, int64_t Vl, const int32_t* t2d, float* p,
                            int32_t* tgt, std::vector<float>& scratch, Comm* tp) {
  const int64_t C = 512, Vs = v1 - v0;
  std::vector<int64_t> rows;
  for (int64_t r = 0; r < N; r++) {
    tgt[r] = -1;
    if (need[r]) rows.push_back(r);
  }
  const int64_t nr = int64_t(rows.size());
  if (nr == 0) return;  // the same on every TP rank: they hold the same rows
  scratch.resize(static_cast<size_t>(C * H + C * Vs + C * Vl));
  float* xb = scratch.data();
  float* z = xb + C * H;
  float* zd = z + C * Vs;
  std::vector<float> mm(static_cast<size_t>(2 * nr));  // [row max of z | row max of z[d2t]]
  std::vector<int64_t> arg(static_cast<size_t>(nr));
  for (int64_t c0 = 0; c0 < nr; c0 += C) {
    const int64_t n = std::min(C, nr - c0);
    for (int64_t i = 0; i < n; i++) std::copy_n(last + rows[size_t(c0 + i)] * H, H, xb + i * H);
    if (Vs > 0) gemm_nt(n, Vs, H, 1.0f, xb, H, Wt + v0 * H, H, 0.0f, z, Vs);
    gemm_nt(n, Vl, H, 1.0f, xb, H, Wtd, H, 0.0f, zd, Vl);
    parallel_for(n, 8, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; i++) {
        const int64_t a = Vs > 0 ? vargmax(z + i * Vs, Vs) : -1;
        mm[size_t(c0 + i)] = a >= 0 ? z[i * Vs + a] : -std::numeric_limits<float>::infinity();
        arg[size_t(c0 + i)] = a >= 0 ? v0 + a : -1;
        float* pr = p + rows[size_t(c0 + i)] * Vl;
        std::copy_n(zd + i * Vl, Vl, pr);
        mm[size_t(nr + c0 + i)] = vmax(pr, Vl);
      }
    });
  }
  const std::vector<float> local_max(mm.begin(), mm.begin() + nr);
  if (tp) tp->allReduce(mm.data(), mm.size(), ReduceOp::Max);
  // argmax over the whole vocabulary: the lowest index among the ranks holding the maximum
  std::vector<double> cand(static_cast<size_t>(nr)), s(static_cast<size_t>(nr));
  for (int64_t i = 0; i < nr; i++)
    cand[size_t(i)] = (arg[size_t(i)] >= 0 && local_max[size_t(i)] == mm[size_t(i)])
                          ? -double(arg[size_t(i)])
                          : -std::numeric_limits<double>::infinity();
  parallel_for(nr, 8, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
      float* pr = p + rows[size_t(i)] * Vl;
      s[size_t(i)] = double(vexp_sub_sum(pr, pr, mm[size_t(nr + i)], Vl));
    }
  });
  if (tp) {
    tp->allReduce(cand.data(), cand.size(), ReduceOp::Max);
    tp->allReduce(s.data(), s.size(), ReduceOp::Sum);
  }
  parallel_for(nr, 8, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
      const int64_t row = rows[size_t(i)];
      const double y = -cand[size_t(i)];
      tgt[row] = std::isfinite(y) ? t2d[int64_t(y)] : -1;
      float* pr = p + row * Vl;
      vscale(pr, float(1.0 / s[size_t(i)]), pr, Vl);
    }
  });
}

void soft_cross_entropy_vp(int64_t n, int64_t Vl, int64_t j0, float* logits, const float* p, const int32_t* prow,
                           const float* w, const int32_t* tgt, float grad_scale, double* ce, double* hit, Comm* tp) {
  if (n == 0) return;  // the same on every TP rank
  std::vector<float> m(static_cast<size_t>(n));
  std::vector<int64_t> am(static_cast<size_t>(n));
  std::vector<double> sums(static_cast<size_t>(3 * n)), cand(static_cast<size_t>(n));  // sums: [Σexp | Σp·l | Σp]
  parallel_for(n, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const float* l = logits + r * Vl;
      const float* pr = p + int64_t(prow[r]) * Vl;
      am[size_t(r)] = vargmax(l, Vl);
      m[size_t(r)] = l[am[size_t(r)]];
      sums[size_t(n + r)] = vdot(pr, l, Vl);
      sums[size_t(2 * n + r)] = vsum(pr, Vl);
    }
  });
  std::vector<float> gm(m);
  if (tp) tp->allReduce(gm.data(), gm.size(), ReduceOp::Max);
  parallel_for(n, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      float* l = logits + r * Vl;
      const float g = gm[size_t(r)];
      cand[size_t(r)] = m[size_t(r)] == g ? -double(j0 + am[size_t(r)]) : -std::numeric_limits<double>::infinity();
      if (grad_scale != 0.0f) {
        sums[size_t(r)] = vexp_sub_sum(l, l, g, Vl);  // keep exp(l − max) for the gradient
      } else {
        double s = 0;
        const int64_t Bk = 256;
        float buf[Bk];
        for (int64_t j = 0; j < Vl; j += Bk) s += vexp_sub_sum(buf, l + j, g, std::min(Bk, Vl - j));
        sums[size_t(r)] = s;
      }
    }
  });
  if (tp) {
    tp->allReduce(sums.data(), sums.size(), ReduceOp::Sum);
    tp->allReduce(cand.data(), cand.size(), ReduceOp::Max);
  }
  parallel_for(n, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const double S = sums[size_t(r)], pl = sums[size_t(n + r)], sp = sums[size_t(2 * n + r)];
      const float wr = w[r];
      const double lse = double(gm[size_t(r)]) + std::log(S);
      ce[r] = double(wr) * (lse * sp - pl);
      hit[r] = (-cand[size_t(r)] == double(tgt[r])) ? double(wr) : 0.0;
      if (grad_scale != 0.0f) {
        float* l = logits + r * Vl;
        const float* pr = p + int64_t(prow[r]) * Vl;
        const float a = float(double(grad_scale) * wr * sp / S), b = grad_scale * wr;
        for (int64_t j = 0; j < Vl; j++) l[j] = a * l[j] - b * pr[j];
      }
    }
  });
}

}  // namespace dw
