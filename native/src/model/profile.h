// Opt-in phase timing: with DRAFTWIRE_PROFILE=1 in the environment, DraftModel::run prints
// where its time went (stderr) after every call. Costs one branch per phase otherwise.
#pragma once
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace dw {

class PhaseTimer {
 public:
  PhaseTimer() : on_(std::getenv("DRAFTWIRE_PROFILE") != nullptr), t_(now()), t0_(t_) {}
  void lap(const char* name) {
    if (!on_) return;
    const double t = now();
    acc_[name] += t - t_;
    t_ = t;
  }
  void report(const char* title) const {
    if (!on_) return;
    std::fprintf(stderr, "[draftwire profile] %s: %.1f ms\n", title, (now() - t0_) * 1e3);
    for (const auto& kv : acc_) std::fprintf(stderr, "  %-28s %8.1f ms\n", kv.first.c_str(), kv.second * 1e3);
  }

 private:
  static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  bool on_;
  double t_, t0_;
  std::map<std::string, double> acc_;
};

}  // namespace dw
