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

// What the small check model's step with bf16 matrix products (fp32 accumulation, fp32 weights
// and moments) may differ from the fp32 CPU step by, in the measure below, after two AdamW
// steps, every target token in the draft vocabulary (worst over 60 seeds: gradients 1.7e-2,
// moments 3.5e-3, loss 1.3e-5).
constexpr double kBf16StepTol = 5e-2;
// What a device's bf16 step may differ from the host's bf16 step by (the same rounded operands;
// the sums in another order).
constexpr double kBf16DeviceTol = 1e-3;

// A small EAGLE3 draft: GQA (4 heads over 2 kv heads), K = 3 TTT steps.
DraftConfig check_config();

// Checks named "step(<ops>[ vs <ref>]).<what>", each err the worst relative difference over its
// values (per tensor for the gradients and weights), against `tol`. The reference is DraftModel,
// or the resident step on `ref` when given (a device's bf16 products against the same rounding
// on the host: bf16 against fp32 is discontinuous, as a rounded target logit can move a row's
// argmax in or out of the draft vocabulary).
std::vector<cuda::BodyCheck> resident_step_check(StepOps& ops, StepOps* ref, const DraftConfig& c, int64_t B,
                                                 int64_t T, uint64_t seed, double tol);

}  // namespace dw::step
