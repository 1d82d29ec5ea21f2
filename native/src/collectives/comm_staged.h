// StagedComm: the Comm of comm.h over buffers that live in device memory, for ranks that
// cannot use NCCL among themselves (several ranks on one GPU: one NCCL communicator cannot
// hold two ranks of the same device). Each collective copies the device buffer to a host
// staging buffer, runs the collective of a host Comm (Gloo, or ThreadComm in tests) on it,
// and copies the result back. The copies go through a DeviceCopier, so the staging logic is
// the same code on the GPU (cudaMemcpy on the rank's stream) and in the CPU test (memcpy, a
// named stand-in for device memory).
//
// Also here: which collectives a device world uses, from every rank's GPU (pickDeviceComm).
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "collectives/comm.h"

namespace dw {

// Copies between device memory and host memory; each call completes before it returns. It
// owns the host staging buffers (pinned on a GPU, so the copies run at full speed).
class DeviceCopier {
 public:
  virtual ~DeviceCopier() = default;
  // Staging buffer i (0 or 1) of at least `bytes`, aligned for double; kept and grown as needed
  // (a step's collectives repeat their sizes). Valid until the next call with the same i.
  virtual void* hostBuffer(int i, size_t bytes) = 0;
  virtual void toHost(void* host, const void* device, size_t bytes) = 0;
  virtual void toDevice(void* device, const void* host, size_t bytes) = 0;
  // A copier for a subgroup's communicator (the same device and stream).
  virtual std::shared_ptr<DeviceCopier> clone() const = 0;
};

// Host memory posing as device memory (CPU tests of the staging: a stand-in, named as such).
std::shared_ptr<DeviceCopier> makeHostCopier();

// Every argument pointer is device memory; `host` carries the collective. rank() and size()
// are the host Comm's.
std::shared_ptr<Comm> makeStagedComm(std::shared_ptr<Comm> host, std::shared_ptr<DeviceCopier> copier);

enum class DeviceCommKind { Nccl, Staged };

// NCCL when every rank has a GPU of its own (the GPUs' UUIDs all differ), host staging when
// two ranks share one (or a rank has none: an empty UUID). Pure: every rank computes the same
// answer from the same gathered list.
DeviceCommKind pickDeviceComm(const std::vector<std::string>& gpuOfRank);

}  // namespace dw
