// Runs every CUDA kernel body (cuda/bodies.h) on the CPU, over random inputs, and compares it
// with the CPU step's layer function for the same math (kernels/*.h), and the row-major →
// column-major GEMM mapping (cuda/gemm_map.h) through CBLAS's column-major interface. Built in
// every addon, with or without nvcc: it checks the arithmetic the device will run, here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dw::cuda {

struct BodyCheck {
  std::string name;     // "rmsnorm.forward", ...
  double err = 0;       // max |body − cpu| / max |cpu| over every output of the check
  double tol = 0;       // what the check allows (0: bit-exact)
  int64_t values = 0;   // outputs compared
  std::string note;     // why the check could not run ("" when it ran); err is then infinite
};

std::vector<BodyCheck> host_check(uint64_t seed);

}  // namespace dw::cuda
