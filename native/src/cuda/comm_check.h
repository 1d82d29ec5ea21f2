// The collectives check shared by host_check.cc (StagedComm over ThreadComm, host memory
// posing as the device's) and device_check.cu (NCCL, and StagedComm with pinned copies, on a
// GPU): every collective of comm.h on seeded inputs each rank can recompute for all ranks, so
// every rank checks its own result against the expected one.
#pragma once
#include <algorithm>
#include <string>
#include <vector>

#include "collectives/comm.h"
#include "cuda/check_util.h"

namespace dw::cuda {

// Mem: the memory the communicator works on. T* alloc<T>(n) (owned by mem), put(T* dst,
// const std::vector<T>&), std::vector<T> get<T>(const T* src, n).
// sumTol: 0 where sums are taken in rank order (ThreadComm), a rounding allowance elsewhere.
template <class Mem>
std::vector<BodyCheck> comm_check(const std::string& name, Comm& c, Mem& mem, uint64_t seed, double sumTol) {
  const int n = c.size(), me = c.rank();
  const size_t N = 1031;  // not a multiple of anything a transport might chunk by
  std::vector<Vec> xs, ys;
  for (int r = 0; r < n; r++) {
    xs.push_back(randn(int64_t(N), seed, 100 + uint64_t(r)));
    ys.push_back(randn(int64_t(N) * n, seed, 200 + uint64_t(r)));
  }
  std::vector<BodyCheck> out;
  auto record = [&](const char* op, const Vec& got, const Vec& want, double tol) {
    Diff d;
    d.add(got.data(), want.data(), int64_t(want.size()));
    out.push_back(d.done(name + "." + op, tol));
  };
  {  // sum and max, float
    Vec sum = xs[0], mx = xs[0];
    for (int r = 1; r < n; r++) for (size_t i = 0; i < N; i++) { sum[i] += xs[r][i]; mx[i] = std::max(mx[i], xs[r][i]); }
    float* b = mem.template alloc<float>(N);
    mem.put(b, xs[me]);
    c.allReduce(b, N, ReduceOp::Sum);
    record("allReduce(sum)", mem.template get<float>(b, N), sum, sumTol);
    mem.put(b, xs[me]);
    c.allReduce(b, N, ReduceOp::Max);
    record("allReduce(max)", mem.template get<float>(b, N), mx, 0);
  }
  {  // sum, double (the step's loss and norm sums)
    std::vector<double> mine(xs[me].begin(), xs[me].end()), sum(N, 0.0);
    for (int r = 0; r < n; r++) for (size_t i = 0; i < N; i++) sum[i] += double(xs[r][i]);
    double* b = mem.template alloc<double>(N);
    mem.put(b, mine);
    c.allReduce(b, N, ReduceOp::Sum);
    const std::vector<double> got = mem.template get<double>(b, N);
    Diff d;
    for (size_t i = 0; i < N; i++) d.add(got[i], sum[i]);
    out.push_back(d.done(name + ".allReduce(sum, f64)", sumTol));
  }
  {  // gather, reduce-scatter, broadcast
    Vec gathered;
    for (int r = 0; r < n; r++) gathered.insert(gathered.end(), xs[r].begin(), xs[r].end());
    float* in = mem.template alloc<float>(N);
    float* all = mem.template alloc<float>(N * n);
    mem.put(in, xs[me]);
    c.allGather(in, all, N);
    record("allGather", mem.template get<float>(all, N * n), gathered, 0);

    Vec part(N, 0.0f);
    for (int r = 0; r < n; r++) for (size_t i = 0; i < N; i++) part[i] += ys[r][size_t(me) * N + i];
    mem.put(all, ys[me]);
    c.reduceScatter(all, in, N);
    record("reduceScatter", mem.template get<float>(in, N), part, sumTol);

    const int root = n - 1;
    mem.put(in, xs[me]);
    c.broadcast(in, N, root);
    record("broadcast", mem.template get<float>(in, N), xs[root], 0);
  }
  {  // a subgroup of the even ranks (the others stay out of it)
    std::vector<int> even;
    for (int r = 0; r < n; r += 2) even.push_back(r);
    if (me % 2 == 0) {
      auto g = c.subgroup(even, "even");
      Vec sum(N, 0.0f);
      for (int r : even) for (size_t i = 0; i < N; i++) sum[i] += xs[r][i];
      float* b = mem.template alloc<float>(N);
      mem.put(b, xs[me]);
      g->allReduce(b, N, ReduceOp::Sum);
      record("subgroup(even).allReduce", mem.template get<float>(b, N), sum, sumTol);
    }
    c.barrier();
  }
  return out;
}

// The worst result of each check over the ranks (a check only some ranks ran counts theirs).
inline std::vector<BodyCheck> worst_of(const std::vector<std::vector<BodyCheck>>& perRank) {
  std::vector<BodyCheck> out;
  for (const auto& rank : perRank) {
    for (const BodyCheck& b : rank) {
      auto it = std::find_if(out.begin(), out.end(), [&](const BodyCheck& o) { return o.name == b.name; });
      if (it == out.end()) { out.push_back(b); continue; }
      it->values += b.values;
      if (b.err > it->err) { it->err = b.err; it->note = b.note; }
    }
  }
  return out;
}

}  // namespace dw::cuda
