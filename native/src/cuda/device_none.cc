// device_info() and device_check() of an addon built without nvcc (the CUDA build has cuda/device.cu instead).
#include "cuda/device.h"

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

}  // namespace dw::cuda
#endif
