// Communicators in JS (src/native/collectives.ts): the CommHandle class and its factories.
//
// A CommHandle holds a std::shared_ptr<Comm> (GlooComm or ThreadComm). Its async methods run
// on one executor thread per handle (never the libuv pool), so the event loop stays free;
// calls on one handle run in call order. Model code receives the handle from JS
// (`communicator.nativeHandle()`) and takes its own reference to the Comm with unwrapComm():
//
//   #include "napi/napi_comm.h"
//   std::shared_ptr<dw::Comm> comm = dw::unwrapComm(info[0]);   // throws INVALID_ARGUMENT
//
// The Comm then stays alive as long as the model holds it, even after the JS side closed its
// handle. Do not run collectives on one communicator from JS and from model code at the same
// time: every rank must issue the same collectives in the same order.
#pragma once
#include <napi.h>

#include <memory>

#include "collectives/comm.h"

namespace dw {

// The Comm behind a CommHandle; throws a JS error (code INVALID_ARGUMENT) when `v` is not a
// CommHandle or is closed.
std::shared_ptr<Comm> unwrapComm(Napi::Value v);

// A new CommHandle over `comm` (e.g. a sub-group created in native code, handed to JS).
Napi::Object wrapComm(Napi::Env env, std::shared_ptr<Comm> comm);

// Adds commConnect, commThreadWorld and memcpyBench to the module exports (addon.cc).
void registerCollectives(Napi::Env env, Napi::Object exports);

}  // namespace dw
