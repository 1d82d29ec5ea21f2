#include "cuda/nccl_comm.h"

#include <cuda_runtime.h>

#include <array>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "cuda/libs.h"

namespace dw::cuda {
namespace {

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw CommError(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

cudaStream_t as_stream(Stream s) { return static_cast<cudaStream_t>(s); }

// Bytes through a float collective of the host Comm: the values are only copied, never
// added, so any bit pattern (a NaN's included) arrives intact.
constexpr size_t kIdFloats = sizeof(NcclUniqueId) / sizeof(float);
static_assert(sizeof(NcclUniqueId) % sizeof(float) == 0, "the unique id travels as whole floats");

class NcclComm final : public Comm {
 public:
  NcclComm(const NcclApi& api, std::shared_ptr<Comm> boot, Stream stream, std::chrono::milliseconds timeout)
      : api_(api), boot_(std::move(boot)), stream_(stream), timeout_(timeout) {
    NcclUniqueId id{};
    if (boot_->rank() == 0) check(api_.get_unique_id(&id), "ncclGetUniqueId");
    float words[kIdFloats];
    std::memcpy(words, &id, sizeof id);
    boot_->broadcast(words, kIdFloats, 0);
    std::memcpy(&id, words, sizeof id);
    check(api_.comm_init_rank(&comm_, boot_->size(), id, boot_->rank()), "ncclCommInitRank");
  }
  ~NcclComm() override {
    if (!comm_) return;
    if (broken_) api_.comm_abort(comm_); else api_.comm_destroy(comm_);
  }
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const override { return boot_->rank(); }
  int size() const override { return boot_->size(); }

  void allReduce(float* buf, size_t n, ReduceOp op) override {
    run("ncclAllReduce", [&] { return api_.all_reduce(buf, buf, n, kNcclFloat32, opOf(op), comm_, stream_); });
  }
  void allReduce(double* buf, size_t n, ReduceOp op) override {
    run("ncclAllReduce", [&] { return api_.all_reduce(buf, buf, n, kNcclFloat64, opOf(op), comm_, stream_); });
  }
  void allGather(const float* in, float* out, size_t n) override {
    run("ncclAllGather", [&] { return api_.all_gather(in, out, n, kNcclFloat32, comm_, stream_); });
  }
  void reduceScatter(const float* in, float* out, size_t n) override {
    run("ncclReduceScatter", [&] { return api_.reduce_scatter(in, out, n, kNcclFloat32, kNcclSum, comm_, stream_); });
  }
  void broadcast(float* buf, size_t n, int root) override {
    if (root < 0 || root >= size()) throw std::invalid_argument("broadcast: root " + std::to_string(root) + " is not a rank of this group of " + std::to_string(size()));
    run("ncclBroadcast", [&] { return api_.broadcast(buf, buf, n, kNcclFloat32, root, comm_, stream_); });
  }
  void barrier() override {
    live("barrier");
    wait("barrier");
    boot_->barrier();
  }
  std::shared_ptr<Comm> subgroup(const std::vector<int>& ranks, const std::string& tag) override {
    live("subgroup");
    return std::make_shared<NcclComm>(api_, boot_->subgroup(ranks, tag), stream_, timeout_);
  }

 private:
  static int opOf(ReduceOp op) { return op == ReduceOp::Max ? kNcclMax : kNcclSum; }

  void check(int r, const char* what) {
    if (r != kNcclSuccess) throw CommError(std::string(what) + ": " + api_.error_string(r));
  }
  void live(const char* what) const {
    if (broken_) throw CommError(std::string(what) + ": this NCCL communicator broke earlier (a peer failed or timed out)");
  }
  template <typename F>
  void run(const char* what, F&& enqueue) {
    live(what);
    check(enqueue(), what);
    wait(what);
  }
  // Polls the stream rather than blocking in cudaStreamSynchronize: a peer that died leaves
  // the kernel waiting forever, and only an abort from this thread ends it.
  void wait(const char* what) {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    for (;;) {
      const cudaError_t q = cudaStreamQuery(as_stream(stream_));
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) { fail(); cuda_ok(q, what); }
      int async = kNcclSuccess;
      api_.comm_get_async_error(comm_, &async);
      if (async != kNcclSuccess && async != kNcclInProgress) {
        fail();
        throw CommError(std::string(what) + ": NCCL failed: " + api_.error_string(async));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        fail();
        throw CommError(std::string(what) + ": not complete within " + std::to_string(timeout_.count()) + " ms (a peer is gone or stalled); the communicator is aborted");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  void fail() {
    if (broken_) return;
    broken_ = true;
    api_.comm_abort(comm_);
    comm_ = nullptr;
  }

  const NcclApi& api_;
  std::shared_ptr<Comm> boot_;
  Stream stream_;
  std::chrono::milliseconds timeout_;
  void* comm_ = nullptr;
  bool broken_ = false;
};

class CudaCopier final : public DeviceCopier {
 public:
  explicit CudaCopier(Stream stream) : stream_(stream) {}
  ~CudaCopier() override { for (auto& b : bufs_) if (b.p) cudaFreeHost(b.p); }
  CudaCopier(const CudaCopier&) = delete;
  CudaCopier& operator=(const CudaCopier&) = delete;

  void* hostBuffer(int i, size_t bytes) override {
    Pinned& b = bufs_[i & 1];
    if (b.bytes < bytes) {
      if (b.p) cudaFreeHost(b.p);
      b.p = nullptr;
      b.bytes = 0;
      cuda_ok(cudaMallocHost(&b.p, bytes), "pinned staging buffer");
      b.bytes = bytes;
    }
    return b.p;
  }
  void toHost(void* host, const void* device, size_t bytes) override {
    cuda_ok(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, as_stream(stream_)), "staging copy to the host");
    cuda_ok(cudaStreamSynchronize(as_stream(stream_)), "staging copy to the host");
  }
  void toDevice(void* device, const void* host, size_t bytes) override {
    cuda_ok(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, as_stream(stream_)), "staging copy to the device");
    cuda_ok(cudaStreamSynchronize(as_stream(stream_)), "staging copy to the device");
  }
  std::shared_ptr<DeviceCopier> clone() const override { return std::make_shared<CudaCopier>(stream_); }

 private:
  struct Pinned { void* p = nullptr; size_t bytes = 0; };
  Stream stream_;
  Pinned bufs_[2];
};

std::array<unsigned char, 16> currentUuidBytes() {
  int dev = 0;
  cuda_ok(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp p{};
  cuda_ok(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  std::array<unsigned char, 16> b{};
  std::memcpy(b.data(), p.uuid.bytes, 16);
  return b;
}

std::string hexOf(const unsigned char* b) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 16; i++) { s += hex[b[i] >> 4]; s += hex[b[i] & 15]; }
  return s;
}

}  // namespace

std::shared_ptr<Comm> makeNcclComm(std::shared_ptr<Comm> boot, Stream stream, std::chrono::milliseconds timeout) {
  if (!boot) throw std::invalid_argument("makeNcclComm: the host communicator must not be null");
  std::string why;
  const NcclApi* api = nccl(&why);
  if (!api) throw CommError(why);
  return std::make_shared<NcclComm>(*api, std::move(boot), stream, timeout);
}

std::shared_ptr<DeviceCopier> makeCudaCopier(Stream stream) { return std::make_shared<CudaCopier>(stream); }

std::shared_ptr<Comm> makeDeviceComm(std::shared_ptr<Comm> boot, Stream stream, std::chrono::milliseconds timeout,
                                     DeviceCommKind* kind) {
  if (!boot) throw std::invalid_argument("makeDeviceComm: the host communicator must not be null");
  // 16 bytes of UUID per rank, gathered as 4 floats (copied, never added).
  float words[4];
  std::memcpy(words, currentUuidBytes().data(), 16);
  std::vector<float> all(4 * size_t(boot->size()));
  boot->allGather(words, all.data(), 4);
  std::vector<std::string> gpus;
  for (int r = 0; r < boot->size(); r++) {
    unsigned char b[16];
    std::memcpy(b, all.data() + 4 * r, 16);
    gpus.push_back(hexOf(b));
  }
  const DeviceCommKind k = pickDeviceComm(gpus);
  if (kind) *kind = k;
  if (k == DeviceCommKind::Nccl) return makeNcclComm(std::move(boot), stream, timeout);
  return makeStagedComm(std::move(boot), makeCudaCopier(stream));
}

}  // namespace dw::cuda
