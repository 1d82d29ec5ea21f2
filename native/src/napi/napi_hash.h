// Block checksums (BLAKE3): blake3Blocks. See napi_hash.cc.
#pragma once
#include <napi.h>

namespace dw {
void registerHash(Napi::Env env, Napi::Object exports);
}  // namespace dw
