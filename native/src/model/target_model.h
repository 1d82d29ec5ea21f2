// The rollout's target: a Llama-style model with seeded weights (docs/model-math.md "Synthetic
// target") or a Hugging Face Llama/Qwen2/Qwen3 checkpoint's weights ("Hugging Face targets").
// It shares E and Wt with the draft's frozen tensors, gives aux = concat of the outputs of
// cfg.aux_layer(0..2) (default 1, L/2−1, L−4) and last = RMSNorm(h_L; f), and
// decodes greedily (or with temperature) with a KV cache: the prompt is prefilled in one pass,
// then every new token costs one position. Several sequences decode together (their rows share
// every GEMM), and the rollout returns aux/last of the final sequence from the same pass.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/rope.h"

namespace dw {

// Defaults of the shape knobs of the seeded weights (docs/model-math.md "Synthetic target").
// logit_scale 1, zipf 0, residual_scale 1 give the original, near-uniform target bit for bit.
constexpr double kTargetLogitScale = 3.0;
constexpr double kTargetZipf = 0.1;
constexpr double kTargetResidualScale = 0.4;

struct TargetConfig {
  int64_t vocab = 0, hidden = 0, heads = 0, kv_heads = 0, intermediate = 0, layers = 0;
  double rope_theta = 10000.0, rms_eps = 1e-6;
  uint64_t seed = 0;
  // Wt row v ~ logit_scale·(v+1)^(−zipf)·N(0, 4/H); o and down std residual_scale·0.5/√fan_in.
  double logit_scale = kTargetLogitScale, zipf = kTargetZipf, residual_scale = kTargetResidualScale;
  // Hugging Face shapes (all off / default for the seeded target): head_dim_ 0 = hidden/heads;
  // q/k/v biases (Qwen2); per-head RMSNorm of q and k before RoPE (Qwen3); tied head = embed.
  int64_t head_dim_ = 0;
  bool attention_bias = false, qk_norm = false, tie = false;
  RopeScaling rope_scaling;
  // 0-based decoder layers whose outputs form aux, ascending; −1: the default {1, L/2−1, L−4}
  int64_t aux_layers[3] = {-1, -1, -1};
  int64_t head_dim() const { return head_dim_ > 0 ? head_dim_ : hidden / heads; }
  int64_t q_dim() const { return heads * head_dim(); }
  int64_t kv_dim() const { return kv_heads * head_dim(); }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }
  std::string check() const;
  // the three layers whose outputs form aux
  int64_t aux_layer(int i) const {
    if (aux_layers[i] >= 0) return aux_layers[i];
    return i == 0 ? 1 : i == 1 ? layers / 2 - 1 : layers - 4;
  }
};

// One caller-supplied tensor of a TargetModel built from weights: its Hugging Face name and
// element count (TargetModel::tensor_list).
struct TensorSlot {
  std::string name;
  int64_t numel = 0;
};

struct KVCache {
  int64_t len = 0, cap = 0;
  std::vector<std::vector<float>> k, v;  // per layer [cap, kv_dim]
  void reset(int64_t layers, int64_t kv_dim, int64_t cap);
};

// One sequence's part of a forward_seqs pass: its next n tokens (positions cache->len ..
// cache->len + n − 1) and where their aux [n, 3H] / last [n, H] rows go (null: not wanted).
struct SeqRows {
  const int32_t* ids = nullptr;
  int64_t n = 0;
  KVCache* cache = nullptr;
  float* aux = nullptr;
  float* last = nullptr;
};

// A finished rollout of one prompt: ids = prompt + max_new tokens; aux [L, 3H] and last
// [L, H] of the whole sequence (empty when not asked for).
struct RolloutSeq {
  std::vector<int32_t> ids;
  std::vector<float> aux, last;
};

