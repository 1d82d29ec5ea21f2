#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/blas.h"
#include "kernels/parallel.h"
#include "kernels/vec.h"

namespace dw {

void AttnScratch::ensure(const AttnShape& sh) {
  int64_t tb = std::min<int64_t>(kAttnTile, sh.Tq);
  size_t need = size_t(tb * (sh.q0 + sh.Tq));
  if (s.size() < need) s.resize(need);
  if (dp.size() < need) dp.resize(need);
  size_t ne = size_t(tb * std::max<int64_t>(1, sh.nextra));
  if (a.size() < ne) a.resize(ne);
  if (da.size() < ne) da.resize(ne);
}

void attention_forward(const AttnShape& sh, const AttnHead& hd, AttnScratch& sc) {
  sc.ensure(sh);
  const int64_t d = sh.d, ne = sh.nextra;
  for (int64_t r0 = 0; r0 < sh.Tq; r0 += kAttnTile) {
    const int64_t rt = std::min(kAttnTile, sh.Tq - r0);
    const int64_t kend = sh.q0 + r0 + rt;  // keys this tile can see
    float* S = sc.s.data();
    gemm_nt(rt, kend, d, sh.scale, hd.q + r0 * hd.ldq, hd.ldq, hd.k, hd.ldk, 0.0f, S, kend);
    parallel_for(rt, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; i++) {
        const int64_t ri = r0 + i, nk = sh.q0 + ri + 1;
        float* srow = S + i * kend;
        float* arow = sc.a.data() + i * ne;
        const float* qi = hd.q + ri * hd.ldq;
        float m = vmax(srow, nk);
        for (int64_t j = 0; j < ne; j++) {
          arow[j] = sh.scale * vdot(qi, hd.ek[j] + ri * hd.lde, d);
          m = std::max(m, arow[j]);
        }
        float sum = vexp_sub_sum(srow, srow, m, nk);
        for (int64_t j = 0; j < ne; j++) {
          arow[j] = fast_expf(arow[j] - m);
          sum += arow[j];
        }
        const float inv = 1.0f / sum;
        vscale(srow, inv, srow, nk);
        std::fill(srow + nk, srow + kend, 0.0f);
        for (int64_t j = 0; j < ne; j++) arow[j] *= inv;
        hd.lse[ri] = m + std::log(sum);
      }
    });
    gemm_nn(rt, d, kend, 1.0f, S, kend, hd.v, hd.ldv, 0.0f, hd.o + r0 * hd.ldo, hd.ldo);
    if (ne > 0)
      for (int64_t i = 0; i < rt; i++) {
        const int64_t ri = r0 + i;
        for (int64_t j = 0; j < ne; j++)
          vaxpy(hd.o + ri * hd.ldo, sc.a[size_t(i * ne + j)], hd.ev[j] + ri * hd.lde, d);
      }
  }
}

void attention_backward(const AttnShape& sh, const AttnHead& hd, const AttnGrad& g, AttnScratch& sc) {
  sc.ensure(sh);
  const int64_t d = sh.d, ne = sh.nextra;
  const float scale = sh.scale;
  for (int64_t r0 = 0; r0 < sh.Tq; r0 += kAttnTile) {
    const int64_t rt = std::min(kAttnTile, sh.Tq - r0);
    const int64_t kend = sh.q0 + r0 + rt;
    float* P = sc.s.data();
    float* dS = sc.dp.data();
    const float* qt = hd.q + r0 * hd.ldq;
    const float* dot = g.dout + r0 * g.lddo;
    gemm_nt(rt, kend, d, scale, qt, hd.ldq, hd.k, hd.ldk, 0.0f, P, kend);   // scores again
    gemm_nt(rt, kend, d, 1.0f, dot, g.lddo, hd.v, hd.ldv, 0.0f, dS, kend);  // dP = dO·Vᵀ
    parallel_for(rt, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; i++) {
        const int64_t ri = r0 + i, nk = sh.q0 + ri + 1;
        const float lse = hd.lse[ri];
        const float* qi = hd.q + ri * hd.ldq;
        const float* doi = g.dout + ri * g.lddo;
        float* prow = P + i * kend;
        float* dsrow = dS + i * kend;
        const float D = vdot(doi, hd.o + ri * hd.ldo, d);
        vexp_sub_sum(prow, prow, lse, nk);
        for (int64_t s = 0; s < nk; s++) dsrow[s] = prow[s] * (dsrow[s] - D);
        std::fill(prow + nk, prow + kend, 0.0f);
        std::fill(dsrow + nk, dsrow + kend, 0.0f);
        float* arow = sc.a.data() + i * ne;
        float* darow = sc.da.data() + i * ne;
        for (int64_t j = 0; j < ne; j++) {
          const float a = fast_expf(scale * vdot(qi, hd.ek[j] + ri * hd.lde, d) - lse);
          arow[j] = a;
          darow[j] = a * (vdot(doi, hd.ev[j] + ri * hd.lde, d) - D);  // d(score_j)
        }
      }
    });
    gemm_tn(kend, d, rt, 1.0f, P, kend, dot, g.lddo, 1.0f, g.dv, g.lddv);            // dV += Pᵀ·dO
    gemm_nn(rt, d, kend, scale, dS, kend, hd.k, hd.ldk, 0.0f, g.dq + r0 * g.lddq, g.lddq);  // dQ
    gemm_tn(kend, d, rt, scale, dS, kend, qt, hd.ldq, 1.0f, g.dk, g.lddk);           // dK += dSᵀ·Q
    if (ne > 0)
      for (int64_t i = 0; i < rt; i++) {
        const int64_t ri = r0 + i;
        const float* doi = g.dout + ri * g.lddo;
        const float* qi = hd.q + ri * hd.ldq;
        float* dqi = g.dq + ri * g.lddq;
        for (int64_t j = 0; j < ne; j++) {
          const float a = sc.a[size_t(i * ne + j)], ds = sc.da[size_t(i * ne + j)];
          vaxpy(g.dev[j] + ri * g.ldde, a, doi, d);
          vaxpy(dqi, scale * ds, hd.ek[j] + ri * hd.lde, d);
          vaxpy(g.dek[j] + ri * g.ldde, scale * ds, qi, d);
        }
      }
  }
}

double attention_flops(const AttnShape& sh, bool fwd) {
  double f = 0;
  for (int64_t r0 = 0; r0 < sh.Tq; r0 += kAttnTile) {
    const int64_t rt = std::min(kAttnTile, sh.Tq - r0);
    f += 2.0 * double(rt) * double(sh.q0 + r0 + rt) * double(sh.d);
  }
  return f * (fwd ? 2 : 5);
}

}  // namespace dw
