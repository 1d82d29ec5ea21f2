#include "collectives/comm_gloo.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <unordered_map>

#include "collectives/comm_thread.h"

#if DRAFTWIRE_HAVE_GLOO
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>
#endif

namespace dw {

using ms = std::chrono::milliseconds;

// ------------------------------------------------------------------------------------------
// In-memory store

namespace {
class MemoryStore final : public RendezvousStore {
 public:
  void set(const std::string& key, const std::vector<char>& value) override {
    {
      std::lock_guard<std::mutex> l(m_);
      kv_[key] = value;
    }
    cv_.notify_all();
  }
  std::vector<char> get(const std::string& key, ms timeout) override {
    std::unique_lock<std::mutex> l(m_);
    if (!cv_.wait_for(l, timeout, [&] { return kv_.count(key) > 0; }))
      throw CommError("rendezvous: key " + key + " was not set within " + std::to_string(timeout.count()) + " ms");
    return kv_[key];
  }
  void remove(const std::string& key) override {
    std::lock_guard<std::mutex> l(m_);
    kv_.erase(key);
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::unordered_map<std::string, std::vector<char>> kv_;
};
}  // namespace

std::shared_ptr<RendezvousStore> makeMemoryStore() { return std::make_shared<MemoryStore>(); }

// Shared validation of a sub-group member list; returns the caller's index in it.
[[maybe_unused]] static int checkMembers(const std::vector<int>& ranks, int myRank, int size, const std::string& tag) {
  if (tag.empty() || tag.find('/') != std::string::npos)
    throw std::invalid_argument("subgroup: tag must be non-empty and must not contain '/' (got \"" + tag + "\")");
  int me = -1;
  std::set<int> seen;
  for (size_t i = 0; i < ranks.size(); i++) {
    const int r = ranks[i];
    if (r < 0 || r >= size)
      throw std::invalid_argument("subgroup: rank " + std::to_string(r) + " is not in this group of " + std::to_string(size));
    if (!seen.insert(r).second) throw std::invalid_argument("subgroup: rank " + std::to_string(r) + " is listed twice");
    if (r == myRank) me = int(i);
  }
  if (me < 0) throw std::invalid_argument("subgroup: the caller (rank " + std::to_string(myRank) + ") must be a member");
  return me;
}

#if DRAFTWIRE_HAVE_GLOO

bool haveGloo() { return true; }

namespace {

// gloo::rendezvous::Store over a RendezvousStore, under a key prefix. Every wait uses the
// connect timeout (Gloo would pass the collective timeout, too short for slow starters).
class StoreAdapter final : public gloo::rendezvous::Store {
 public:
  StoreAdapter(std::shared_ptr<RendezvousStore> s, std::string prefix, ms timeout)
      : s_(std::move(s)), prefix_(std::move(prefix)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    const std::string k = join(key);
    s_->set(k, data);
    written_.push_back(k);
  }
  std::vector<char> get(const std::string& key) override { return s_->get(join(key), timeout_); }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const ms& /*gloo's*/) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    for (const auto& k : keys) {
      auto left = std::chrono::duration_cast<ms>(deadline - std::chrono::steady_clock::now());
      s_->get(join(k), std::max(left, ms(1)));
    }
  }
  void cleanup() {
    for (const auto& k : written_) s_->remove(k);
    written_.clear();
  }

 private:
  std::string join(const std::string& key) const { return prefix_ + "/" + key; }
  std::shared_ptr<RendezvousStore> s_;
  const std::string prefix_;
  const ms timeout_;
  std::vector<std::string> written_;
};

// What a world and all its sub-groups share.
struct GlooShared {
  std::shared_ptr<RendezvousStore> store;
  GlooOptions opts;
  std::shared_ptr<gloo::transport::Device> dev;  // null for a world of one
};

using ReduceFn = void (*)(void*, const void*, const void*, size_t);

template <typename T>
ReduceFn reduceFn(ReduceOp op) {
  return op == ReduceOp::Sum ? static_cast<ReduceFn>(&gloo::sum<T>) : static_cast<ReduceFn>(&gloo::max<T>);
}

class GlooComm final : public Comm {
 public:
  GlooComm(std::shared_ptr<GlooShared> sh, int rank, int size, std::string prefix)
      : sh_(std::move(sh)), rank_(rank), size_(size), prefix_(std::move(prefix)),
        thread_(std::make_unique<JobThread>("dw-gloo-comm")) {}

