#include "napi/napi_cuda.h"

#include <string>

#include "cuda/device.h"
#include "cuda/host_check.h"
#include "cuda/libs.h"
#include "napi/napi_models.h"
#include "napi/napi_util.h"

namespace dw {
namespace {

Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const cuda::DeviceInfo d = cuda::device_info();
  Napi::Object o = Napi::Object::New(env);
  o.Set("built", d.built);
  o.Set("arch", d.built ? Napi::Value(Napi::String::New(env, d.arch)) : env.Null());
  o.Set("runtimeVersion", d.built ? Napi::Value(Napi::Number::New(env, d.runtime_version)) : env.Null());
  o.Set("driverVersion", d.driver_version > 0 ? Napi::Value(Napi::Number::New(env, d.driver_version)) : env.Null());
  Napi::Array gpus = Napi::Array::New(env, d.gpus.size());
  for (size_t i = 0; i < d.gpus.size(); i++) {
    Napi::Object g = Napi::Object::New(env);
    g.Set("name", d.gpus[i].name);
    g.Set("computeCapability", std::to_string(d.gpus[i].cc_major) + "." + std::to_string(d.gpus[i].cc_minor));
    g.Set("sms", d.gpus[i].sms);
    g.Set("memoryGiB", d.gpus[i].memory_gib);
    gpus.Set(uint32_t(i), g);
  }
  o.Set("gpus", gpus);
  o.Set("error", d.error.empty() ? env.Null() : Napi::Value(Napi::String::New(env, d.error)));
  std::string why;
  if (const cuda::CublasApi* b = cuda::cublas(&why)) {
    Napi::Object c = Napi::Object::New(env);
    c.Set("path", b->path);
    c.Set("version", std::to_string(b->major) + "." + std::to_string(b->minor) + "." + std::to_string(b->patch));
    o.Set("cublas", c);
    o.Set("cublasError", env.Null());
  } else {
    o.Set("cublas", env.Null());
    o.Set("cublasError", why);
  }
  why.clear();
  if (const cuda::NcclApi* n = cuda::nccl(&why)) {
    Napi::Object c = Napi::Object::New(env);
    c.Set("path", n->path);
    c.Set("version", n->version);
    o.Set("nccl", c);
    o.Set("ncclError", env.Null());
  } else {
    o.Set("nccl", env.Null());
    o.Set("ncclError", why);
  }
  return o;
}

Napi::Array checks_to_js(Napi::Env env, const std::vector<cuda::BodyCheck>& checks) {
  Napi::Array out = Napi::Array::New(env, checks.size());
  for (size_t i = 0; i < checks.size(); i++) {
    Napi::Object c = Napi::Object::New(env);
    c.Set("name", checks[i].name);
    c.Set("err", checks[i].err);
    c.Set("tol", checks[i].tol);
    c.Set("values", double(checks[i].values));
    c.Set("note", checks[i].note.empty() ? env.Null() : Napi::Value(Napi::String::New(env, checks[i].note)));
    out.Set(uint32_t(i), c);
  }
  return out;
}

// cudaHostCheck(seed) → [{ name, err, tol, values, note }]
Napi::Value CudaHostCheck(const Napi::CallbackInfo& info) {
  const int64_t seed = need_int(info.Env(), info[0], "seed", 0, int64_t(1) << 53);
  return checks_to_js(info.Env(), cuda::host_check(uint64_t(seed)));
}

// cudaDeviceCheck(seed) → { checks: [...], error: string | null } (synchronous: a check tool,
// never called from a serving process; seconds on a GPU).
Napi::Value CudaDeviceCheck(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t seed = need_int(env, info[0], "seed", 0, int64_t(1) << 53);
  std::string error;
  const auto checks = cuda::device_check(uint64_t(seed), &error);
  Napi::Object o = Napi::Object::New(env);
  o.Set("checks", checks_to_js(env, checks));
  o.Set("error", error.empty() ? env.Null() : Napi::Value(Napi::String::New(env, error)));
  return o;
}

// cudaStepBench(config, {batch, seq, reps, warmup, bf16}) → { msPerStep, tokensPerSec, setupMs,
// loss, deviceGiB, unavailable, error } (synchronous, like cudaDeviceCheck: a benchmark tool).
Napi::Value CudaStepBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DraftConfig c = parse_draft_config(env, info[0]);
  Napi::Object o = need_object(env, info[1], "options");
  const int64_t B = field_int(o, "batch", "options", 1, 1 << 20), T = field_int(o, "seq", "options", 2, 1 << 20);
  const int reps = int(field_int(o, "reps", "options", 1, 1000)), warmup = int(field_int(o, "warmup", "options", 0, 1000));
  const bool bf16 = field_bool(o, "bf16", "options", false);
  std::string error;
  const cuda::StepBench r = cuda::step_bench(c, B, T, reps, warmup, bf16, &error);
  Napi::Object out = Napi::Object::New(env);
  out.Set("msPerStep", r.ms_per_step);
  out.Set("tokensPerSec", r.tokens_per_sec);
  out.Set("setupMs", r.setup_ms);
  out.Set("loss", r.loss);
  out.Set("deviceGiB", r.device_gib);
  out.Set("unavailable", r.unavailable);
  out.Set("error", error.empty() ? env.Null() : Napi::Value(Napi::String::New(env, error)));
  return out;
}

}  // namespace

void registerCuda(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaInfo", Napi::Function::New(env, CudaInfo, "cudaInfo"));
  exports.Set("cudaHostCheck", Napi::Function::New(env, CudaHostCheck, "cudaHostCheck"));
  exports.Set("cudaDeviceCheck", Napi::Function::New(env, CudaDeviceCheck, "cudaDeviceCheck"));
  exports.Set("cudaStepBench", Napi::Function::New(env, CudaStepBench, "cudaStepBench"));
}

}  // namespace dw
