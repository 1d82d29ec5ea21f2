#include "model/accept.h"

#include "kernels/vec.h"

namespace dw {

AcceptResult accept_length(DraftModel& draft, TargetModel& target, const std::vector<std::vector<int32_t>>& prompts,
                           int64_t max_new) {
  const int64_t K = draft.cfg.ttt, H = draft.cfg.hidden, Vd = draft.cfg.draft_vocab;
  AcceptResult res;
  double total = 0;
  LayerActs seq;
  std::vector<LayerActs> chain(static_cast<size_t>(K));
  std::vector<float> logits0, logits;
  // The target's greedy continuation of every prompt, K tokens past max_new so every
  // proposal has its reference token, with aux of the whole sequence from the same pass (all
  // prompts decode together). Greedy decoding is deterministic, so verifying against it is
  // the same as running the target's verify pass at every step.
  std::vector<RolloutSeq> roll;
  target.rollout(prompts, max_new + K, 0.0, {}, true, false, roll);
  for (size_t b = 0; b < prompts.size(); b++) {
    const int64_t P = int64_t(prompts[b].size());
    const std::vector<int32_t>& x = roll[b].ids;
    const int64_t L = int64_t(x.size());
    const float* aux = roll[b].aux.data();
    // Step 0 at every position s: hin = fc(aux_s), token x_{s+1}. Position n−1 of it is
    // the step-0 proposal for prefix length n (its keys are positions ≤ n−1 only).
    draft.decode_prefill(aux, x.data(), L, seq, logits0);
    int64_t n = P;
    while (n - P < max_new) {
      const int64_t p = n - 1;
      std::vector<int32_t> prop(static_cast<size_t>(K));
      prop[0] = draft.d2t[size_t(vargmax(logits0.data() + p * Vd, Vd))];
      const float* hin = seq.h2.data() + p * H;
      for (int64_t j = 1; j < K; j++) {
        draft.decode_step(seq, p, hin, chain, j, prop[size_t(j - 1)], logits);
        prop[size_t(j)] = draft.d2t[size_t(vargmax(logits.data(), Vd))];
        hin = chain[size_t(j)].h2.data();
      }
      int64_t a = 0;
      while (a < K && prop[size_t(a)] == x[size_t(n + 1 + a)]) a++;
      total += double(a + 1);
      res.verify_steps++;
      n += a + 1;
    }
    res.generated += n - P;
  }
  res.accept_length = res.verify_steps > 0 ? total / double(res.verify_steps) : 0.0;
  return res;
}

}  // namespace dw
