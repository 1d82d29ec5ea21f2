// DW_HD marks arithmetic compiled for both sides: `__host__ __device__` under nvcc, plain
// inline C++ under g++. The kernel bodies (cuda/bodies.h) are written once with it, so the
// host build runs the very arithmetic the device runs, and a CPU test can check it.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DW_HD __host__ __device__ __forceinline__
#else
#define DW_HD inline
#endif

namespace dw::cuda {

DW_HD uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

DW_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

}  // namespace dw::cuda
