// ThreadComm: a world of N ranks that are threads of one process sharing memory (fast,
// deterministic in-process tests of the sharded step), and JobThread: the one dedicated
// native thread a communicator runs its collectives on.
//
// ThreadComm semantics (same contract as comm.h):
// - Every rank calls each collective from its own thread, in the same order. A call blocks
//   until all ranks of the group have made it; a rank that does not arrive within the
//   timeout (default 30 s) breaks the group and every pending and later call throws
//   CommError. Mismatched calls (different op, size, root or dtype) also break the group.
// - Sums are taken in rank order 0..N-1 for every element, so every rank gets bitwise
//   identical results and repeated runs are deterministic.
// - Buffers may alias (in-place allGather with in == out + rank*n is fine).
// - subgroup(ranks, tag) needs no rendezvous: members meet in a registry of the parent
//   group keyed by (tag, ranks, nth call with that key).
// One caller thread per rank at a time; a ThreadComm object is not itself thread-safe.
#pragma once
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collectives/comm.h"

namespace dw {

// One thread running posted jobs in order. The destructor lets queued jobs finish, then
// joins (or detaches, when called on the thread itself or when built with detach = true).
class JobThread {
 public:
  explicit JobThread(std::string name, bool detachOnDestroy = false);
  ~JobThread();
  JobThread(const JobThread&) = delete;
  JobThread& operator=(const JobThread&) = delete;

  // Queue a job (it must not throw: exceptions are swallowed).
  void post(std::function<void()> job);
  // Run a job on the thread and wait for it; rethrows its exception. Runs inline when
  // called on the thread itself.
  void run(const std::function<void()>& job);
  bool onThread() const;

 private:
  struct State {
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::function<void()>> q;
    bool stop = false;
  };
  std::shared_ptr<State> s_;
  std::thread t_;
  bool detach_;
};

// A world of n ThreadComms (rank i = element i). timeout bounds every wait for peers.
std::vector<std::shared_ptr<Comm>> makeThreadWorld(int n);
std::vector<std::shared_ptr<Comm>> makeThreadWorld(int n, std::chrono::milliseconds timeout);

// Break the group of a ThreadComm (and nothing else): every pending and later collective
// of that group throws CommError with `why`. No-op for other Comm types; returns whether
// it was a ThreadComm.
bool abortThreadComm(Comm& comm, const std::string& why);

}  // namespace dw
