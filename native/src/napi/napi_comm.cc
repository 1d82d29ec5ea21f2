// CommHandle: JS access to communicators (see napi_comm.h), the NATS-KV-backed rendezvous
// store (JsKvStore: Gloo's store calls, made on a communicator thread, are served by a JS
// function through a thread-safe function), and a memcpy benchmark for bench/allreduce.
#include "napi/napi_comm.h"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "collectives/comm_gloo.h"
#include "collectives/comm_thread.h"
#include "napi/napi_util.h"

namespace dw {

using ms = std::chrono::milliseconds;

namespace {

// ------------------------------------------------------------------------------------------
// A thread-safe function that may be called from any thread, before or after it was released
// or finalized (calls then do nothing and return false).
class JsCaller : public std::enable_shared_from_this<JsCaller> {
 public:
  using Fn = std::function<void(Napi::Env, Napi::Function)>;

  // `fn` is the JS function handed to every call (a no-op when empty). Starts unref'd: it
  // does not keep the event loop alive unless ref()'d.
  static std::shared_ptr<JsCaller> create(Napi::Env env, Napi::Function fn, const char* name) {
    auto self = std::shared_ptr<JsCaller>(new JsCaller());
    if (fn.IsEmpty()) fn = Napi::Function::New(env, [](const Napi::CallbackInfo&) {});
    std::weak_ptr<JsCaller> weak = self;
    self->tsfn_ = Napi::ThreadSafeFunction::New(env, fn, name, 0, 1, [weak](Napi::Env) {
      if (auto s = weak.lock()) {
        std::lock_guard<std::mutex> l(s->m_);
        s->alive_ = false;
      }
    });
    self->tsfn_.Unref(env);
    return self;
  }

  ~JsCaller() { release(); }

  bool call(Fn fn) {
    std::lock_guard<std::mutex> l(m_);
    if (!alive_) return false;
    const napi_status st = tsfn_.NonBlockingCall([fn = std::move(fn)](Napi::Env env, Napi::Function js) {
      try {
        fn(env, js);
      } catch (...) {
      }
    });
    if (st == napi_closing) alive_ = false;
    return st == napi_ok;
  }

  void release() {
    std::lock_guard<std::mutex> l(m_);
    if (!alive_) return;
    alive_ = false;
    tsfn_.Release();
  }

  // JS thread only.
  void ref(Napi::Env env) {
    std::lock_guard<std::mutex> l(m_);
    if (alive_) tsfn_.Ref(env);
  }
  void unref(Napi::Env env) {
    std::lock_guard<std::mutex> l(m_);
    if (alive_) tsfn_.Unref(env);
  }

 private:
  JsCaller() = default;
  std::mutex m_;
  bool alive_ = true;
  Napi::ThreadSafeFunction tsfn_;
};

// ------------------------------------------------------------------------------------------
// The rendezvous store served from JS: fn(op: 'set'|'get'|'del', key: string,
// value: Uint8Array | null, timeoutMs: number) → Promise<Uint8Array | null>.
class JsKvStore final : public RendezvousStore {
 public:
  JsKvStore(Napi::Env env, Napi::Function fn) : caller_(JsCaller::create(env, fn, "draftwire-comm-store")) {}

  void set(const std::string& key, const std::vector<char>& value) override {
    call("set", key, &value, kOpTimeout);
  }
  std::vector<char> get(const std::string& key, ms timeout) override {
    auto v = call("get", key, nullptr, timeout);
    if (!v) throw CommError("rendezvous: key " + key + " was not set within " + std::to_string(timeout.count()) + " ms");
    return *v;
  }
  void remove(const std::string& key) override {
    try {
      call("del", key, nullptr, kOpTimeout);
    } catch (...) {
    }
  }

 private:
  static constexpr ms kOpTimeout{30000};

