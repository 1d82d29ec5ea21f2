// The rollout's built-in target: a small Llama-style model with seeded weights
// (docs/model-math.md "Synthetic target"). It shares E and Wt with the draft's frozen tensors,
// gives aux = concat(hidden_1, hidden_{L/2−1}, hidden_{L−4}) and last = RMSNorm(h_L; f), and
// decodes greedily (or with temperature) using a KV cache.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "attention.h"
#include "rope.h"

namespace dw {

struct TargetConfig {
  int64_t vocab = 0, hidden = 0, heads = 0, kv_heads = 0, intermediate = 0, layers = 0;
  double rope_theta = 10000.0, rms_eps = 1e-6;
  uint64_t seed = 0;
  int64_t head_dim() const { return hidden / heads; }
  int64_t q_dim() const { return heads * head_dim(); }
  int64_t kv_dim() const { return kv_heads * head_dim(); }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }
  std::string check() const;
  // the three layers whose outputs form aux
  int64_t aux_layer(int i) const { return i == 0 ? 1 : i == 1 ? layers / 2 - 1 : layers - 4; }
};

struct KVCache {
  int64_t len = 0, cap = 0;
  std::vector<std::vector<float>> k, v;  // per layer [cap, kv_dim]
  void reset(int64_t layers, int64_t kv_dim, int64_t cap);
};

class TargetModel {
 public:
  explicit TargetModel(const TargetConfig& c);  // generates the weights from c.seed

  const TargetConfig cfg;
  std::vector<float> embed, target_head;  // [V, H]
  int threads = 0;

  // Positions [cache.len, cache.len + n) of one sequence whose tokens are ids[0..n).
  // Appends to the cache. Optional outputs (row-major over the n rows): aux [n, 3H],
  // last [n, H]; logits_last [V] are the logits of the final row.
  void forward(const int32_t* ids, int64_t n, KVCache& cache, float* aux, float* last, float* logits_last);

  // B independent sequences of length T: aux [B, T, 3H], last [B, T, H].
  void forward_batch(const int32_t* ids, int64_t B, int64_t T, float* aux, float* last);

  // prompt + max_new tokens; greedy when temperature <= 0, else softmax(logits/temperature)
  // sampled with a splitmix64 stream seeded by `seed`.
  std::vector<int32_t> generate(const int32_t* prompt, int64_t n, int64_t max_new, double temperature,
                                uint64_t seed);

  void apply_threads() const;

 private:
  struct Layer {
    std::vector<float> attn_norm, wqkv, wo, mlp_norm, wgu, wdown;  // wqkv [qkv_dim, H], wgu [2I, H]
  };
  std::vector<Layer> layers_;
  std::vector<float> final_norm_;
  RopeTable rope_;
  std::vector<AttnScratch> attn_scratch_;  // one per kv head
  // scratch for `forward`, grown as needed
  std::vector<float> h_, u_, qkv_, attn_, gu_, act_, rstd_, lse_;
  std::vector<int32_t> pos_;
};

}  // namespace dw
