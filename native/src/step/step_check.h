// The resident step on a backend against DraftModel, the CPU step: the same random model and
// batches (one with a mask and short samples, one without), two training steps and an
// evaluation, comparing the metrics, every parameter's gradient, the AdamW-updated weights
// and moments. host_check runs it on HostOps; device_check on CudaOps.
#pragma once
#include <cstdint>
#include <vector>

#include "cuda/host_check.h"
#include "model/draft_config.h"
#include "step/step_ops.h"

namespace dw::step {

// A small EAGLE3 draft: GQA (4 heads over 2 kv heads), K = 3 TTT steps.
DraftConfig check_config();

// Checks named "step(<ops name>).<what>", each err the worst relative difference over its
// values (per tensor for the gradients and weights), against `tol`.
std::vector<cuda::BodyCheck> resident_step_check(StepOps& ops, const DraftConfig& c, int64_t B, int64_t T,
                                                 uint64_t seed, double tol);

}  // namespace dw::step