  struct Reply {
    std::mutex m;
    std::condition_variable cv;
    bool done = false, ok = false, has = false;
    std::string err;
    std::vector<char> value;
    void settle(bool success, std::string e, const Napi::Value* v) {
      std::lock_guard<std::mutex> l(m);
      if (done) return;
      done = true;
      ok = success;
      err = std::move(e);
      if (success && v && v->IsTypedArray()) {
        auto a = v->As<Napi::TypedArray>();
        auto buf = a.ArrayBuffer();
        const char* p = static_cast<const char*>(buf.Data()) + a.ByteOffset();
        value.assign(p, p + a.ByteLength());
        has = true;
      }
      cv.notify_all();
    }
  };

  static std::string messageOf(const Napi::Value& v) {
    if (v.IsObject()) {
      Napi::Value m = v.As<Napi::Object>().Get("message");
      if (m.IsString()) return m.As<Napi::String>().Utf8Value();
    }
    return v.ToString().Utf8Value();
  }

  std::optional<std::vector<char>> call(const std::string& op, const std::string& key, const std::vector<char>* value,
                                        ms timeout) {
    auto rep = std::make_shared<Reply>();
    std::optional<std::vector<char>> val;
    if (value) val = *value;
    const double tms = double(timeout.count());
    const bool posted = caller_->call([rep, op, key, val, tms](Napi::Env env, Napi::Function fn) {
      Napi::HandleScope scope(env);
      try {
        Napi::Value v = env.Null();
        if (val) v = Napi::Buffer<char>::Copy(env, val->data(), val->size());
        Napi::Value r = fn.Call({Napi::String::New(env, op), Napi::String::New(env, key), v, Napi::Number::New(env, tms)});
        if (!r.IsPromise()) {
          rep->settle(true, "", &r);
          return;
        }
        Napi::Object p = r.As<Napi::Object>();
        Napi::Function onOk = Napi::Function::New(env, [rep](const Napi::CallbackInfo& i) {
          Napi::Value x = i[0];
          rep->settle(true, "", &x);
        });
        Napi::Function onErr = Napi::Function::New(env, [rep](const Napi::CallbackInfo& i) {
          rep->settle(false, messageOf(i[0]), nullptr);
        });
        p.Get("then").As<Napi::Function>().Call(p, {onOk, onErr});
      } catch (const Napi::Error& e) {
        rep->settle(false, e.Message(), nullptr);
      } catch (const std::exception& e) {
        rep->settle(false, e.what(), nullptr);
      }
    });
    if (!posted) throw CommError("rendezvous store " + op + " " + key + ": the JS environment is gone");
    std::unique_lock<std::mutex> l(rep->m);
    // The JS side bounds its own wait by `timeout`; allow it a margin to answer.
    if (!rep->cv.wait_for(l, timeout + ms(10000), [&] { return rep->done; }))
      throw CommError("rendezvous store " + op + " " + key + ": no answer from JS within " +
                      std::to_string((timeout + ms(10000)).count()) + " ms");
    if (!rep->ok) throw CommError("rendezvous store " + op + " " + key + ": " + rep->err);
    if (!rep->has) return std::nullopt;
    return std::move(rep->value);
  }

