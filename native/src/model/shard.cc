#include "model/shard.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "kernels/parallel.h"

namespace dw {

ShardDims ShardDims::of(const DraftConfig& c, const ShardLayout& L) {
  const int64_t tp = L.tp, r = L.tpIdx;
  ShardDims s;
  s.d = c.head_dim();
  s.nh = c.heads / tp;
  s.nkv = c.kv_heads / tp;
  s.I = c.intermediate / tp;
  s.Vd = c.draft_vocab / tp;
  s.h0 = r * s.nh;
  s.c0 = r * s.nkv;
  s.i0 = r * s.I;
  s.j0 = r * s.Vd;
  s.v0 = r * c.vocab / tp;  // balanced; V need not divide
  s.v1 = (r + 1) * c.vocab / tp;
  return s;
}

std::string check_shard_config(const DraftConfig& c, int tp, int sp, int dp) {
  if (tp < 1 || sp < 1 || dp < 1) return "tp, sp and dp must be >= 1";
  const auto t = std::to_string(tp);
  if (c.kv_heads % tp != 0)
    return "kvHeads (" + std::to_string(c.kv_heads) + ") must be divisible by tp (" + t +
           "): tensor parallelism splits the kv heads (and with them the query heads)";
  if (c.intermediate % tp != 0)
    return "intermediate (" + std::to_string(c.intermediate) + ") must be divisible by tp (" + t +
           "): tensor parallelism splits the MLP width";
  if (c.draft_vocab % tp != 0)
    return "draftVocab (" + std::to_string(c.draft_vocab) + ") must be divisible by tp (" + t +
           "): tensor parallelism splits the draft vocabulary";
  return "";
}

std::vector<ParamShard> param_shards(const DraftConfig& c, const ShardDims& d) {
  const int64_t H = c.hidden, I = c.intermediate, Vd = c.draft_vocab;
  auto none = [](int64_t r, int64_t cc) { return ParamShard{Split::None, r, cc, 0, r}; };
  auto rows = [](int64_t r, int64_t cc, int64_t off, int64_t cnt) { return ParamShard{Split::Rows, r, cc, off, cnt}; };
  auto cols = [](int64_t r, int64_t cc, int64_t off, int64_t cnt) { return ParamShard{Split::Cols, r, cc, off, cnt}; };
  std::vector<ParamShard> p(kNumParams);
  p[kFc] = none(H, 3 * H);
  p[kNIn] = none(1, H);
  p[kNHid] = none(1, H);
  p[kQ] = rows(c.q_dim(), 2 * H, d.h0 * d.d, d.qd());
  p[kK] = rows(c.kv_dim(), 2 * H, d.c0 * d.d, d.kvd());
  p[kV] = rows(c.kv_dim(), 2 * H, d.c0 * d.d, d.kvd());
  p[kO] = cols(H, c.q_dim(), d.h0 * d.d, d.qd());
  p[kNPost] = none(1, H);
  p[kGate] = rows(I, H, d.i0, d.I);
  p[kUp] = rows(I, H, d.i0, d.I);
  p[kDown] = cols(H, I, d.i0, d.I);
  p[kNFinal] = none(1, H);
  p[kLm] = rows(Vd, H, d.j0, d.Vd);
  return p;
}

int64_t shard_size(const ParamShard& s) {
  return s.split == Split::Rows ? s.cnt * s.cols : s.split == Split::Cols ? s.rows * s.cnt : s.rows * s.cols;
}

void slice_param(const ParamShard& s, const float* src, float* dst) {
  if (s.split == Split::Cols) {
    for (int64_t r = 0; r < s.rows; r++) std::memcpy(dst + r * s.cnt, src + r * s.cols + s.off, size_t(s.cnt) * 4);
  } else if (s.split == Split::Rows) {
    std::memcpy(dst, src + s.off * s.cols, size_t(s.cnt * s.cols) * 4);
  } else {
    std::memcpy(dst, src, size_t(s.rows * s.cols) * 4);
  }
}

void slice_params(const DraftConfig& c, const ShardDims& d, const float* full, float* local) {
  int64_t goff = 0, loff = 0;
  for (const auto& s : param_shards(c, d)) {
    slice_param(s, full + goff, local + loff);
    goff += s.rows * s.cols;
    loff += shard_size(s);
  }
}

void gather_params(const DraftConfig& c, const ShardDims& d, const float* local, float* full, Comm* tp) {
  const auto sh = param_shards(c, d);
  int64_t P = 0;
  for (const auto& s : sh) P += shard_size(s);
  const int n = tp ? tp->size() : 1;
  std::vector<float> all;
  const float* parts = local;
  if (tp) {  // every TP rank's shards have the same sizes: one all-gather moves them all
    all.resize(size_t(P) * size_t(n));
    tp->allGather(local, all.data(), size_t(P));
    parts = all.data();
  }
  int64_t goff = 0, loff = 0;
  for (const auto& s : sh) {
    float* dst = full + goff;
    for (int t = 0; t < n; t++) {
      const float* src = parts + int64_t(t) * P + loff;
      if (s.split == Split::None) {
        // replicated: every TP rank holds the same copy (their gradients are TP-averaged), so
        // a difference is a bug, never rounding: refuse to hand out one rank's version
        if (t == 0) std::memcpy(dst, src, size_t(s.rows * s.cols) * 4);
        else if (std::memcmp(dst, src, size_t(s.rows * s.cols) * 4) != 0)
          throw std::runtime_error("gather: replicated tensor #" + std::to_string(&s - sh.data()) +
                                   " differs between TP rank 0 and TP rank " + std::to_string(t));
      } else if (s.split == Split::Rows) {
        std::memcpy(dst + int64_t(t) * s.cnt * s.cols, src, size_t(s.cnt * s.cols) * 4);
      } else {
        for (int64_t r = 0; r < s.rows; r++)
          std::memcpy(dst + r * s.cols + int64_t(t) * s.cnt, src + r * s.cnt, size_t(s.cnt) * 4);
      }
    }
    goff += s.rows * s.cols;
    loff += shard_size(s);
  }
}

std::vector<int> replica_group(const ShardLayout& L) {
  std::vector<int> g;
  for (int dp = 0; dp < L.dp; dp++)
    for (int sp = 0; sp < L.sp; sp++) g.push_back((dp * L.sp + sp) * L.tp + L.tpIdx);
  return g;
}


}  // namespace dw
