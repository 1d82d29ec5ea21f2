// A training batch handed to DraftModel.step / evaluate / logits, in one of two forms:
// - stacked: ids/aux/last/mask arrays of the whole batch (this rank's slice when sharded),
//   copied on the JS thread so the caller may reuse its buffers while the step runs;
// - samples: the per-sample feature arrays the feature store returned (f32, bf16 or f16),
//   held, not copied, until the worker gathers them into the step's batch off the JS thread,
//   zero-padding each to the batch's positions, upcasting 16-bit floats and taking this rank's
//   sequence-parallel slice as it copies (the one copy between the store's read and the step).
#pragma once
#include <napi.h>

#include <cstdint>
#include <vector>

#include "model/draft_model.h"

namespace dw {

struct BatchCopy {
  std::vector<int32_t> ids;
  std::vector<float> aux, last;
  std::vector<uint8_t> mask;
  std::vector<int32_t> lengths;  // empty: every sample is the whole sequence
  int64_t B = 0, T = 0, span = 0;

  // The samples form: borrowed views of each sample's arrays (kept alive by `keep`).
  enum class Dtype { f32, bf16, f16 };
  struct Part {
    const int32_t* ids;
    const uint8_t* mask;
    const void* aux;
    const void* last;
    Dtype aux_dtype, last_dtype;
    int64_t len;  // the sample's positions, <= the batch's
  };
  std::vector<Part> parts;
  std::vector<Napi::Reference<Napi::Value>> keep;
  bool from_samples = false;
  int64_t t0 = 0, T_global = 0, H = 0;

  // Fills ids/aux/last/mask/lengths from `parts` (a no-op for the stacked form). Off the JS
  // thread: reads only the borrowed arrays, which `keep` holds until the worker is destroyed.
  void gather();
  DraftBatch view() const;
};

// The batch argument, validated (sizes, dtypes; values are checked by DraftModel::check_batch).
BatchCopy parse_batch(Napi::Env env, Napi::Value v, const DraftModel& m);

}  // namespace dw
