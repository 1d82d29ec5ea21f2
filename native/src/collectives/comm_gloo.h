// GlooComm: the Comm of comm.h over Gloo's TCP transport, between processes (or hosts).
//
// Rendezvous: every rank publishes its listening address in a key/value store
// (RendezvousStore: NATS KV served from JS in production, see napi/napi_comm.cc) under
// `<prefix>/<gloo key>`; sub-groups use `<prefix>/sub/<tag>/<r0-r1-..>/<n>` (n counts the
// subgroup calls with that tag and member list, so a group can be rebuilt). After the mesh is
// connected and a barrier passed, each rank deletes the keys it wrote.
//
// Threading: every communicator (sub-groups included) owns one dedicated thread that runs
// its connect and all its collectives, one at a time, in call order; the caller blocks on
// the result. Sub-groups share the parent's tcp device (one Gloo I/O loop thread).
//
// Failures: every wait is bounded by the timeout (default 30 s); a dead peer (closed
// socket) fails pending operations at once. Any transport error breaks the communicator:
// it closes its connections (so peers fail fast too) and every later call throws CommError.
// Caller bugs (bad root, bad subgroup list) throw std::invalid_argument.
#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "collectives/comm.h"

namespace dw {

// The rendezvous key/value store. Keys are '/'-separated paths; values are small bytes.
class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;
  virtual void set(const std::string& key, const std::vector<char>& value) = 0;
  // The value, once the key exists; CommError if it does not appear within `timeout`.
  virtual std::vector<char> get(const std::string& key, std::chrono::milliseconds timeout) = 0;
  // Best effort: errors are ignored.
  virtual void remove(const std::string& key) = 0;
};

// An in-process store (for C++ tests and single-host tools).
std::shared_ptr<RendezvousStore> makeMemoryStore();

struct GlooOptions {
  int rank = 0;
  int size = 1;
  std::string prefix;                                 // namespace of this world in the store
  std::chrono::milliseconds timeout{30000};           // every collective wait
  std::chrono::milliseconds connectTimeout{60000};    // waiting for peers to publish addresses
  std::string hostname = "127.0.0.1";                 // address to listen on (ignored if iface set)
  std::string iface;                                  // network interface to listen on
};

// Connects rank o.rank of o.size (blocks until every rank connected, or throws CommError).
// Throws CommError when the addon was built without Gloo.
std::shared_ptr<Comm> connectGloo(std::shared_ptr<RendezvousStore> store, const GlooOptions& o);

// Whether Gloo is compiled in.
bool haveGloo();

}  // namespace dw
