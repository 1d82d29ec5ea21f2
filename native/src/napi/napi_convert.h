// upcastToF32(src: Uint16Array, dtype: 'bf16' | 'f16', dst: Float32Array, dstOffset, portable)
// and convertInfo() → { f16c }, declared in src/native/addon.ts (kernels/convert.h does the work).
#pragma once
#include <napi.h>

namespace dw {

void registerConvert(Napi::Env env, Napi::Object exports);

}  // namespace dw
