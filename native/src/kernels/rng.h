// Deterministic random numbers, identical on every machine: splitmix64 for the stream,
// Box–Muller (computed in double) for normals.
#pragma once
#include <cmath>
#include <cstdint>

namespace dw {

struct SplitMix64 {
  uint64_t s;
  explicit SplitMix64(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // uniform in (0, 1]: never 0, so log() is safe
  double uniform() { return (double((next() >> 11) + 1)) * (1.0 / 9007199254740992.0); }
};

// One stream per (seed, stream id), so tensors can be generated independently and in any order.
inline uint64_t stream_seed(uint64_t seed, uint64_t stream) {
  SplitMix64 m(seed ^ (stream * 0xd1b54a32d192ed03ULL + 0x8cb92ba72f3d8dd7ULL));
  return m.next();
}

// out[i] = mean + std·N(0,1), i in [0,n), from stream (seed, stream).
inline void fill_normal(float* out, int64_t n, uint64_t seed, uint64_t stream, double mean, double std) {
  SplitMix64 r(stream_seed(seed, stream));
  const double two_pi = 6.283185307179586476925286766559;
  for (int64_t i = 0; i < n; i += 2) {
    double u1 = r.uniform(), u2 = r.uniform();
    double rad = std::sqrt(-2.0 * std::log(u1));
    out[i] = float(mean + std * rad * std::cos(two_pi * u2));
    if (i + 1 < n) out[i + 1] = float(mean + std * rad * std::sin(two_pi * u2));
  }
}

}  // namespace dw
