// The collective interface the sharded step is written against (DESIGN.md §3). Two
// implementations: GlooComm (processes, Gloo TCP transport, rendezvous through NATS KV)
// and ThreadComm (ranks as threads of one process sharing memory: fast equivalence tests).
// All calls are blocking and made from the compute thread of one rank; an implementation
// runs them on its own dedicated thread (never the libuv pool) and throws CommError when a
// peer dies or the group is torn down, within its timeout; nothing hangs forever.
#pragma once
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace dw {

struct CommError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class ReduceOp { Sum, Max };

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: every rank ends with op over all ranks' buf[0..n).
  virtual void allReduce(float* buf, size_t n, ReduceOp op) = 0;
  virtual void allReduce(double* buf, size_t n, ReduceOp op) = 0;
  // out[r*n .. (r+1)*n) = in of rank r, on every rank.
  virtual void allGather(const float* in, float* out, size_t n) = 0;
  // in has size()*n elements; out (n) on rank r = sum over ranks of in[r*n .. (r+1)*n).
  virtual void reduceScatter(const float* in, float* out, size_t n) = 0;
  virtual void broadcast(float* buf, size_t n, int root) = 0;
  virtual void barrier() = 0;
  // A communicator over a subset of this one's ranks (ranks listed in order; the caller
  // must be one of them). Every member calls it with the same list; `tag` names the group
  // so different subgroups rendezvous separately.
  virtual std::shared_ptr<Comm> subgroup(const std::vector<int>& ranks, const std::string& tag) = 0;
};

// A world of tp × sp × dp ranks; rank = ((dpIdx * sp) + spIdx) * tp + tpIdx, so TP peers are
// adjacent (the fastest links), then SP, then DP.
struct ShardLayout {
  int tp = 1, sp = 1, dp = 1;
  int tpIdx = 0, spIdx = 0, dpIdx = 0;
  int world() const { return tp * sp * dp; }
  int rank() const { return (dpIdx * sp + spIdx) * tp + tpIdx; }
  static ShardLayout of(int rank, int tp, int sp, int dp) {
    ShardLayout l;
    l.tp = tp; l.sp = sp; l.dp = dp;
    l.tpIdx = rank % tp; l.spIdx = (rank / tp) % sp; l.dpIdx = rank / (tp * sp);
    return l;
  }
  // World ranks of this rank's TP group, SP group, DP group (each in index order).
  std::vector<int> tpGroup() const { std::vector<int> g; for (int i = 0; i < tp; i++) g.push_back((dpIdx * sp + spIdx) * tp + i); return g; }
  std::vector<int> spGroup() const { std::vector<int> g; for (int i = 0; i < sp; i++) g.push_back((dpIdx * sp + i) * tp + tpIdx); return g; }
  std::vector<int> dpGroup() const { std::vector<int> g; for (int i = 0; i < dp; i++) g.push_back((i * sp + spIdx) * tp + tpIdx); return g; }
};

}  // namespace dw