  std::shared_ptr<JsCaller> caller_;
};

// ------------------------------------------------------------------------------------------
// CommHandle

const napi_type_tag kCommTag = {0x6477636f6d6d6831ULL, 0x9e3779b97f4a7c15ULL};

std::mutex g_ctorM;
std::unordered_map<napi_env, Napi::FunctionReference*> g_ctors;

Napi::Function commCtor(Napi::Env env) {
  std::lock_guard<std::mutex> l(g_ctorM);
  auto it = g_ctors.find(env);
  if (it == g_ctors.end()) throw_native(env, "collectives are not registered in this environment");
  return it->second->Value();
}

struct Outcome {
  bool ok = true;
  std::string code, message;
};

Outcome outcomeOf(const std::function<void()>& work) {
  Outcome o;
  try {
    work();
  } catch (const std::invalid_argument& e) {
    o = {false, "INVALID_ARGUMENT", e.what()};
  } catch (const InvalidArg& e) {
    o = {false, "INVALID_ARGUMENT", e.what()};
  } catch (const CommError& e) {
    o = {false, "COLLECTIVE", e.what()};
  } catch (const std::bad_alloc&) {
    o = {false, "NATIVE", "out of memory"};
  } catch (const std::exception& e) {
    o = {false, "NATIVE", e.what()};
  } catch (...) {
    o = {false, "NATIVE", "unknown native error"};
  }
  return o;
}

class CommWrap : public Napi::ObjectWrap<CommWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "CommHandle",
                       {
                           InstanceMethod<&CommWrap::Info>("info"),
                           InstanceMethod<&CommWrap::AllReduce>("allReduce"),
                           InstanceMethod<&CommWrap::AllGather>("allGather"),
                           InstanceMethod<&CommWrap::ReduceScatter>("reduceScatter"),
                           InstanceMethod<&CommWrap::Broadcast>("broadcast"),
                           InstanceMethod<&CommWrap::Barrier>("barrier"),
                           InstanceMethod<&CommWrap::Subgroup>("subgroup"),
                           InstanceMethod<&CommWrap::Close>("close"),
                           InstanceMethod<&CommWrap::Abort>("abort"),
                       });
  }

  // Only through newHandle(): the first argument must be the internal External.
  explicit CommWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CommWrap>(info) {
    if (info.Length() < 1 || !info[0].IsExternal()) throw_invalid(info.Env(), "CommHandle cannot be constructed from JS");
    info.This().As<Napi::Object>().TypeTag(&kCommTag);
    token_ = std::make_shared<Token>();
    token_->self = this;
    done_ = JsCaller::create(info.Env(), Napi::Function(), "draftwire-comm");
    exec_ = std::make_unique<JobThread>("dw-comm-js", /*detachOnDestroy=*/true);
  }

  ~CommWrap() override {
    {
      std::lock_guard<std::mutex> l(token_->m);
      token_->self = nullptr;
    }
    done_->release();
    exec_.reset();  // detached: finishes queued jobs, which then find no handle to report to
  }

  static Napi::Object newHandle(Napi::Env env, std::shared_ptr<Comm> comm) {
    Napi::Object o = commCtor(env).New({Napi::External<void>::New(env, nullptr)});
    Unwrap(o)->comm_ = std::move(comm);
    return o;
  }

  std::shared_ptr<Comm> comm() const { return closed_ ? nullptr : comm_; }
  void setComm(std::shared_ptr<Comm> c) { comm_ = std::move(c); }

  // Run `work` on this handle's executor; settle the promise on the JS thread with
  // result(env) (undefined when empty) or the error. `keep` stays referenced until then.
  Napi::Promise submit(Napi::Env env, std::vector<Napi::Object> keep, std::function<void()> work,
                       std::function<Napi::Value(Napi::Env)> result) {
    const uint64_t id = ++nextId_;
    Pending p{Napi::Promise::Deferred::New(env), {}, std::move(result)};
    for (auto& k : keep) p.keep.push_back(Napi::Persistent(k));
    Napi::Promise promise = p.d.Promise();
    pending_.emplace(id, std::move(p));
    if (pending_.size() == 1) {
      done_->ref(env);  // keep the event loop alive until the result is delivered
      Ref();            // and this handle
    }
    auto caller = done_;
    auto token = token_;
    exec_->post([work = std::move(work), caller, token, id]() {
      auto out = std::make_shared<Outcome>(outcomeOf(work));
      caller->call([token, id, out](Napi::Env env, Napi::Function) {
        CommWrap* self;
        {
          std::lock_guard<std::mutex> l(token->m);
          self = token->self;
        }
        if (self) self->complete(env, id, *out);
      });
    });
    return promise;
  }

 private:
  struct Token {
    std::mutex m;
    CommWrap* self = nullptr;
  };
  struct Pending {
    Napi::Promise::Deferred d;
    std::vector<Napi::ObjectReference> keep;
    std::function<Napi::Value(Napi::Env)> result;
  };

  void complete(Napi::Env env, uint64_t id, const Outcome& out) {
    Napi::HandleScope scope(env);
    auto it = pending_.find(id);
    if (it == pending_.end()) return;
    Pending p = std::move(it->second);
    pending_.erase(it);
    if (out.ok) {
      try {
        p.d.Resolve(p.result ? p.result(env) : env.Undefined());
      } catch (const Napi::Error& e) {
        p.d.Reject(e.Value());
      }
    } else {
      Napi::Error e = Napi::Error::New(env, out.message);
      e.Set("code", Napi::String::New(env, out.code));
      p.d.Reject(e.Value());
    }
    if (pending_.empty()) {
      done_->unref(env);
      Unref();
    }
  }

  std::shared_ptr<Comm> need(Napi::Env env, const char* what) {
    if (closed_) throw_invalid(env, std::string(what) + ": the communicator is closed");
    if (!comm_) throw_invalid(env, std::string(what) + ": the communicator is not connected");
    return comm_;
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!comm_) return env.Null();
    Napi::Object o = Napi::Object::New(env);
    o.Set("rank", comm_->rank());
    o.Set("size", comm_->size());
    return o;
  }

  static ReduceOp parseOp(Napi::Env env, Napi::Value v) {
    if (v.IsString()) {
      const std::string s = v.As<Napi::String>().Utf8Value();
      if (s == "sum") return ReduceOp::Sum;
      if (s == "max") return ReduceOp::Max;
    }
    throw_invalid(env, "op must be 'sum' or 'max'");
  }

  // allReduce(buf: Float32Array | Float64Array, op) → Promise<void>, in place
  Napi::Value AllReduce(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto c = need(env, "allReduce");
    Napi::Value v = info[0];
    const ReduceOp op = parseOp(env, info[1]);
    if (!v.IsTypedArray()) throw_invalid(env, "allReduce: buf must be a Float32Array or Float64Array");
    auto ta = v.As<Napi::TypedArray>();
    const size_t n = ta.ElementLength();
    if (ta.TypedArrayType() == napi_float32_array) {
      float* p = ta.As<Napi::Float32Array>().Data();
      return submit(env, {ta}, [c, p, n, op] { c->allReduce(p, n, op); }, nullptr);
    }
    if (ta.TypedArrayType() == napi_float64_array) {
      double* p = ta.As<Napi::Float64Array>().Data();
      return submit(env, {ta}, [c, p, n, op] { c->allReduce(p, n, op); }, nullptr);
    }
    throw_invalid(env, "allReduce: buf must be a Float32Array or Float64Array");
  }

  // allGather(buf: Float32Array) → Promise<Float32Array(size·n)>
  Napi::Value AllGather(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto c = need(env, "allGather");
    auto in = need_typed<float>(env, info[0], "allGather: buf", -1);
    const size_t n = in.ElementLength();
    auto out = Napi::Float32Array::New(env, n * size_t(c->size()));
    const float* ip = in.Data();
    float* op = out.Data();
    auto outRef = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out.As<Napi::Object>()));
    return submit(env, {in, out}, [c, ip, op, n] { c->allGather(ip, op, n); },
                  [outRef](Napi::Env) { return outRef->Value(); });
  }

  // reduceScatter(buf: Float32Array(size·n)) → Promise<Float32Array(n)>
  Napi::Value ReduceScatter(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto c = need(env, "reduceScatter");
    auto in = need_typed<float>(env, info[0], "reduceScatter: buf", -1);
    const size_t total = in.ElementLength(), P = size_t(c->size());
    if (total % P != 0)
      throw_invalid(env, "reduceScatter: buf has " + std::to_string(total) + " elements, not a multiple of the group size " +
                             std::to_string(P));
    const size_t n = total / P;
    auto out = Napi::Float32Array::New(env, n);
    const float* ip = in.Data();
    float* op = out.Data();
    auto outRef = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out.As<Napi::Object>()));
    return submit(env, {in, out}, [c, ip, op, n] { c->reduceScatter(ip, op, n); },
                  [outRef](Napi::Env) { return outRef->Value(); });
  }

  // broadcast(buf: Float32Array, root) → Promise<void>, in place
  Napi::Value Broadcast(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto c = need(env, "broadcast");
    auto buf = need_typed<float>(env, info[0], "broadcast: buf", -1);
    const int root = int(need_int(env, info[1], "broadcast: root", 0, c->size() - 1));
    float* p = buf.Data();
    const size_t n = buf.ElementLength();
    return submit(env, {buf}, [c, p, n, root] { c->broadcast(p, n, root); }, nullptr);
  }

  Napi::Value Barrier(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto c = need(env, "barrier");
    return submit(env, {}, [c] { c->barrier(); }, nullptr);
  }

  // subgroup(ranks: number[], tag: string) → Promise<CommHandle>
  Napi::Value Subgroup(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto c = need(env, "subgroup");
    if (!info[0].IsArray()) throw_invalid(env, "subgroup: ranks must be an array of ranks");
    auto arr = info[0].As<Napi::Array>();
    std::vector<int> ranks;
    for (uint32_t i = 0; i < arr.Length(); i++)
      ranks.push_back(int(need_int(env, arr.Get(i), "subgroup: ranks[" + std::to_string(i) + "]", 0, c->size() - 1)));
    if (!info[1].IsString()) throw_invalid(env, "subgroup: tag must be a string");
    const std::string tag = info[1].As<Napi::String>().Utf8Value();
    Napi::Object child = commCtor(env).New({Napi::External<void>::New(env, nullptr)});
    CommWrap* cw = Unwrap(child);
    auto slot = std::make_shared<std::shared_ptr<Comm>>();
    auto childRef = std::make_shared<Napi::ObjectReference>(Napi::Persistent(child));
    return submit(env, {child}, [c, ranks, tag, slot] { *slot = c->subgroup(ranks, tag); },
                  [cw, slot, childRef](Napi::Env) {
                    cw->comm_ = *slot;
                    return childRef->Value();
                  });
  }

  // close() → Promise<void>: after the calls already queued, drops this handle's reference
  // (a GlooComm with no other holder closes its connections and thread).
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) {
      auto d = Napi::Promise::Deferred::New(env);
      d.Resolve(env.Undefined());
      return d.Promise();
    }
    closed_ = true;
    auto c = std::make_shared<std::shared_ptr<Comm>>(std::move(comm_));
    comm_.reset();
    return submit(env, {}, [c] { c->reset(); }, nullptr);
  }

  // abort(why) → boolean: breaks a ThreadComm group (tests); false for other kinds.
  Napi::Value Abort(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto c = need(env, "abort");
    const std::string why = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "aborted";
    return Napi::Boolean::New(env, abortThreadComm(*c, why));
  }

  std::shared_ptr<Comm> comm_;
  bool closed_ = false;
  uint64_t nextId_ = 0;
  std::unordered_map<uint64_t, Pending> pending_;
  std::shared_ptr<Token> token_;
  std::shared_ptr<JsCaller> done_;
  std::unique_ptr<JobThread> exec_;
};

