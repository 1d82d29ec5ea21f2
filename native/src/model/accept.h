// Accept length of the draft against the synthetic target (docs/model-math.md "Accept
// length"): greedy speculative decoding, K = the draft's TTT steps proposals per verify step.
// The target runs once per call: one KV-cached rollout of all prompts (greedy continuation
// and aux in the same pass); the draft then replays the verify steps against it.
#pragma once
#include <cstdint>
#include <vector>

#include "model/draft_model.h"
#include "model/target_model.h"

namespace dw {

struct AcceptResult {
  double accept_length = 0;  // mean over verify steps of (accepted + 1)
  int64_t verify_steps = 0;
  int64_t generated = 0;     // tokens produced (per prompt ≥ max_new, may overshoot by ≤ K)
};

AcceptResult accept_length(DraftModel& draft, TargetModel& target, const std::vector<std::vector<int32_t>>& prompts,
                           int64_t max_new);

}  // namespace dw
