// What host_check.cc and device_check.cu share: seeded inputs and the error measure.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cuda/host_check.h"
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
  BodyCheck done(const char* name, double tol) const { return {name, den > 0 ? num / den : num, tol, n, ""}; }
};

}  // namespace dw::cuda
