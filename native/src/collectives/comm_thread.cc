#include "collectives/comm_thread.h"

#include <pthread.h>

#include <algorithm>
#include <cstring>
#include <future>
#include <map>
#include <set>
#include <stdexcept>
#include <utility>

namespace dw {

// ------------------------------------------------------------------------------------------
// JobThread

JobThread::JobThread(std::string name, bool detachOnDestroy) : s_(std::make_shared<State>()), detach_(detachOnDestroy) {
  std::shared_ptr<State> s = s_;
  t_ = std::thread([s, name]() {
    if (!name.empty()) pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> l(s->m);
        s->cv.wait(l, [&] { return s->stop || !s->q.empty(); });
        if (s->q.empty()) return;  // stop requested and drained
        job = std::move(s->q.front());
        s->q.pop_front();
      }
      try {
        job();
      } catch (...) {
      }
    }
  });
}

JobThread::~JobThread() {
  {
    std::lock_guard<std::mutex> l(s_->m);
    s_->stop = true;
  }
  s_->cv.notify_all();
  if (!t_.joinable()) return;
  if (detach_ || onThread()) t_.detach();
  else t_.join();
}

bool JobThread::onThread() const { return std::this_thread::get_id() == t_.get_id(); }

void JobThread::post(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> l(s_->m);
    s_->q.push_back(std::move(job));
  }
  s_->cv.notify_one();
}

void JobThread::run(const std::function<void()>& job) {
  if (onThread()) {
    job();
    return;
  }
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> f = done->get_future();
  post([&job, done]() {
    try {
      job();
      done->set_value();
    } catch (...) {
      done->set_exception(std::current_exception());
    }
  });
  f.get();
}

// ------------------------------------------------------------------------------------------
// ThreadComm

namespace {

enum class Kind { AllReduce, AllGather, ReduceScatter, Broadcast, Barrier };

const char* kindName(Kind k) {
  switch (k) {
    case Kind::AllReduce: return "allReduce";
    case Kind::AllGather: return "allGather";
    case Kind::ReduceScatter: return "reduceScatter";
    case Kind::Broadcast: return "broadcast";
    case Kind::Barrier: return "barrier";
  }
  return "?";
}

struct Slot {
  Kind kind = Kind::Barrier;
  int dtype = 0;  // 4 float, 8 double
  int op = 0;
  size_t n = 0;
  int root = 0;
  const void* in = nullptr;
  void* out = nullptr;
};

struct Group {
  Group(int n, std::chrono::milliseconds timeout) : size(n), timeout(timeout), slots(size_t(n)) {}
  const int size;
  const std::chrono::milliseconds timeout;

  std::mutex m;
  std::condition_variable cv;
  uint64_t gen = 0;
  int arrived = 0;
  bool broken = false;
  std::string why;
  std::vector<Slot> slots;

  struct Pending {
    std::shared_ptr<Group> group;
    size_t joined = 0;
  };
  std::map<std::string, Pending> registry;  // subgroups being joined

  void breakGroup(const std::string& msg) {
    std::lock_guard<std::mutex> l(m);
    if (!broken) {
      broken = true;
      why = msg;
    }
    cv.notify_all();
  }

  // Generation barrier with a timeout: all ranks or CommError.
  void arrive(int rank, const char* what) {
    std::unique_lock<std::mutex> l(m);
    if (broken) throw CommError(why);
    const uint64_t g = gen;
    if (++arrived == size) {
      arrived = 0;
      ++gen;
      cv.notify_all();
      return;
    }
    const bool ok = cv.wait_for(l, timeout, [&] { return gen != g || broken; });
    if (gen != g) return;
    if (!ok && !broken) {
      broken = true;
      why = "thread comm: rank " + std::to_string(rank) + " of " + std::to_string(size) + " waited " +
            std::to_string(timeout.count()) + " ms in " + what + " for its peers (" + std::to_string(arrived) +
            " of " + std::to_string(size) + " arrived)";
      cv.notify_all();
    }
    throw CommError(why);
  }
};

class ThreadComm final : public Comm {
 public:
  ThreadComm(std::shared_ptr<Group> g, int rank) : g_(std::move(g)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return g_->size; }

  void allReduce(float* buf, size_t n, ReduceOp op) override { allReduceT(buf, n, op); }
  void allReduce(double* buf, size_t n, ReduceOp op) override { allReduceT(buf, n, op); }

  void allGather(const float* in, float* out, size_t n) override {
    Slot s;
    s.kind = Kind::AllGather; s.dtype = 4; s.n = n; s.in = in; s.out = out;
    begin(s);
    const int N = g_->size;
    std::vector<float> tmp(size_t(N) * n);
    for (int j = 0; j < N; j++)
      if (n) std::memcpy(tmp.data() + size_t(j) * n, g_->slots[size_t(j)].in, n * sizeof(float));
    end(s);
    if (n) std::memcpy(out, tmp.data(), tmp.size() * sizeof(float));
  }

  void reduceScatter(const float* in, float* out, size_t n) override {
    Slot s;
    s.kind = Kind::ReduceScatter; s.dtype = 4; s.n = n; s.in = in; s.out = out;
    begin(s);
    const int N = g_->size;
    std::vector<float> tmp(n);
    const size_t off = size_t(rank_) * n;
    if (n) std::memcpy(tmp.data(), static_cast<const float*>(g_->slots[0].in) + off, n * sizeof(float));
    for (int j = 1; j < N; j++) {
      const float* p = static_cast<const float*>(g_->slots[size_t(j)].in) + off;
      for (size_t i = 0; i < n; i++) tmp[i] += p[i];
    }
    end(s);
    if (n) std::memcpy(out, tmp.data(), n * sizeof(float));
  }

