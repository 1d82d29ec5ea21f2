// device_info() of the CUDA build: asks the statically linked runtime what this machine has.
#include <cuda_runtime.h>

#include "cuda/device.h"

namespace dw::cuda {

#define DW_STR2(x) #x
#define DW_STR(x) DW_STR2(x)

DeviceInfo device_info() {
  DeviceInfo d;
  d.built = true;
  d.arch = "sm_" DW_STR(DRAFTWIRE_CUDA_ARCH);
  cudaRuntimeGetVersion(&d.runtime_version);
  cudaDriverGetVersion(&d.driver_version);  // 0 when no driver is installed
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    d.error = std::string("no usable CUDA device: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
    cudaGetLastError();  // clear it: the CPU path goes on
    return d;
  }
  for (int i = 0; i < n; i++) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    d.gpus.push_back({p.name, p.major, p.minor, p.multiProcessorCount, double(p.totalGlobalMem) / double(1ull << 30)});
  }
  if (d.gpus.empty()) d.error = "no CUDA device reported its properties";
  return d;
}

}  // namespace dw::cuda
