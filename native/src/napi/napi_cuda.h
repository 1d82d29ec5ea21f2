// cudaInfo() → what this addon can do with CUDA here (built with nvcc, driver, devices, and
// whether cuBLAS and NCCL load), cudaHostCheck(seed) → every CUDA kernel body run on the CPU
// against the CPU step (cuda/host_check.h), and cudaDeviceCheck(seed) → every kernel run on the
// GPU against the CPU step (cuda/device.h). Declared in src/native/addon.ts.
#pragma once
#include <napi.h>

namespace dw {

void registerCuda(Napi::Env env, Napi::Object exports);

}  // namespace dw
