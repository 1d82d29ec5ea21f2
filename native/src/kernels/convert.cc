// bf16/f16 → f32 (see kernels/convert.h). The loops are plain integer arithmetic on words so the
// compiler vectorises them (AVX2/AVX-512 clones via DW_CLONES); f16 additionally has an F16C
// path (VCVTPH2PS, 8 halves per instruction), taken only when the compiler can emit it and
// the CPU reports it at run time.
#include "kernels/convert.h"

#include <cstring>

#include "kernels/vec.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DW_F16C_PATH 1
#else
#define DW_F16C_PATH 0
#endif

namespace dw {
namespace {

// One half to the bits of an f32, branch-free (selects) so the loop around it vectorises.
inline uint32_t half_bits_to_f32_bits(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;  // exponent and mantissa
  const uint32_t mant = em & 0x3ffu;
  // Normal: rebias the exponent (15 → 127) and widen the mantissa (10 → 23 bits).
  const uint32_t normal = (em << 13) + ((127u - 15u) << 23);
  // Inf/NaN: exponent all ones; a NaN's payload is kept and its quiet bit set.
  const uint32_t special = 0x7f800000u | (mant << 13) | (mant ? 0x00400000u : 0u);
  // Zero/subnormal: mant · 2^-24, exact in f32 (every f16 subnormal is a normal f32).
  float sub_f = float(em) * 0x1p-24f;
  uint32_t sub;
  std::memcpy(&sub, &sub_f, 4);
  const uint32_t mag = em >= 0x7c00u ? special : (em >= 0x0400u ? normal : sub);
  return sign | mag;
}

DW_CLONES void bf16_loop(const uint16_t* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const uint32_t b = uint32_t(src[i]) << 16;
    std::memcpy(dst + i, &b, 4);
  }
}

DW_CLONES void f32_to_bf16_loop(const float* __restrict src, uint16_t* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    uint32_t x;
    std::memcpy(&x, src + i, 4);
    const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    const uint32_t nan = (x >> 16) | 0x40u;
    dst[i] = uint16_t((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  }
}

DW_CLONES void f16_loop(const uint16_t* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const uint32_t b = half_bits_to_f32_bits(src[i]);
    std::memcpy(dst + i, &b, 4);
  }
}

#if DW_F16C_PATH
__attribute__((target("avx,f16c"))) void f16_loop_f16c(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  if (i < n) {  // the tail through the same instruction, so every element rounds alike
    uint16_t h[8] = {0};
    float f[8];
    std::memcpy(h, src + i, size_t(n - i) * 2);
    _mm256_storeu_ps(f, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h))));
    std::memcpy(dst + i, f, size_t(n - i) * 4);
  }
}
#endif

bool detect_f16c() {
#if DW_F16C_PATH
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

const bool kHaveF16c = detect_f16c();

}  // namespace

bool have_f16c() { return kHaveF16c; }

void bf16_to_f32(const uint16_t* src, float* dst, int64_t n) { bf16_loop(src, dst, n); }

void f32_to_bf16(const float* src, uint16_t* dst, int64_t n) { f32_to_bf16_loop(src, dst, n); }

void f16_to_f32(const uint16_t* src, float* dst, int64_t n, bool portable) {
#if DW_F16C_PATH
  if (kHaveF16c && !portable) return f16_loop_f16c(src, dst, n);
#endif
  f16_loop(src, dst, n);
}

}  // namespace dw
