// The sharded draft step (DESIGN.md §3): which part of the model and of the batch one rank of
// a tp × sp × dp world holds, and the helpers that move whole tensors in and out of shards.
//
// TP (tensor parallel, tpIdx): query heads [h0, h0+nh) and kv heads [c0, c0+nkv) (q/k/v rows,
// o columns), MLP columns [i0, i0+I) (gate/up rows, down columns) and draft ids [j0, j0+Vd)
// (lm rows); the frozen target head's argmax is split over target ids [v0, v1). fc and the
// four norms are replicated. SP (spIdx) owns positions [spIdx·T/sp, (spIdx+1)·T/sp) of every
// sample; DP (dpIdx) owns samples [dpIdx·B/dp, (dpIdx+1)·B/dp). An unsharded model is the
// tp = sp = dp = 1 case: every range is the whole dimension and no collective is ever made.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "collectives/comm.h"
#include "model/draft_config.h"

namespace dw {

struct ShardDims {
  int64_t nh = 0, nkv = 0, d = 0, I = 0, Vd = 0;  // local heads, kv heads, head dim, MLP width, draft vocab
  int64_t h0 = 0, c0 = 0, i0 = 0, j0 = 0;         // first global head, kv head, MLP column, draft id
  int64_t v0 = 0, v1 = 0;                         // target ids [v0, v1): this rank's share of argmax z
  int64_t qd() const { return nh * d; }
  int64_t kvd() const { return nkv * d; }
  int64_t D() const { return qd() + 2 * kvd(); }  // q|k|v row width
  static ShardDims of(const DraftConfig& c, const ShardLayout& L);
};

// "" when the config can be split tp ways (kv heads, MLP width and draft vocab divisible by
// tp), else a message naming the constraint. Batch and sequence splits are checked per batch.
std::string check_shard_config(const DraftConfig& c, int tp, int sp, int dp);

// How one trainable tensor is split over TP, seen as a 2-D [rows, cols] matrix (norms [1, H]).
enum class Split { None, Rows, Cols };
struct ParamShard {
  Split split = Split::None;
  int64_t rows = 0, cols = 0;  // global shape
  int64_t off = 0, cnt = 0;    // this rank's range along the split dimension
};
std::vector<ParamShard> param_shards(const DraftConfig& c, const ShardDims& d);

// One tensor: local (its shard, this rank's shape) ← full (its global shape).
void slice_param(const ParamShard& s, const float* full, float* local);
// Elements of one tensor's shard.
int64_t shard_size(const ParamShard& s);
// local (this rank's layout) ← its shard of full (the global layout).
void slice_params(const DraftConfig& c, const ShardDims& d, const float* full, float* local);
// full (global layout) ← the shards of every TP rank (all-gather over tp; null tp: copy).
void gather_params(const DraftConfig& c, const ShardDims& d, const float* local, float* full, Comm* tp);

// The communicators of one rank. Group comms are null when the group has one member (no call
// is ever made on them). rep: the ranks holding the same shards (same tpIdx: the SP × DP plane).
struct ShardContext {
  ShardLayout L;
  std::shared_ptr<Comm> world, tp, sp, rep;
  std::string broken;  // set after a collective failed: the model refuses further steps
};

// World ranks of L's replica group (same tpIdx), in (dpIdx, spIdx) order.
std::vector<int> replica_group(const ShardLayout& L);

}  // namespace dw
