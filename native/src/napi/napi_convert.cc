// N-API glue of the bf16/f16 → f32 kernels (kernels/convert.h): upcastToF32 and convertInfo,
// declared in src/native/addon.ts.
#include <napi.h>

#include <string>

#include "kernels/convert.h"
#include "napi/napi_util.h"

namespace dw {

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
