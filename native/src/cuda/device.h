// What this addon can do with CUDA here: whether it was built with nvcc, and, when it was,
// the runtime, the driver and the devices this machine has. A CUDA build on a machine without
// a driver loads and runs its CPU path; `error` then says why no device is usable.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/host_check.h"
#include "model/draft_config.h"

namespace dw::cuda {

struct GpuInfo {
  std::string name;
  int cc_major = 0, cc_minor = 0, sms = 0;
  double memory_gib = 0;
};

struct DeviceInfo {
  bool built = false;         // compiled with nvcc (DRAFTWIRE_HAVE_CUDA)
  std::string arch;           // the device code compiled in ("sm_90"), "" when not built
  int runtime_version = 0;    // CUDA runtime linked in (e.g. 13000), 0 when not built
  int driver_version = 0;     // the driver's (0: no driver)
  std::vector<GpuInfo> gpus;  // empty when no device is usable
  std::string error;          // why there is no usable device ("" when there is)
};

DeviceInfo device_info();

// Runs every kernel of cuda/kernels.h on device 0 over random inputs and compares it with the
// CPU step's layer function (which host_check() compares with the kernel's body), the cuBLAS
// GEMMs through col_major_gemm (fp32, and bf16 inputs with fp32 accumulation) with the CPU's
// row-major ones, and a 1-rank NCCL all-reduce. Without a usable device (or cuBLAS), returns
// nothing and says why in `error`.
std::vector<BodyCheck> device_check(uint64_t seed, std::string* error);

// The resident step's speed on device 0: `warmup` steps, then `reps` timed training steps
// (forward, backward, AdamW) of a random model and batch [B, T]. Without a usable device,
// returns nothing and says why in `error`.
struct StepBench {
  double ms_per_step = 0, tokens_per_sec = 0, setup_ms = 0, loss = 0;
  double device_gib = 0;  // device memory in use after the steps
  bool unavailable = false;  // no usable device or cuBLAS (error says which); else error is a failure
};
StepBench step_bench(const DraftConfig& c, int64_t B, int64_t T, int reps, int warmup, bool bf16, std::string* error);

}  // namespace dw::cuda
