#include "cuda/libs.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace dw::cuda {
namespace {

// dlopen the first of `names` found in DRAFTWIRE_CUDA_LIBS's directories, then on the loader's path.
void* open_first(const std::vector<std::string>& names, std::string* path, std::string* why) {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("DRAFTWIRE_CUDA_LIBS")) {
    std::string s(env);
    for (size_t a = 0; a <= s.size();) {
      const size_t b = s.find(':', a);
      const std::string d = s.substr(a, b == std::string::npos ? std::string::npos : b - a);
      if (!d.empty()) dirs.push_back(d);
      if (b == std::string::npos) break;
      a = b + 1;
    }
  }
  dirs.push_back("");  // the dynamic loader's own search path
  std::string tried;
  for (const auto& d : dirs)
    for (const auto& n : names) {
      const std::string p = d.empty() ? n : d + "/" + n;
      if (void* h = dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL)) {
        *path = p;
        return h;
      }
      const char* e = dlerror();
      tried += (tried.empty() ? "" : "; ") + (e ? std::string(e) : p);
    }
  *why = "not found (set DRAFTWIRE_CUDA_LIBS to the directory that holds it): " + tried;
  return nullptr;
}

template <typename F>
bool sym(void* lib, const char* name, F* out, std::string* why) {
  *out = reinterpret_cast<F>(dlsym(lib, name));
  if (!*out) *why += std::string(why->empty() ? "" : ", ") + name;
  return *out != nullptr;
}

}  // namespace

const CublasApi* cublas(std::string* why) {
  static std::once_flag once;
  static CublasApi api;
  static const CublasApi* loaded = nullptr;
  static std::string failure;
  std::call_once(once, [] {
    void* lib = open_first({"libcublas.so.13", "libcublas.so.12", "libcublas.so"}, &api.path, &failure);
    if (!lib) return;
    std::string missing;
    int (*get_property)(int, int*) = nullptr;
    sym(lib, "cublasCreate_v2", &api.create, &missing);
    sym(lib, "cublasDestroy_v2", &api.destroy, &missing);
    sym(lib, "cublasSetStream_v2", &api.set_stream, &missing);
    sym(lib, "cublasSgemm_v2", &api.sgemm, &missing);
    sym(lib, "cublasGemmEx", &api.gemm_ex, &missing);
    sym(lib, "cublasGetProperty", &get_property, &missing);
    if (!missing.empty()) { failure = api.path + " lacks " + missing; return; }
    get_property(0, &api.major);
    get_property(1, &api.minor);
    get_property(2, &api.patch);
    loaded = &api;
  });
  if (!loaded && why) *why = "cuBLAS " + failure;
  return loaded;
}

const NcclApi* nccl(std::string* why) {
  static std::once_flag once;
  static NcclApi api;
  static const NcclApi* loaded = nullptr;
  static std::string failure;
  std::call_once(once, [] {
    void* lib = open_first({"libnccl.so.2", "libnccl.so"}, &api.path, &failure);
    if (!lib) return;
    std::string missing;
    int (*get_version)(int*) = nullptr;
    sym(lib, "ncclGetVersion", &get_version, &missing);
    sym(lib, "ncclGetUniqueId", &api.get_unique_id, &missing);
    sym(lib, "ncclCommInitRank", &api.comm_init_rank, &missing);
    sym(lib, "ncclAllReduce", &api.all_reduce, &missing);
    sym(lib, "ncclAllGather", &api.all_gather, &missing);
    sym(lib, "ncclReduceScatter", &api.reduce_scatter, &missing);
    sym(lib, "ncclBroadcast", &api.broadcast, &missing);
    sym(lib, "ncclCommGetAsyncError", &api.comm_get_async_error, &missing);
    sym(lib, "ncclCommAbort", &api.comm_abort, &missing);
    sym(lib, "ncclCommDestroy", &api.comm_destroy, &missing);
    sym(lib, "ncclGetErrorString", &api.error_string, &missing);
    if (!missing.empty()) { failure = api.path + " lacks " + missing; return; }
    get_version(&api.version);
    loaded = &api;
  });
  if (!loaded && why) *why = "NCCL " + failure;
  return loaded;
}

}  // namespace dw::cuda
