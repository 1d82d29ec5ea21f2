// Helpers for the N-API bindings: argument checks that throw JS errors with a stable `code`
// ('INVALID_ARGUMENT' for bad input, 'COLLECTIVE' for a failed collective (dw::CommError),
// 'NATIVE' otherwise), and a promise-returning AsyncWorker. src/native/addon.ts maps the codes to
// InvalidArgumentError / CollectiveError / NativeError.
#pragma once
#include <napi.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/rope.h"

namespace dw {

// Bad input detected off the JS thread (becomes an INVALID_ARGUMENT rejection).
struct InvalidArg : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void throw_invalid(Napi::Env env, const std::string& msg);
[[noreturn]] void throw_native(Napi::Env env, const std::string& msg);

Napi::Object need_object(Napi::Env env, Napi::Value v, const std::string& what);
// An integer-valued number in [lo, hi].
int64_t need_int(Napi::Env env, Napi::Value v, const std::string& what, int64_t lo, int64_t hi);
int64_t field_int(Napi::Object o, const char* key, const std::string& what, int64_t lo, int64_t hi);
double need_number(Napi::Env env, Napi::Value v, const std::string& what);
double field_number(Napi::Object o, const char* key, const std::string& what);
// o.ropeScaling: absent/null → none; {type: 'linear'|'llama3', factor, lowFreqFactor?,
// highFreqFactor?, originalMaxPositionEmbeddings?} (defaults 1, 4, 8192), validated.
RopeScaling field_rope_scaling(Napi::Object o, const std::string& what);
// o.headDim: absent/null/0 → 0 (hidden/heads), else an even integer in [2, 65536].
int64_t field_head_dim(Napi::Object o, const std::string& what);
// o[key]: absent/undefined → def, else a boolean.
bool field_bool(Napi::Object o, const char* key, const std::string& what, bool def);

// A typed array of exactly the given type (and, when expected >= 0, length).
template <typename T>
Napi::TypedArrayOf<T> need_typed(Napi::Env env, Napi::Value v, const std::string& what, int64_t expected);

// Copies of vectors into new typed arrays.
Napi::Float32Array to_f32(Napi::Env env, const float* p, size_t n);
Napi::Int32Array to_i32(Napi::Env env, const int32_t* p, size_t n);

// Upper bound on the scratch one call may allocate (Linux overcommits: an oversized request
// would not fail cleanly but get the process OOM-killed later, so refuse it up front).
constexpr double kMaxScratchBytes = 8.0 * (1ull << 30);
// Longest sequence the target decodes (prompt + new tokens).
constexpr int64_t kMaxDecodeLen = int64_t(1) << 17;

// First index of a non-finite value, or -1.
int64_t first_nonfinite(const float* p, int64_t n);

// Promise-returning worker: run() on the libuv pool, result() back on the JS thread.
// done() runs on the JS thread in both outcomes (release busy flags there). run() throwing
// InvalidArg or std::invalid_argument rejects with code INVALID_ARGUMENT, CommError with
// COLLECTIVE, anything else with NATIVE.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, const char* name)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  virtual void run() = 0;
  virtual Napi::Value result(Napi::Env env) = 0;
  virtual void done() {}

 private:
  void Execute() final;
  void OnOK() final;
  void OnError(const Napi::Error& e) final;

  Napi::Promise::Deferred deferred_;
  const char* code_ = "NATIVE";
};

// RAII-less busy flag for an object shared between JS calls and workers.
struct BusyFlag {
  std::atomic<bool> busy{false};
  bool try_acquire() {
    bool expected = false;
    return busy.compare_exchange_strong(expected, true);
  }
  void release() { busy.store(false); }
};

// Releases a BusyFlag taken by a synchronous operation when it returns or throws.
struct BusyRelease {
  BusyFlag& flag;
  ~BusyRelease() { flag.release(); }
};

}  // namespace dw
