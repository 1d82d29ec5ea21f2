// Sizes of the EAGLE3 draft model and the layout of its parameters (docs/model-math.md).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/rope.h"

namespace dw {

struct DraftConfig {
  int64_t vocab = 0, draft_vocab = 0, hidden = 0, heads = 0, kv_heads = 0, intermediate = 0, ttt = 0;
  double rope_theta = 10000.0, rms_eps = 1e-6;
  int64_t head_dim_ = 0;     // 0: hidden / heads (a target's head_dim may differ, e.g. Qwen3)
  RopeScaling rope_scaling;  // the target's (llama3, linear), so positions rotate as it does

  int64_t head_dim() const { return head_dim_ > 0 ? head_dim_ : hidden / heads; }
  int64_t q_dim() const { return heads * head_dim(); }
  int64_t kv_dim() const { return kv_heads * head_dim(); }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }
  // "" when valid, else a message naming the field
  std::string check() const;
};

// Trainable tensors, in the order of TRAINABLE_NAMES. They live in one flat buffer in this
// order, so q|k|v form one [q_dim + 2·kv_dim, 2H] matrix and gate|up one [2I, H] matrix.
enum Param : int { kFc, kNIn, kNHid, kQ, kK, kV, kO, kNPost, kGate, kUp, kDown, kNFinal, kLm, kNumParams };

struct ParamInfo {
  const char* name;
  std::vector<int64_t> shape;
  int64_t offset = 0, size = 0;
  bool is_norm = false;
};

std::vector<ParamInfo> draft_param_layout(const DraftConfig& c);
int64_t draft_param_count(const DraftConfig& c);
// The same tensors for a tensor-parallel rank holding `heads` query heads, `kv_heads` kv heads,
// `intermediate` MLP columns and `draft_vocab` lm rows (head dim c.head_dim() unchanged).
std::vector<ParamInfo> draft_param_layout(const DraftConfig& c, int64_t heads, int64_t kv_heads,
                                          int64_t intermediate, int64_t draft_vocab);

}  // namespace dw