std::string optString(Napi::Object o, const char* key, const std::string& dflt) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return dflt;
  if (!v.IsString()) throw_invalid(o.Env(), std::string("options.") + key + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

int64_t optInt(Napi::Object o, const char* key, int64_t dflt, int64_t lo, int64_t hi) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return dflt;
  return need_int(o.Env(), v, std::string("options.") + key, lo, hi);
}

// commConnect({rank, size, prefix, timeoutMs?, connectTimeoutMs?, hostname?, iface?}, store)
//   → Promise<CommHandle>
Napi::Value CommConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = need_object(env, info[0], "options");
  GlooOptions g;
  g.size = int(field_int(o, "size", "options", 1, 1 << 20));
  g.rank = int(field_int(o, "rank", "options", 0, g.size - 1));
  g.prefix = optString(o, "prefix", "");
  if (g.prefix.empty()) throw_invalid(env, "options.prefix must be a non-empty string");
  g.timeout = ms(optInt(o, "timeoutMs", 30000, 1, int64_t(1) << 40));
  g.connectTimeout = ms(optInt(o, "connectTimeoutMs", 60000, 1, int64_t(1) << 40));
  g.hostname = optString(o, "hostname", "127.0.0.1");
  g.iface = optString(o, "iface", "");
  if (!info[1].IsFunction()) throw_invalid(env, "store must be a function (op, key, value, timeoutMs) => Promise");
  auto store = std::make_shared<JsKvStore>(env, info[1].As<Napi::Function>());
  Napi::Object h = commCtor(env).New({Napi::External<void>::New(env, nullptr)});
  CommWrap* w = CommWrap::Unwrap(h);
  auto slot = std::make_shared<std::shared_ptr<Comm>>();
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(h));
  return w->submit(env, {h}, [store, g, slot]() mutable { *slot = connectGloo(std::move(store), g); },
                   [w, slot, ref](Napi::Env) {
                     w->setComm(*slot);
                     return ref->Value();
                   });
}

