// device_info() and device_check() of an addon built without nvcc (the CUDA build has cuda/device.cu instead).
#include "cuda/cuda_ops.h"
#include "cuda/device.h"

#include <stdexcept>

#if !DRAFTWIRE_HAVE_CUDA
namespace dw::cuda {

constexpr const char* kNotBuilt = "this addon was built without CUDA (nvcc was not found when it was built)";

DeviceInfo device_info() {
  DeviceInfo d;
  d.error = kNotBuilt;
  return d;
}

std::vector<BodyCheck> device_check(uint64_t, std::string* error) {
  *error = kNotBuilt;
  return {};
}

std::unique_ptr<step::StepOps> make_cuda_ops(int) { throw std::runtime_error(kNotBuilt); }

StepBench step_bench(const DraftConfig&, int64_t, int64_t, int, int, bool, std::string* error) {
  *error = kNotBuilt;
  StepBench r;
  r.unavailable = true;
  return r;
}

}  // namespace dw::cuda
#endif
