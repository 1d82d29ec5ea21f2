// bf16/f16 → f32 (see convert.h). The loops are plain integer arithmetic on words so the
// compiler vectorises them (AVX2/AVX-512 clones via DW_CLONES); f16 additionally has an F16C
// path (VCVTPH2PS, 8 halves per instruction), taken only when the compiler can emit it and
// the CPU reports it at run time.
#include "convert.h"

#include <cstring>
#include <string>

#include "napi_util.h"
#include "vec.h"

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

void f16_to_f32(const uint16_t* src, float* dst, int64_t n, bool portable) {
#if DW_F16C_PATH
  if (kHaveF16c && !portable) return f16_loop_f16c(src, dst, n);
#endif
  f16_loop(src, dst, n);
}

namespace {

// Synchronous: a step's batch is a few MB, converted in about a millisecond (bench/convert.bench.ts).
Napi::Value UpcastToF32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Napi::Value s = info[0];
  if (!s.IsTypedArray() || s.As<Napi::TypedArray>().TypedArrayType() != napi_uint16_array)
    throw_invalid(env, "src must be a Uint16Array (the raw bf16/f16 words)");
  auto src = s.As<Napi::Uint16Array>();
  if (!info[1].IsString()) throw_invalid(env, "dtype must be \"bf16\" or \"f16\"");
  const std::string dtype = info[1].As<Napi::String>().Utf8Value();
  if (dtype != "bf16" && dtype != "f16") throw_invalid(env, "dtype must be \"bf16\" or \"f16\", got \"" + dtype.substr(0, 16) + "\"");
  auto dst = need_typed<float>(env, info[2], "dst", -1);
  const int64_t n = int64_t(src.ElementLength()), cap = int64_t(dst.ElementLength());
  const int64_t off = need_int(env, info[3], "dstOffset", 0, cap);
  if (off + n > cap)
    throw_invalid(env, "dst has " + std::to_string(cap) + " elements: dstOffset " + std::to_string(off) + " + src.length " +
                           std::to_string(n) + " does not fit");
  const bool portable = info.Length() > 4 && info[4].ToBoolean().Value();
  const uint16_t* sp = src.Data();
  float* dp = dst.Data() + off;
  const auto s0 = reinterpret_cast<uintptr_t>(sp), d0 = reinterpret_cast<uintptr_t>(dp);
  if (n > 0 && s0 < d0 + uintptr_t(n) * 4 && d0 < s0 + uintptr_t(n) * 2) throw_invalid(env, "src and dst overlap");
  if (dtype == "bf16") bf16_to_f32(sp, dp, n);
  else f16_to_f32(sp, dp, n, portable);
  return env.Undefined();
}

Napi::Value ConvertInfo(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("f16c", have_f16c());
  return o;
}

}  // namespace

void registerConvert(Napi::Env env, Napi::Object exports) {
  exports.Set("upcastToF32", Napi::Function::New(env, UpcastToF32, "upcastToF32"));
  exports.Set("convertInfo", Napi::Function::New(env, ConvertInfo, "convertInfo"));
}

}  // namespace dw
