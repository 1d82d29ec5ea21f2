// The collectives of ranks whose buffers live on GPUs, behind the Comm of comm.h (so the step
// is written once against one interface): NCCL for ranks on GPUs of their own, host staging
// over the host Comm (Gloo) for several ranks on one GPU (one NCCL communicator cannot hold
// two ranks of the same device). Every pointer passed to these communicators is device memory
// of the calling thread's current device; every collective is enqueued on the rank's stream
// and waited for, bounded by the timeout (a peer that died: the NCCL communicator is aborted
// and this and every later call throw CommError). CUDA builds only (nccl_comm.cu).
#pragma once
#include <chrono>
#include <memory>
#include <string>

#include "collectives/comm.h"
#include "collectives/comm_staged.h"

namespace dw::cuda {

using Stream = void*;

// NCCL over the ranks of `boot` (a host Comm: it carries rank 0's unique id, then serves the
// subgroups' and the barrier's rendezvous). Collective: every rank of `boot` calls it. NCCL's
// own initialisation is bounded by NCCL's bootstrap timeout, not `timeout` (it starts right
// after a host rendezvous every rank reached).
std::shared_ptr<Comm> makeNcclComm(std::shared_ptr<Comm> boot, Stream stream, std::chrono::milliseconds timeout);

// Pinned staging buffers and copies on `stream` (for makeStagedComm).
std::shared_ptr<DeviceCopier> makeCudaCopier(Stream stream);

// Gathers every rank's GPU over `boot` (collective), and builds what pickDeviceComm says:
// NCCL, or host staging over `boot`. `kind` (optional) is told which.
std::shared_ptr<Comm> makeDeviceComm(std::shared_ptr<Comm> boot, Stream stream, std::chrono::milliseconds timeout,
                                     DeviceCommKind* kind);

}  // namespace dw::cuda
