// Module entry: the classes, acceptLength, and the BLAS / random-number utilities.
// Every export is declared in src/native/addon.ts (the one native contract file).
#include <napi.h>

#include <cstdlib>

#include "kernels/blas.h"
#include "kernels/parallel.h"
#include "kernels/rng.h"
#include "napi/napi_comm.h"  // collectives
#include "napi/napi_convert.h"
#include "napi/napi_cuda.h"
#include "napi/napi_hash.h"
#include "napi/napi_models.h"

namespace dw {
namespace {

Napi::Value BlasInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("config", blas_config());
  const char* ct = std::getenv("OPENBLAS_CORETYPE");
  o.Set("coretype", ct ? Napi::Value(Napi::String::New(env, ct)) : env.Null());
  o.Set("threads", blas_threads());
  o.Set("poolThreads", pool_threads());
  o.Set("gloo", bool(DRAFTWIRE_HAVE_GLOO));
  return o;
}

Napi::Value SetBlasThreads(const Napi::CallbackInfo& info) {
  const int64_t n = need_int(info.Env(), info[0], "threads", 1, 256);
  set_blas_threads(int(n));
  set_pool_threads(int(n));
  return info.Env().Undefined();
}

// sgemmBench(n, reps, threads) → GFLOP/s (synchronous: a benchmark helper)
Napi::Value SgemmBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t n = need_int(env, info[0], "n", 1, 8192);
  const int64_t reps = need_int(env, info[1], "reps", 1, 100000);
  const int64_t threads = need_int(env, info[2], "threads", 1, 256);
  return Napi::Number::New(env, sgemm_bench(int(n), int(reps), int(threads)));
}

// fillNormal(out: Float32Array, seed, stream, mean, std)
Napi::Value FillNormal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto out = need_typed<float>(env, info[0], "out", -1);
  const int64_t seed = need_int(env, info[1], "seed", 0, int64_t(1) << 53);
  const int64_t stream = need_int(env, info[2], "stream", 0, int64_t(1) << 53);
  const double mean = need_number(env, info[3], "mean");
  const double sd = need_number(env, info[4], "std");
  fill_normal(out.Data(), int64_t(out.ElementLength()), uint64_t(seed), uint64_t(stream), mean, sd);
  return env.Undefined();
}

Napi::Value GemmFlops(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), gemm_flops_executed());
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  Napi::Function draft = DraftWrap::Init(env);
  Napi::Function target = TargetWrap::Init(env);
  data->draft_ctor = Napi::Persistent(draft);
  data->target_ctor = Napi::Persistent(target);
  env.SetInstanceData<AddonData>(data);
  exports.Set("DraftModel", draft);
  exports.Set("TargetModel", target);
  exports.Set("acceptLength", Napi::Function::New(env, AcceptLength, "acceptLength"));
  exports.Set("blasInfo", Napi::Function::New(env, BlasInfo, "blasInfo"));
  exports.Set("setBlasThreads", Napi::Function::New(env, SetBlasThreads, "setBlasThreads"));
  exports.Set("sgemmBench", Napi::Function::New(env, SgemmBench, "sgemmBench"));
  exports.Set("fillNormal", Napi::Function::New(env, FillNormal, "fillNormal"));
  exports.Set("gemmFlops", Napi::Function::New(env, GemmFlops, "gemmFlops"));
  registerConvert(env, exports);  // upcastToF32, convertInfo (napi/napi_convert.h)
  registerHash(env, exports);  // blake3Blocks (napi/napi_hash.h)
  registerCollectives(env, exports);  // collectives: commConnect, commThreadWorld, memcpyBench
  registerCuda(env, exports);  // cudaInfo, cudaHostCheck (napi/napi_cuda.h)
  return exports;
}

}  // namespace dw

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return dw::Init(env, exports); }

NODE_API_MODULE(draftwire_native, InitModule)
