#include "model/draft_config.h"

namespace dw {

std::string DraftConfig::check() const {
  auto pos = [](int64_t v) { return v >= 1; };
  if (!pos(vocab)) return "vocab must be >= 1";
  if (!pos(draft_vocab) || draft_vocab > vocab) return "draftVocab must be in [1, vocab]";
  if (!pos(hidden)) return "hidden must be >= 1";
  if (!pos(heads)) return "heads must be >= 1";
  if (!pos(kv_heads)) return "kvHeads must be >= 1";
  if (heads % kv_heads != 0) return "heads must be a multiple of kvHeads";
  if (head_dim_ < 0) return "headDim must be >= 1";
  if (head_dim_ == 0 && hidden % heads != 0) return "hidden must be a multiple of heads (or headDim given)";
  if (head_dim() % 2 != 0) return "the head dim (headDim, or hidden/heads) must be even";
  if (double(heads) * double(head_dim()) >= double(1LL << 31)) return "heads·headDim too large";
  if (!pos(intermediate)) return "intermediate must be >= 1";
  if (!pos(ttt)) return "ttt must be >= 1";
  if (!(rope_theta > 0) || rope_theta > 1e12) return "ropeTheta must be a positive finite number";
  if (!(rms_eps > 0) || rms_eps > 1) return "rmsEps must be in (0, 1]";
  if (const std::string e = rope_scaling.check(); !e.empty()) return "ropeScaling: " + e;
  const double big = 1LL << 31;
  if (double(vocab) * double(hidden) >= big || double(draft_vocab) * double(hidden) >= big ||
      double(intermediate) * double(hidden) * 2 >= big)
    return "config too large (a weight matrix would exceed 2^31 elements)";
  return "";
}

std::vector<ParamInfo> draft_param_layout(const DraftConfig& c) {
  return draft_param_layout(c, c.heads, c.kv_heads, c.intermediate, c.draft_vocab);
}

std::vector<ParamInfo> draft_param_layout(const DraftConfig& c, int64_t heads, int64_t kv_heads,
                                          int64_t intermediate, int64_t draft_vocab) {
  const int64_t H = c.hidden, I = intermediate, d = c.head_dim(), qd = heads * d, kvd = kv_heads * d;
  std::vector<ParamInfo> p = {
      {"fc", {H, 3 * H}},    {"n_in", {H}, 0, 0, true}, {"n_hid", {H}, 0, 0, true},
      {"q", {qd, 2 * H}},    {"k", {kvd, 2 * H}},       {"v", {kvd, 2 * H}},
      {"o", {H, qd}},        {"n_post", {H}, 0, 0, true}, {"gate", {I, H}},
      {"up", {I, H}},        {"down", {H, I}},            {"n_final", {H}, 0, 0, true},
      {"lm", {draft_vocab, H}},
  };
  int64_t off = 0;
  for (auto& t : p) {
    t.size = 1;
    for (int64_t d : t.shape) t.size *= d;
    t.offset = off;
    off += t.size;
  }
  return p;
}

int64_t draft_param_count(const DraftConfig& c) {
  auto l = draft_param_layout(c);
  return l.back().offset + l.back().size;
}

}  // namespace dw