// commThreadWorld(n, timeoutMs) → CommHandle[] (ranks 0..n-1 of one in-process world)
Napi::Value CommThreadWorld(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int n = int(need_int(env, info[0], "n", 1, 1024));
  const int64_t t = info[1].IsUndefined() ? 30000 : need_int(env, info[1], "timeoutMs", 1, int64_t(1) << 40);
  auto world = makeThreadWorld(n, ms(t));
  Napi::Array out = Napi::Array::New(env, size_t(n));
  for (int i = 0; i < n; i++) out.Set(uint32_t(i), CommWrap::newHandle(env, world[size_t(i)]));
  return out;
}

// memcpyBench(bytes, reps) → GB/s of memcpy between two buffers of `bytes` (synchronous)
Napi::Value MemcpyBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const size_t bytes = size_t(need_int(env, info[0], "bytes", 1, int64_t(1) << 34));
  const int reps = int(need_int(env, info[1], "reps", 1, 1 << 20));
  std::vector<char> a(bytes, 1), b(bytes, 0);
  std::memcpy(b.data(), a.data(), bytes);  // fault the pages in
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; i++) {
    std::memcpy((i & 1) ? a.data() : b.data(), (i & 1) ? b.data() : a.data(), bytes);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Napi::Number::New(env, double(bytes) * reps / s / 1e9);
}

}  // namespace

