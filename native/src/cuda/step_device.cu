// The resident step on the GPU (cuda/cuda_ops.h): its check against the CPU step, for
// device_check(), and its benchmark (cuda/device.h step_bench).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <stdexcept>

#include "cuda/check_util.h"
#include "cuda/cuda_ops.h"
#include "cuda/device.h"
#include "kernels/rng.h"
#include "model/draft_model.h"
#include "step/host_ops.h"
#include "step/resident_step.h"
#include "step/step_check.h"

namespace dw::cuda {

// The whole step resident on the GPU: in fp32 against the CPU step (DraftModel) to 1e-4, with
// bf16 products against the host's bf16 step (the same rounding); on the host check's small
// model, and on a larger one whose rows, heads and vocabulary span many blocks.
void check_resident_step(uint64_t seed, std::vector<BodyCheck>& out) {
  std::unique_ptr<step::StepOps> ops = make_cuda_ops(0);
  step::HostOps host;
  host.bf16_matmul = true;
  DraftConfig big;
  big.vocab = 4096; big.draft_vocab = 1024; big.hidden = 256; big.heads = 8; big.kv_heads = 2; big.intermediate = 512;
  big.ttt = 4; big.rope_theta = 500000; big.rms_eps = 1e-5;
  for (const bool bf16 : {false, true}) {
    ops->bf16_matmul = bf16;
    step::StepOps* ref = bf16 ? &host : nullptr;
    const double tol = bf16 ? step::kBf16DeviceTol : 1e-4;
    // bf16: every target token in the draft vocabulary, so that the two sides' last bits cannot
    // move a row in or out of the loss
    DraftConfig small = step::check_config(), large = big;
    if (bf16) small.draft_vocab = small.vocab, large.draft_vocab = large.vocab;
    for (BodyCheck& c : step::resident_step_check(*ops, ref, small, 3, 12, seed, tol)) out.push_back(std::move(c));
    for (BodyCheck& c : step::resident_step_check(*ops, ref, large, 2, 160, seed, tol)) {
      c.name = "big " + c.name;
      out.push_back(std::move(c));
    }
  }
}

StepBench step_bench(const DraftConfig& c, int64_t B, int64_t T, int reps, int warmup, bool bf16, std::string* error) {
  StepBench r;
  std::unique_ptr<step::StepOps> ops;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    ops = make_cuda_ops(0);
  } catch (const std::exception& e) {
    *error = e.what();
    r.unavailable = true;
    return r;
  }
  try {
    ops->bf16_matmul = bf16;
    DraftModel m(c);
    // a plausible start: small weights, unit norms, every draft id a distinct target id (uniform
    // draws: the step's speed does not depend on the values, and 1.5·10⁹ normal draws take a minute)
    const auto fill = [](float* p, int64_t n, uint64_t seed, float mean, float half_width) {
      SplitMix64 g(seed);
      for (int64_t i = 0; i < n; i++) p[i] = mean + half_width * (float(g.next() >> 40) * 0x1p-23f - 1.0f);
    };
    for (const ParamInfo& t : m.layout) fill(m.params.data() + t.offset, t.size, uint64_t(t.offset) + 1, t.is_norm ? 1.0f : 0.0f, t.is_norm ? 0.0f : 0.03f);
    fill(m.embed.data(), int64_t(m.embed.size()), 11, 0.0f, 0.03f);
    fill(m.target_head.data(), int64_t(m.target_head.size()), 12, 0.0f, 0.03f);
    std::vector<int32_t> d2t(size_t(c.draft_vocab));
    for (size_t j = 0; j < d2t.size(); j++) d2t[j] = int32_t(j);
    const std::string bad = m.set_d2t(d2t);
    if (!bad.empty()) throw std::runtime_error(bad);
    const int64_t N = B * T;
    std::vector<int32_t> ids(static_cast<size_t>(N));
    SplitMix64 g(3);
    for (int32_t& id : ids) id = int32_t(g.next() % uint64_t(c.vocab));
    std::vector<uint8_t> mask(static_cast<size_t>(N), 1);
    Vec aux(static_cast<size_t>(N * 3 * c.hidden)), last(static_cast<size_t>(N * c.hidden));
    fill(aux.data(), int64_t(aux.size()), 13, 0.0f, 1.0f);
    fill(last.data(), int64_t(last.size()), 14, 0.0f, 1.0f);
    DraftBatch b;
    b.ids = ids.data(); b.aux = aux.data(); b.last = last.data(); b.mask = mask.data(); b.B = B; b.T = T;
    StepRequest req;
    req.backward = req.update = true;
    req.lr = 1e-4;
    req.clip = 0.5;
    step::ResidentStep st(*ops, m);
    for (int i = 0; i < warmup; i++) st.run(b, req);
    st.wait();
    const auto t1 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; i++) r.loss = st.run(b, req).loss;
    st.wait();
    const auto t2 = std::chrono::steady_clock::now();
    r.setup_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    r.ms_per_step = std::chrono::duration<double, std::milli>(t2 - t1).count() / std::max(1, reps);
    r.tokens_per_sec = double(N) / (r.ms_per_step / 1e3);
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) r.device_gib = double(total_b - free_b) / double(1ull << 30);
  } catch (const std::exception& e) {
    *error = e.what();
  }
  return r;
}

}  // namespace dw::cuda