  ~GlooComm() override {
    thread_.reset();  // idle by now: nobody holds this communicator
    ctx_.reset();     // closes its sockets
  }

  // Runs on the communicator's thread.
  void connect() {
    thread_->run([&] {
      if (size_ == 1) return;
      try {
        auto ctx = std::make_shared<gloo::rendezvous::Context>(rank_, size_);
        ctx->setTimeout(sh_->opts.timeout);
        StoreAdapter store(sh_->store, prefix_, sh_->opts.connectTimeout);
        ctx->connectFullMesh(store, sh_->dev);
        gloo::BarrierOptions b(ctx);
        b.setTimeout(sh_->opts.connectTimeout);
        gloo::barrier(b);  // everyone read everyone's address: the keys can go
        store.cleanup();
        ctx_ = std::move(ctx);
      } catch (const CommError& e) {
        throw CommError(desc("connect") + ": " + e.what());
      } catch (const std::exception& e) {
        throw CommError(desc("connect") + ": " + e.what());
      }
    });
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allReduce(float* buf, size_t n, ReduceOp op) override { allReduceT(buf, n, op); }
  void allReduce(double* buf, size_t n, ReduceOp op) override { allReduceT(buf, n, op); }

  void allGather(const float* in, float* out, size_t n) override {
    exec("allGather", [&] {
      if (size_ == 1) {
        if (n && in != out) std::memmove(out, in, n * sizeof(float));
        return;
      }
      if (n == 0) return;
      gloo::AllgatherOptions o(ctx_);
      o.setInput(const_cast<float*>(in), n);
      o.setOutput(out, n * size_t(size_));
      o.setTimeout(sh_->opts.timeout);
      gloo::allgather(o);
    });
  }

  // Ring reduce-scatter on Gloo's unbound buffers (the reduce-scatter half of Gloo's ring
  // all-reduce): N-1 steps, each sends one partially reduced chunk right and receives one
  // from the left; bytes on the wire per rank (N-1)/N of the input, every wait bounded.
  void reduceScatter(const float* in, float* out, size_t n) override {
    exec("reduceScatter", [&] {
      if (size_ == 1 || n == 0) {
        if (n && in != out) std::memmove(out, in, n * sizeof(float));
        return;
      }
      const int P = size_, r = rank_;
      const auto mod = [P](int x) { return ((x % P) + P) % P; };
      const int right = mod(r + 1), left = mod(r - 1);
      const size_t bytes = n * sizeof(float);
      std::vector<float> a(n), b(n);
      std::memcpy(a.data(), in + size_t(mod(r - 1)) * n, bytes);
      auto ua = ctx_->createUnboundBuffer(a.data(), bytes);
      auto ub = ctx_->createUnboundBuffer(b.data(), bytes);
      const uint64_t slot = uint64_t(ctx_->nextSlot());
      const ms t = sh_->opts.timeout;
      for (int s = 0; s < P - 1; s++) {
        auto& snd = (s % 2 == 0) ? ua : ub;
        auto& rcv = (s % 2 == 0) ? ub : ua;
        float* rp = (s % 2 == 0) ? b.data() : a.data();
        rcv->recv(left, slot);
        snd->send(right, slot);
        rcv->waitRecv(t);
        snd->waitSend(t);
        const float* mine = in + size_t(mod(r - 2 - s)) * n;
        for (size_t i = 0; i < n; i++) rp[i] += mine[i];
      }
      // The last chunk received (step P-2) is chunk r, fully reduced.
      std::memcpy(out, ((P - 2) % 2 == 0) ? b.data() : a.data(), bytes);
    });
  }

  void broadcast(float* buf, size_t n, int root) override {
    if (root < 0 || root >= size_)
      throw std::invalid_argument("broadcast root " + std::to_string(root) + " is not a rank of this group of " +
                                  std::to_string(size_));
    exec("broadcast", [&] {
      if (size_ == 1 || n == 0) return;
      gloo::BroadcastOptions o(ctx_);
      o.setOutput(buf, n);
      o.setRoot(root);
      o.setTimeout(sh_->opts.timeout);
      gloo::broadcast(o);
    });
  }

  void barrier() override {
    exec("barrier", [&] {
      if (size_ == 1) return;
      gloo::BarrierOptions o(ctx_);
      o.setTimeout(sh_->opts.timeout);
      gloo::barrier(o);
    });
  }

  std::shared_ptr<Comm> subgroup(const std::vector<int>& ranks, const std::string& tag) override {
    const int me = checkMembers(ranks, rank_, size_, tag);
    std::string key = prefix_ + "/sub/" + tag + "/";
    for (size_t i = 0; i < ranks.size(); i++) key += (i ? "-" : "") + std::to_string(ranks[i]);
    int gen;
    {
      std::lock_guard<std::mutex> l(genM_);
      gen = ++gens_[key];
    }
    key += "/" + std::to_string(gen);
    auto child = std::make_shared<GlooComm>(sh_, me, int(ranks.size()), key);
    child->connect();
    return child;
  }

 private:
  template <typename T>
  void allReduceT(T* buf, size_t n, ReduceOp op) {
    exec("allReduce", [&] {
      if (size_ == 1 || n == 0) return;
      gloo::AllreduceOptions o(ctx_);
      o.setOutput(buf, n);  // in place: the output is the input
      o.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
      o.setReduceFunction(reduceFn<T>(op));
      o.setTimeout(sh_->opts.timeout);
      gloo::allreduce(o);
    });
  }

  std::string desc(const char* what) const {
    return std::string("gloo ") + what + " (rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ", " +
           prefix_ + ")";
  }

  // Runs body on the communicator's thread. The first transport error breaks the group.
  template <typename F>
  void exec(const char* what, F&& body) {
    thread_->run([&] {
      if (!broken_.empty()) throw CommError(desc(what) + ": communicator is broken: " + broken_);
      try {
        body();
      } catch (const std::invalid_argument&) {
        throw;
      } catch (const std::exception& e) {
        broken_ = e.what();
        if (ctx_) {
          try {
            ctx_->closeConnections();  // peers fail fast instead of waiting for their timeout
          } catch (...) {
          }
        }
        throw CommError(desc(what) + ": " + e.what());
      }
    });
  }

  std::shared_ptr<GlooShared> sh_;
  const int rank_, size_;
  const std::string prefix_;
  std::shared_ptr<gloo::rendezvous::Context> ctx_;  // touched on thread_ only
  std::string broken_;                              // touched on thread_ only
  std::mutex genM_;
  std::map<std::string, int> gens_;
  std::unique_ptr<JobThread> thread_;
};

}  // namespace

std::shared_ptr<Comm> connectGloo(std::shared_ptr<RendezvousStore> store, const GlooOptions& o) {
  if (!store) throw std::invalid_argument("connectGloo: no store");
  if (o.size < 1 || o.rank < 0 || o.rank >= o.size)
    throw std::invalid_argument("connectGloo: rank " + std::to_string(o.rank) + " is not in [0, " + std::to_string(o.size) + ")");
  if (o.prefix.empty()) throw std::invalid_argument("connectGloo: prefix must be non-empty");
  if (o.timeout.count() <= 0 || o.connectTimeout.count() <= 0)
    throw std::invalid_argument("connectGloo: timeouts must be positive");
  auto sh = std::make_shared<GlooShared>();
  sh->store = std::move(store);
  sh->opts = o;
  if (o.size > 1) {
    gloo::transport::tcp::attr attr;
    if (!o.iface.empty()) attr.iface = o.iface;
    else attr.hostname = o.hostname.empty() ? "127.0.0.1" : o.hostname;
    try {
      sh->dev = gloo::transport::tcp::CreateDevice(attr);
    } catch (const std::exception& e) {
      throw CommError(std::string("gloo: cannot create the tcp device (") +
                      (o.iface.empty() ? "host " + attr.hostname : "interface " + o.iface) + "): " + e.what());
    }
  }
  auto c = std::make_shared<GlooComm>(sh, o.rank, o.size, o.prefix);
  c->connect();
  return c;
}

#else  // !DRAFTWIRE_HAVE_GLOO

bool haveGloo() { return false; }

std::shared_ptr<Comm> connectGloo(std::shared_ptr<RendezvousStore>, const GlooOptions&) {
  throw CommError("this build of the native addon has no Gloo (install libgloo-dev and rebuild)");
}

#endif

}  // namespace dw