std::shared_ptr<Comm> unwrapComm(Napi::Value v) {
  Napi::Env env = v.Env();
  if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&kCommTag))
    throw_invalid(env, "expected a communicator handle (Communicator.nativeHandle())");
  auto c = CommWrap::Unwrap(v.As<Napi::Object>())->comm();
  if (!c) throw_invalid(env, "the communicator is closed or not connected");
  return c;
}

Napi::Object wrapComm(Napi::Env env, std::shared_ptr<Comm> comm) { return CommWrap::newHandle(env, std::move(comm)); }

void registerCollectives(Napi::Env env, Napi::Object exports) {
  auto* ref = new Napi::FunctionReference(Napi::Persistent(CommWrap::Init(env)));
  {
    std::lock_guard<std::mutex> l(g_ctorM);
    g_ctors[napi_env(env)] = ref;
  }
  napi_env raw = env;
  env.AddCleanupHook([raw, ref]() {
    std::lock_guard<std::mutex> l(g_ctorM);
    g_ctors.erase(raw);
    ref->SuppressDestruct();  // the environment frees its references itself
    delete ref;
  });
  exports.Set("commConnect", Napi::Function::New(env, CommConnect, "commConnect"));
  exports.Set("commThreadWorld", Napi::Function::New(env, CommThreadWorld, "commThreadWorld"));
  exports.Set("memcpyBench", Napi::Function::New(env, MemcpyBench, "memcpyBench"));
}

}  // namespace dw