class TargetModel {
 public:
  // Generates the weights from c.seed (with attention_bias / qk_norm / tie: zero biases, unit
  // qk-norm weights, head = E).
  explicit TargetModel(const TargetConfig& c);
  // Caller-supplied weights: every tensor of tensor_list(c) starts unset (zero) and is filled
  // by set_tensor; the model runs only once missing() is empty. The packing: q, k, v rows
  // stacked into wqkv [qkv_dim, H] (biases likewise), gate, up into wgu [2I, H].
  struct FromWeights {};
  TargetModel(const TargetConfig& c, FromWeights);
  // Names (Hugging Face: model.embed_tokens.weight, model.layers.{i}.self_attn.q_proj.weight,
  // ...) and sizes; lm_head.weight only when !tie.
  static std::vector<TensorSlot> tensor_list(const TargetConfig& c);
  // "" when set, else why not (unknown name, wrong size).
  std::string set_tensor(const std::string& name, const float* data, int64_t n);
  std::vector<std::string> missing() const;

  const TargetConfig cfg;
  std::vector<float> embed, target_head;  // [V, H]; target_head already holds logit_scale
  int threads = 0;

  // The new positions of several sequences in one pass (rows of all sequences share the
  // GEMMs; attention is per sequence against its own cache). Appends to every cache.
  // logits [B, V] (optional): logits of each sequence's final new row.
  void forward_seqs(const SeqRows* seqs, int64_t B, float* logits);

  // Positions [cache.len, cache.len + n) of one sequence whose tokens are ids[0..n).
  // Appends to the cache. Optional outputs (row-major over the n rows): aux [n, 3H],
  // last [n, H]; logits_last [V] are the logits of the final row.
  void forward(const int32_t* ids, int64_t n, KVCache& cache, float* aux, float* last, float* logits_last);

  // B independent sequences of length T: aux [B, T, 3H], last [B, T, H].
  void forward_batch(const int32_t* ids, int64_t B, int64_t T, float* aux, float* last);

  // Each prompt continued by max_new tokens, decoded together: greedy when temperature <= 0,
  // else softmax(logits/temperature) sampled with a splitmix64 stream seeded by seeds[b]
  // (seeds empty: 0 for every prompt). With want_aux / want_last the final token is fed too
  // and the sequence's aux / last come back (equal to forward() of the final ids up to float
  // rounding). A prompt's result equals decoding it alone up to float rounding (the GEMMs run
  // with another row count); for a given call it is deterministic.
  void rollout(const std::vector<std::vector<int32_t>>& prompts, int64_t max_new, double temperature,
               const std::vector<uint64_t>& seeds, bool want_aux, bool want_last, std::vector<RolloutSeq>& out);

  // prompt + max_new tokens (rollout of one prompt, no features).
  std::vector<int32_t> generate(const int32_t* prompt, int64_t n, int64_t max_new, double temperature,
                                uint64_t seed);

  void apply_threads() const;

 private:
  struct Layer {
    std::vector<float> attn_norm, wqkv, wo, mlp_norm, wgu, wdown;  // wqkv [qkv_dim, H], wgu [2I, H]
    std::vector<float> bqkv, q_norm, k_norm;                       // [qkv_dim], [d], [d] when used
  };
  // where a named tensor goes: [dst, dst + n) (allocating its buffer on first use); null: no such tensor
  float* slot(const std::string& name, int64_t& n);
  void ensure_layer(Layer& L);
  std::vector<Layer> layers_;
  std::vector<std::string> unset_;  // names not yet given (FromWeights), in tensor_list order
  std::vector<float> final_norm_;
  RopeTable rope_;
  std::vector<AttnScratch> attn_scratch_;  // one per (sequence, kv head) task
  // scratch for forward_seqs, grown as needed
  std::vector<float> h_, u_, qkv_, attn_, gu_, act_, rstd_, lse_, fin_;
  std::vector<int32_t> pos_;
  std::vector<int64_t> row0_;
  std::vector<KVCache> caches_;  // rollout / forward_batch sequences, reused across calls
};

}  // namespace dw
