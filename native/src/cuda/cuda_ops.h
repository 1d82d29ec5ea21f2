// The resident step's CUDA backend (step/step_ops.h): device memory, a compute stream, the
// kernels of cuda/kernels.h and cuBLAS (loaded at run time) through col_major_gemm. Uploads go
// through a pinned staging buffer in two halves; the batch's on a second stream, beside the
// previous step's AdamW. Downloads wait for the compute stream.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "cuda/host_check.h"

#include "step/step_ops.h"

namespace dw::cuda {

// The CUDA instance on `device`; throws std::runtime_error naming why there is none (an addon
// built without nvcc, no usable device, no cuBLAS).
std::unique_ptr<step::StepOps> make_cuda_ops(int device);

// The resident step on CudaOps against the CPU step (cuda/step_device.cu), appended to out.
void check_resident_step(uint64_t seed, std::vector<BodyCheck>& out);

}  // namespace dw::cuda