  void broadcast(float* buf, size_t n, int root) override {
    if (root < 0 || root >= g_->size)
      throw std::invalid_argument("broadcast root " + std::to_string(root) + " is not a rank of this group of " +
                                  std::to_string(g_->size));
    Slot s;
    s.kind = Kind::Broadcast; s.dtype = 4; s.n = n; s.root = root; s.in = buf; s.out = buf;
    begin(s);
    // The root's buffer stays untouched until everyone passed end().
    if (rank_ != root && n) std::memmove(buf, g_->slots[size_t(root)].out, n * sizeof(float));
    end(s);
  }

  void barrier() override {
    Slot s;
    s.kind = Kind::Barrier;
    begin(s);
    end(s);
  }

  std::shared_ptr<Comm> subgroup(const std::vector<int>& ranks, const std::string& tag) override {
    int me = -1;
    std::set<int> seen;
    for (size_t i = 0; i < ranks.size(); i++) {
      const int r = ranks[i];
      if (r < 0 || r >= g_->size)
        throw std::invalid_argument("subgroup: rank " + std::to_string(r) + " is not in this group of " +
                                    std::to_string(g_->size));
      if (!seen.insert(r).second) throw std::invalid_argument("subgroup: rank " + std::to_string(r) + " is listed twice");
      if (r == rank_) me = int(i);
    }
    if (me < 0) throw std::invalid_argument("subgroup: the caller (rank " + std::to_string(rank_) + ") must be a member");
    std::string key = tag + "|";
    for (int r : ranks) key += std::to_string(r) + ",";
    key += "|" + std::to_string(++gens_[key]);
    std::shared_ptr<Group> child;
    {
      std::lock_guard<std::mutex> l(g_->m);
      auto& e = g_->registry[key];
      if (!e.group) e.group = std::make_shared<Group>(int(ranks.size()), g_->timeout);
      child = e.group;
      if (++e.joined == ranks.size()) g_->registry.erase(key);
    }
    return std::make_shared<ThreadComm>(child, me);
  }

  void abort(const std::string& why) { g_->breakGroup(why); }

 private:
  template <typename T>
  void allReduceT(T* buf, size_t n, ReduceOp op) {
    Slot s;
    s.kind = Kind::AllReduce; s.dtype = int(sizeof(T)); s.op = int(op); s.n = n; s.in = buf; s.out = buf;
    begin(s);
    const int N = g_->size;
    // Rank r owns elements [lo, hi) of every buffer: it reduces them in rank order and writes
    // the result back to all buffers (nobody else touches that range).
    const size_t lo = n * size_t(rank_) / size_t(N), hi = n * size_t(rank_ + 1) / size_t(N);
    if (hi > lo) {
      std::vector<T> acc(static_cast<T*>(g_->slots[0].out) + lo, static_cast<T*>(g_->slots[0].out) + hi);
      for (int j = 1; j < N; j++) {
        const T* p = static_cast<const T*>(g_->slots[size_t(j)].out) + lo;
        if (op == ReduceOp::Sum) {
          for (size_t i = 0; i < acc.size(); i++) acc[i] += p[i];
        } else {
          for (size_t i = 0; i < acc.size(); i++) acc[i] = p[i] > acc[i] ? p[i] : acc[i];
        }
      }
      for (int j = 0; j < N; j++) std::memcpy(static_cast<T*>(g_->slots[size_t(j)].out) + lo, acc.data(), acc.size() * sizeof(T));
    }
    end(s);
  }

  // Publish this rank's call, wait for all, and check that every rank made the same call.
  void begin(const Slot& s) {
    {
      std::lock_guard<std::mutex> l(g_->m);
      if (g_->broken) throw CommError(g_->why);
      g_->slots[size_t(rank_)] = s;
    }
    g_->arrive(rank_, kindName(s.kind));
    for (int j = 0; j < g_->size; j++) {
      const Slot& o = g_->slots[size_t(j)];
      if (o.kind != s.kind || o.dtype != s.dtype || o.op != s.op || o.n != s.n || o.root != s.root) {
        const std::string msg = "thread comm: mismatched collectives: rank " + std::to_string(rank_) + " called " +
                                kindName(s.kind) + "(n=" + std::to_string(s.n) + ") but rank " + std::to_string(j) +
                                " called " + kindName(o.kind) + "(n=" + std::to_string(o.n) + ")";
        g_->breakGroup(msg);
        throw CommError(msg);
      }
    }
  }
  // Everyone finished reading the others' buffers.
  void end(const Slot& s) { g_->arrive(rank_, kindName(s.kind)); }

  std::shared_ptr<Group> g_;
  const int rank_;
  std::map<std::string, int> gens_;
};

}  // namespace

std::vector<std::shared_ptr<Comm>> makeThreadWorld(int n, std::chrono::milliseconds timeout) {
  if (n < 1) throw std::invalid_argument("makeThreadWorld: n must be >= 1 (got " + std::to_string(n) + ")");
  if (timeout.count() <= 0) throw std::invalid_argument("makeThreadWorld: timeout must be positive");
  auto g = std::make_shared<Group>(n, timeout);
  std::vector<std::shared_ptr<Comm>> out;
  for (int i = 0; i < n; i++) out.push_back(std::make_shared<ThreadComm>(g, i));
  return out;
}

std::vector<std::shared_ptr<Comm>> makeThreadWorld(int n) { return makeThreadWorld(n, std::chrono::seconds(30)); }

bool abortThreadComm(Comm& comm, const std::string& why) {
  auto* t = dynamic_cast<ThreadComm*>(&comm);
  if (!t) return false;
  t->abort(why);
  return true;
}

}  // namespace dw
