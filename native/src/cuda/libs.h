// cuBLAS and NCCL, loaded at run time (dlopen), never linked: the addon builds and loads on any
// machine, and a GPU machine's PyTorch wheel (site-packages/nvidia/{cublas,nccl}/lib) or CUDA
// install provides them. Only the few entry points the step uses are declared, with their C
// ABI (ints for the enums, opaque pointers for handles). Search order: each directory of
// DRAFTWIRE_CUDA_LIBS (colon-separated), then the dynamic loader's own search path.
#pragma once
#include <cstddef>
#include <string>

namespace dw::cuda {

// cuBLAS's enum values (cublas_api.h, library_types.h) the step passes.
enum : int { kOpN = 0, kOpT = 1, kR32F = 0, kR16BF = 14, kCompute32F = 68, kGemmDefault = -1 };

struct CublasApi {
  std::string path;
  int major = 0, minor = 0, patch = 0;
  int (*create)(void** handle) = nullptr;                         // cublasCreate_v2
  int (*destroy)(void* handle) = nullptr;                         // cublasDestroy_v2
  int (*set_stream)(void* handle, void* stream) = nullptr;        // cublasSetStream_v2
  int (*sgemm)(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const float* A, int lda,
               const float* B, int ldb, const float* beta, float* C, int ldc) = nullptr;  // cublasSgemm_v2
  int (*gemm_ex)(void* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, int atype, int lda,
                 const void* B, int btype, int ldb, const void* beta, void* C, int ctype, int ldc, int compute,
                 int algo) = nullptr;                                                       // cublasGemmEx
};

// NCCL's enum values (nccl.h) the collectives pass.
enum : int { kNcclFloat32 = 7, kNcclFloat64 = 8, kNcclSum = 0, kNcclMax = 2, kNcclSuccess = 0, kNcclInProgress = 7 };
struct NcclUniqueId { char internal[128]; };

struct NcclApi {
  std::string path;
  int version = 0;  // e.g. 22703 for 2.27.3
  int (*get_unique_id)(NcclUniqueId* id) = nullptr;
  int (*comm_init_rank)(void** comm, int nranks, NcclUniqueId id, int rank) = nullptr;
  int (*all_reduce)(const void* send, void* recv, size_t count, int dtype, int op, void* comm, void* stream) = nullptr;
  int (*all_gather)(const void* send, void* recv, size_t send_count, int dtype, void* comm, void* stream) = nullptr;
  int (*reduce_scatter)(const void* send, void* recv, size_t recv_count, int dtype, int op, void* comm, void* stream) = nullptr;
  int (*broadcast)(const void* send, void* recv, size_t count, int dtype, int root, void* comm, void* stream) = nullptr;
  int (*comm_get_async_error)(void* comm, int* async_error) = nullptr;
  int (*comm_abort)(void* comm) = nullptr;
  int (*comm_destroy)(void* comm) = nullptr;
  const char* (*error_string)(int result) = nullptr;
};

// The loaded library (loaded once, kept for the process), or null with `why` naming every
// place that was tried and what the loader said.
const CublasApi* cublas(std::string* why);
const NcclApi* nccl(std::string* why);

}  // namespace dw::cuda
