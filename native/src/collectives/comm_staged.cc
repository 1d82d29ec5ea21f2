#include "collectives/comm_staged.h"

#include <cstring>
#include <set>
#include <stdexcept>

namespace dw {
namespace {

class HostCopier final : public DeviceCopier {
 public:
  void* hostBuffer(int i, size_t bytes) override {
    std::vector<double>& s = staging_[i & 1];
    const size_t words = (bytes + sizeof(double) - 1) / sizeof(double);
    if (s.size() < words) s.resize(words);
    return s.data();
  }
  void toHost(void* host, const void* device, size_t bytes) override { std::memcpy(host, device, bytes); }
  void toDevice(void* device, const void* host, size_t bytes) override { std::memcpy(device, host, bytes); }
  std::shared_ptr<DeviceCopier> clone() const override { return std::make_shared<HostCopier>(); }

 private:
  std::vector<double> staging_[2];
};

class StagedComm final : public Comm {
 public:
  StagedComm(std::shared_ptr<Comm> host, std::shared_ptr<DeviceCopier> copier)
      : host_(std::move(host)), copier_(std::move(copier)) {
    if (!host_ || !copier_) throw std::invalid_argument("makeStagedComm: host comm and copier must not be null");
  }
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }

  void allReduce(float* buf, size_t n, ReduceOp op) override { reduceT(buf, n, op); }
  void allReduce(double* buf, size_t n, ReduceOp op) override { reduceT(buf, n, op); }

  void allGather(const float* in, float* out, size_t n) override {
    float* a = stage(0, n);
    float* b = stage(1, n * size_t(size()));
    copier_->toHost(a, in, n * sizeof(float));
    host_->allGather(a, b, n);
    copier_->toDevice(out, b, n * size_t(size()) * sizeof(float));
  }
  void reduceScatter(const float* in, float* out, size_t n) override {
    float* a = stage(0, n * size_t(size()));
    float* b = stage(1, n);
    copier_->toHost(a, in, n * size_t(size()) * sizeof(float));
    host_->reduceScatter(a, b, n);
    copier_->toDevice(out, b, n * sizeof(float));
  }
  void broadcast(float* buf, size_t n, int root) override {
    float* a = stage(0, n);
    if (rank() == root) copier_->toHost(a, buf, n * sizeof(float));  // the others' bytes are overwritten
    host_->broadcast(a, n, root);
    copier_->toDevice(buf, a, n * sizeof(float));
  }
  void barrier() override { host_->barrier(); }
  std::shared_ptr<Comm> subgroup(const std::vector<int>& ranks, const std::string& tag) override {
    return std::make_shared<StagedComm>(host_->subgroup(ranks, tag), copier_->clone());
  }

 private:
  template <typename T>
  void reduceT(T* buf, size_t n, ReduceOp op) {
    T* a = static_cast<T*>(copier_->hostBuffer(0, n * sizeof(T)));
    copier_->toHost(a, buf, n * sizeof(T));
    host_->allReduce(a, n, op);
    copier_->toDevice(buf, a, n * sizeof(T));
  }
  float* stage(int i, size_t n) { return static_cast<float*>(copier_->hostBuffer(i, n * sizeof(float))); }

  std::shared_ptr<Comm> host_;
  std::shared_ptr<DeviceCopier> copier_;
};

}  // namespace

std::shared_ptr<DeviceCopier> makeHostCopier() { return std::make_shared<HostCopier>(); }

std::shared_ptr<Comm> makeStagedComm(std::shared_ptr<Comm> host, std::shared_ptr<DeviceCopier> copier) {
  return std::make_shared<StagedComm>(std::move(host), std::move(copier));
}

DeviceCommKind pickDeviceComm(const std::vector<std::string>& gpuOfRank) {
  std::set<std::string> seen;
  for (const std::string& g : gpuOfRank) {
    if (g.empty() || !seen.insert(g).second) return DeviceCommKind::Staged;
  }
  return DeviceCommKind::Nccl;
}

}  // namespace dw
