// What host_check.cc and device_check.cu share: seeded inputs and the error measure.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cuda/hd.h"
#include "cuda/host_check.h"
#include "kernels/attention.h"
#include "kernels/blas.h"
#include "kernels/rng.h"

namespace dw::cuda {

using Vec = std::vector<float>;
constexpr double kTol = 2e-5;  // float rounding order, and expf vs the CPU's polynomial exp

inline Vec randn(int64_t n, uint64_t seed, uint64_t stream, double sd = 1.0, double mean = 0.0) {
  Vec v(static_cast<size_t>(n));
  fill_normal(v.data(), n, seed, stream, mean, sd);
  return v;
}

// max |got − want| / max |want|, over everything added (a NaN on one side only: infinite).
struct Diff {
  double num = 0, den = 0;
  int64_t n = 0;
  void add(double got, double want) {
    num = std::max(num, std::isnan(got) != std::isnan(want) ? std::numeric_limits<double>::infinity() : std::fabs(got - want));
    den = std::max(den, std::fabs(want));
    n++;
  }
  void add(const float* got, const float* want, int64_t k) { for (int64_t i = 0; i < k; i++) add(got[i], want[i]); }
  BodyCheck done(const std::string& name, double tol) const { return {name, den > 0 ? num / den : num, tol, n, ""}; }
};

inline float dot(const float* a, const float* b, int64_t d) {
  float s = 0;
  for (int64_t i = 0; i < d; i++) s += a[i] * b[i];
  return s;
}

// One attention head with TTT extras: random inputs of `sh`'s sizes and the CPU step's forward
// and backward of them (kernels/attention.h), the reference both checks compare with.
struct AttnCase {
  AttnShape sh;
  int64_t T, d, ne, Tq;
  Vec q, k, v, dout, o, lse, dq, dk, dv;
  std::vector<Vec> ek, ev, dek, dev;
  AttnCase(const AttnShape& shape, uint64_t seed)
      : sh(shape), T(shape.q0 + shape.Tq), d(shape.d), ne(shape.nextra), Tq(shape.Tq),
        q(randn(Tq * d, seed, 13)), k(randn(T * d, seed, 14)), v(randn(T * d, seed, 15)), dout(randn(Tq * d, seed, 16)),
        o(Tq * d), lse(Tq), dq(Tq * d), dk(T * d, 0.0f), dv(T * d, 0.0f), dek(ne, Vec(Tq * d, 0.0f)), dev(ne, Vec(Tq * d, 0.0f)) {
    std::vector<const float*> ekp, evp;
    std::vector<float*> dekp, devp;
    for (int64_t j = 0; j < ne; j++) {
      ek.push_back(randn(Tq * d, seed, 17 + uint64_t(j)));
      ev.push_back(randn(Tq * d, seed, 27 + uint64_t(j)));
    }
    for (int64_t j = 0; j < ne; j++) {
      ekp.push_back(ek[j].data()); evp.push_back(ev[j].data());
      dekp.push_back(dek[j].data()); devp.push_back(dev[j].data());
    }
    AttnHead hd{q.data(), d, k.data(), d, v.data(), d, ekp.data(), evp.data(), d, o.data(), d, lse.data()};
    AttnGrad gr{dout.data(), d, dq.data(), d, dk.data(), d, dv.data(), d, dekp.data(), devp.data(), d};
    AttnScratch sc;
    attention_forward(sh, hd, sc);
    attention_backward(sh, hd, gr, sc);
  }
};

// A row-major GEMM C = 0.75·op(A)·op(B) + 0.5·C of the CPU step (gemm_nt: tb, gemm_nn,
// gemm_tn: ta) on random operands with padded leading dimensions, and its CPU result `want`
// (padding columns included: a mapped call must leave them as they were).
struct GemmCase {
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  float alpha = 0.75f, beta = 0.5f;
  Vec A, B, C0, want;
  GemmCase(bool ta_, bool tb_, int64_t M_, int64_t N_, int64_t K_, uint64_t seed, int64_t pad = 3)
      : ta(ta_), tb(tb_), M(M_), N(N_), K(K_), lda((ta_ ? M_ : K_) + pad), ldb((tb_ ? K_ : N_) + pad), ldc(N_ + pad),
        A(randn((ta_ ? K_ : M_) * lda, seed, 40)), B(randn((tb_ ? N_ : K_) * ldb, seed, 41)), C0(randn(M_ * ldc, seed, 42)), want(C0) {
    if (ta) gemm_tn(M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, want.data(), ldc);
    else if (tb) gemm_nt(M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, want.data(), ldc);
    else gemm_nn(M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, want.data(), ldc);
  }
};
// The CPU step's three GEMMs: gemm_nt, gemm_nn, gemm_tn.
struct GemmKind { const char* suffix; bool ta, tb; };
constexpr GemmKind kGemmKinds[] = {{"nt", false, true}, {"nn", false, false}, {"tn", true, false}};

// Every bf16 bit pattern, and f32 inputs for the rounding: random values and the special cases
// (zeros, infinities, NaNs with payloads, subnormals, the largest float, ties to even).
inline std::vector<uint16_t> every_bf16() {
  std::vector<uint16_t> all(65536);
  for (int i = 0; i < 65536; i++) all[size_t(i)] = uint16_t(i);
  return all;
}
inline Vec bf16_rounding_inputs(uint64_t seed, int64_t n) {
  Vec f = randn(n, seed, 7, 10.0);
  for (uint32_t special : {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u, 0xffa12345u,
                           0x00000001u, 0x807fffffu, 0x7f7fffffu, 0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x7f7f8000u})
    f.push_back(bits_f32(special));
  return f;
}

// Bit-exact comparisons: err is the number of outputs whose bits differ.
inline BodyCheck bits_check(const char* name, const float* got, const float* want, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i++) bad += f32_bits(got[i]) != f32_bits(want[i]);
  return {name, double(bad), 0, n, ""};
}
inline BodyCheck bits_check(const char* name, const uint16_t* got, const uint16_t* want, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i++) bad += got[i] != want[i];
  return {name, double(bad), 0, n, ""};
}

}  // namespace dw::cuda
