#include "kernels/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace dw {
namespace {

class Pool {
 public:
  void resize(int n) {
    n = std::max(1, std::min(64, n));
    bool expected = false;
    while (!busy_.compare_exchange_weak(expected, true)) {  // wait for a running region
      expected = false;
      std::this_thread::yield();
    }
    if (int(workers_.size()) + 1 != n) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
        gen_++;
      }
      cv_.notify_all();
      for (auto& t : workers_) t.join();
      workers_.clear();
      stop_ = false;
      // a new worker must start from the generation current now: reading it later, from the
      // thread itself, could skip a region published in between (and deadlock its caller)
      const uint64_t start = gen_;
      for (int i = 1; i < n; i++) workers_.emplace_back([this, start] { loop(start); });
    }
    threads_ = n;
    busy_.store(false);
  }

  int threads() const { return threads_; }

  void run(int64_t nchunks, const std::function<void(int64_t)>& fn) {
    bool expected = false;
    if (threads_ <= 1 || nchunks <= 1 || !busy_.compare_exchange_strong(expected, true)) {
      for (int64_t c = 0; c < nchunks; c++) fn(c);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      nchunks_ = nchunks;
      next_.store(0);
      pending_ = int(workers_.size());
      gen_++;
    }
    cv_.notify_all();
    work();
    std::exception_ptr err;
    {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [this] { return pending_ == 0; });
      fn_ = nullptr;
      err = error_;
      error_ = nullptr;
    }
    busy_.store(false);
    if (err) std::rethrow_exception(err);  // e.g. bad_alloc in a worker: fail the call, not the process
  }

 private:
  void work() {
    for (;;) {
      int64_t c = next_.fetch_add(1);
      if (c >= nchunks_) break;
      try {
        (*fn_)(c);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
        next_.store(nchunks_);  // stop handing out chunks
      }
    }
  }

  void loop(uint64_t seen) {
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return gen_ != seen; });
        seen = gen_;
        if (stop_) return;
      }
      work();
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  std::atomic<bool> busy_{false};
  bool stop_ = false;
  uint64_t gen_ = 0;
  int pending_ = 0;
  int threads_ = 1;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t nchunks_ = 0;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
};

// Never destroyed: at process exit a worker may still be inside a region started by a libuv
// thread, and joining it from a static destructor could stall the exit.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

void set_pool_threads(int n) { pool().resize(n); }
int pool_threads() { return pool().threads(); }

void parallel_chunks(int64_t nchunks, const std::function<void(int64_t)>& fn) { pool().run(nchunks, fn); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  int64_t nchunks = (n + grain - 1) / grain;
  if (nchunks == 1) {
    fn(0, n);
    return;
  }
  parallel_chunks(nchunks, [&](int64_t c) { fn(c * grain, std::min(n, (c + 1) * grain)); });
}

void parallel_reduce(int64_t n, int64_t grain, int64_t len, float* out,
                     const std::function<void(int64_t, int64_t, float*)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  int64_t nchunks = (n + grain - 1) / grain;
  if (nchunks > 64) {  // bound the partial buffers; still a function of n only
    grain = (n + 63) / 64;
    nchunks = (n + grain - 1) / grain;
  }
  std::vector<float> parts(size_t(nchunks) * size_t(len), 0.0f);
  parallel_chunks(nchunks, [&](int64_t c) {
    fn(c * grain, std::min(n, (c + 1) * grain), parts.data() + c * len);
  });
  for (int64_t c = 0; c < nchunks; c++) {
    const float* p = parts.data() + c * len;
    for (int64_t i = 0; i < len; i++) out[i] += p[i];
  }
}

}  // namespace dw
