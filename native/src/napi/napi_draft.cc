// JS binding of DraftModel: create (validating every tensor), step / evaluate / logits as
// promises, weights and optimizer state in and out. A sharded model (a rank of a tp × sp × dp
// world, model/shard.h) is created with its communicator and layout, then attach()ed (a promise:
// groups, broadcast from rank 0); its JS face keeps full shapes: weights and optimizer state
// come in whole and go out through gather() (a collective), and a step's returnGrads gathers.
#include <cmath>
#include <cstring>

#include "napi/napi_batch.h"
#include "napi/napi_comm.h"
#include "napi/napi_models.h"
#include "cuda/cuda_ops.h"
#include "step/host_ops.h"

namespace dw {

[[noreturn]] Backend throw_invalid_backend(Napi::Env env, const std::string& b) {
  throw_invalid(env, "backend must be 'cpu', 'resident-host' or 'cuda' (got '" + b + "')");
}

DraftConfig parse_draft_config(Napi::Env env, Napi::Value v) {
  constexpr int64_t kMaxDim = (int64_t(1) << 31) - 1;
  Napi::Object o = need_object(env, v, "config");
  DraftConfig c;
  c.vocab = field_int(o, "vocab", "config", 1, kMaxDim);
  c.draft_vocab = field_int(o, "draftVocab", "config", 1, kMaxDim);
  c.hidden = field_int(o, "hidden", "config", 1, kMaxDim);
  c.heads = field_int(o, "heads", "config", 1, kMaxDim);
  c.kv_heads = field_int(o, "kvHeads", "config", 1, kMaxDim);
  c.intermediate = field_int(o, "intermediate", "config", 1, kMaxDim);
  c.ttt = field_int(o, "ttt", "config", 1, 64);
  c.rope_theta = field_number(o, "ropeTheta", "config");
  c.rms_eps = field_number(o, "rmsEps", "config");
  c.head_dim_ = field_head_dim(o, "config");
  c.rope_scaling = field_rope_scaling(o, "config");
  const std::string err = c.check();
  if (!err.empty()) throw_invalid(env, "config: " + err);
  return c;
}

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// Validated copy of one float tensor into dst.
void read_f32(Napi::Env env, Napi::Value v, const std::string& what, int64_t n, float* dst) {
  auto a = need_typed<float>(env, v, what, n);
  const int64_t bad = first_nonfinite(a.Data(), n);
  if (bad >= 0) throw_invalid(env, what + "[" + std::to_string(bad) + "] is not finite");
  std::memcpy(dst, a.Data(), size_t(n) * sizeof(float));
}

// Trainable tensors (full shapes) from an object: all of them (require_all) or any subset.
// Rejects a name that is neither a trainable tensor of `m` nor in `also_allowed`.
void reject_unknown(Napi::Env env, Napi::Object o, const DraftModel& m, const std::string& kind,
                    const std::vector<std::string>& also_allowed) {
  Napi::Array keys = o.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); i++) {
    const std::string k = keys.Get(i).ToString().Utf8Value();
    bool known = false;
    for (const auto& p : m.full_layout) known = known || k == p.name;
    for (const auto& a : also_allowed) known = known || k == a;
    if (!known) throw_invalid(env, "unknown " + kind + " '" + k + "'");
  }
}

// Unknown names are rejected. Everything is checked before `dst` (this model's layout: its
// shards when sharded) is touched.
void read_trainable(Napi::Env env, Napi::Object o, const DraftModel& m, bool require_all, std::vector<float>& dst,
                    const std::string& kind, const std::vector<std::string>& also_allowed) {
  reject_unknown(env, o, m, kind, also_allowed);
  std::vector<float> tmp(dst), one;
  const auto shards = param_shards(m.cfg, m.dims);
  for (size_t i = 0; i < m.full_layout.size(); i++) {
    const ParamInfo& p = m.full_layout[i];
    Napi::Value v = o.Get(p.name);
    if (v.IsUndefined()) {
      if (require_all) throw_invalid(env, "missing " + kind + " '" + std::string(p.name) + "'");
      continue;
    }
    const std::string what = kind + " '" + std::string(p.name) + "' " + shape_str(p.shape);
    if (!m.sharded) {
      read_f32(env, v, what, p.size, tmp.data() + p.offset);
    } else {
      one.resize(size_t(p.size));
      read_f32(env, v, what, p.size, one.data());
      slice_param(shards[i], one.data(), tmp.data() + m.layout[i].offset);
    }
  }
  dst.swap(tmp);
}

Napi::Object trainable_object(Napi::Env env, const std::vector<ParamInfo>& layout, const std::vector<float>& src) {
  Napi::Object o = Napi::Object::New(env);
  for (const auto& p : layout) o.Set(p.name, to_f32(env, src.data() + p.offset, size_t(p.size)));
  return o;
}

// All trainable tensors (full shapes) of an object into `full` (the global layout).
void read_full(Napi::Env env, Napi::Object o, const DraftModel& m, std::vector<float>& full,
               const std::vector<std::string>& also_allowed) {
  reject_unknown(env, o, m, "weight", also_allowed);
  full.assign(size_t(m.full_layout.back().offset + m.full_layout.back().size), 0.0f);
  for (const auto& p : m.full_layout) {
    Napi::Value v = o.Get(p.name);
    if (v.IsUndefined()) throw_invalid(env, "missing weight '" + std::string(p.name) + "'");
    read_f32(env, v, "weight '" + std::string(p.name) + "' " + shape_str(p.shape), p.size, full.data() + p.offset);
  }
}

// The resident state's host copy brought up to date, or dropped (the next step rebuilds it),
// on the JS thread: a device failure becomes a NATIVE error.
void sync_host(Napi::Env env, DraftState& st) {
  try {
    st.sync_host();
  } catch (const std::exception& e) {
    throw_native(env, std::string("DraftModel: copying the state back from the ") + (st.ops ? st.ops->name() : "") + " backend failed: " + e.what());
  }
}
void drop_resident(Napi::Env env, DraftState& st) {
  sync_host(env, st);
  st.resident.reset();
}

enum Mode { kTrain = 0, kEval = 1, kLogits = 2 };

class DraftWorker : public PromiseWorker {
 public:
  DraftWorker(Napi::Env env, std::shared_ptr<DraftState> st, BatchCopy batch, StepRequest req, int mode,
              bool return_grads)
      : PromiseWorker(env, "draftwire:draft"),
        st_(std::move(st)),
        batch_(std::move(batch)),
        req_(req),
        mode_(mode),
        return_grads_(return_grads) {}

 protected:
  void run() override {
    DraftModel& m = st_->model;
    batch_.gather();  // a batch given as its samples: stacked here, off the JS thread
    const DraftBatch b = batch_.view();
    const std::string err = m.check_batch(b);
    if (!err.empty()) throw InvalidArg("batch." + err);
    if (st_->backend != Backend::Cpu && mode_ != kLogits) {
      StepRequest req = req_;
      req.gather_grads = false;  // unsharded: the gradients are the model's own, copied below
      out_ = st_->resident_step().run(b, req);
      st_->host_stale = st_->host_stale || mode_ == kTrain;
      if (return_grads_) {
        st_->sync_host();
        grads_ = m.grads;
      }
      return;
    }
    st_->sync_host();  // logits: the CPU step's debug path, on the resident state
    if (mode_ == kLogits) {
      logits_.resize(static_cast<size_t>(m.cfg.ttt * b.B * b.T * m.cfg.draft_vocab));
      req_.logits_out = logits_.data();
    }
    out_ = m.run(b, req_);
    if (return_grads_) m.gather_full(m.grads, grads_);  // a copy when unsharded
  }

  Napi::Value result(Napi::Env env) override {
    const DraftModel& m = st_->model;
    if (mode_ == kLogits) return to_f32(env, logits_.data(), logits_.size());
    Napi::Object o = Napi::Object::New(env);
    o.Set("loss", out_.loss);
    std::vector<float> pl(out_.ploss.begin(), out_.ploss.end()), ac(out_.acc.begin(), out_.acc.end());
    o.Set("ploss", to_f32(env, pl.data(), pl.size()));
    o.Set("acc", to_f32(env, ac.data(), ac.size()));
    if (mode_ == kTrain) {
      o.Set("gradNorm", out_.grad_norm);
      o.Set("step", double(out_.step));
      o.Set("grads", return_grads_ ? Napi::Value(trainable_object(env, m.full_layout, grads_)) : env.Null());
    }
    return o;
  }

  void done() override { st_->busy.release(); }

 private:
  std::shared_ptr<DraftState> st_;
  BatchCopy batch_;
  StepRequest req_;
  int mode_;
  bool return_grads_;
  StepOutput out_;
  std::vector<float> grads_, logits_;
};

// attach(): sharded model joins its world.
class AttachWorker : public PromiseWorker {
 public:
  AttachWorker(Napi::Env env, std::shared_ptr<DraftState> st) : PromiseWorker(env, "draftwire:attach"), st_(std::move(st)) {}

 protected:
  void run() override {
    st_->model.apply_threads();
    st_->model.attach(st_->world, std::move(st_->pending_full));
    st_->pending_full = std::vector<float>();
  }
  Napi::Value result(Napi::Env env) override { return env.Undefined(); }
  void done() override { st_->busy.release(); }

 private:
  std::shared_ptr<DraftState> st_;
};

// gather(kind): full-shape tensors of every TP rank's shards.
class GatherWorker : public PromiseWorker {
 public:
  GatherWorker(Napi::Env env, std::shared_ptr<DraftState> st, int kind)
      : PromiseWorker(env, "draftwire:gather"), st_(std::move(st)), kind_(kind) {}

 protected:
  void run() override {
    DraftModel& m = st_->model;
    st_->sync_host();
    const std::vector<float>& src = kind_ == 0 ? m.params : kind_ == 1 ? m.grads : kind_ == 2 ? m.adam_m : m.adam_v;
    m.gather_full(src, full_);
  }
  Napi::Value result(Napi::Env env) override { return trainable_object(env, st_->model.full_layout, full_); }
  void done() override { st_->busy.release(); }

 private:
  std::shared_ptr<DraftState> st_;
  int kind_;
  std::vector<float> full_;
};

}  // namespace

Napi::Function DraftWrap::Init(Napi::Env env) {
  return DefineClass(env, "DraftModel",
                     {
                         InstanceMethod("step", &DraftWrap::Step),
                         InstanceMethod("evaluate", &DraftWrap::Evaluate),
                         InstanceMethod("logits", &DraftWrap::Logits),
                         InstanceMethod("weights", &DraftWrap::Weights),
                         InstanceMethod("optimizerState", &DraftWrap::OptimizerState),
                         InstanceMethod("loadOptimizerState", &DraftWrap::LoadOptimizerState),
                         InstanceMethod("setWeights", &DraftWrap::SetWeights),
                         InstanceMethod("close", &DraftWrap::Close),
                         InstanceMethod("attach", &DraftWrap::Attach),
                         InstanceMethod("gather", &DraftWrap::Gather),
                         InstanceMethod("shardInfo", &DraftWrap::ShardInfo),
                     });
}

// new DraftModel(config, weights, threads, shard, backend)
// shard: null, or {comm: CommHandle, tp, sp, dp}: this process is world rank comm.rank of a
// tp × sp × dp world; the model then needs attach() before anything else.
DraftWrap::DraftWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DraftWrap>(info) {
  Napi::Env env = info.Env();
  const DraftConfig c = parse_draft_config(env, info[0]);
  Napi::Object w = need_object(env, info[1], "weights");
  const int64_t threads = info[2].IsUndefined() || info[2].IsNull() ? 0 : need_int(env, info[2], "threads", 0, 256);
  std::shared_ptr<DraftState> st;
  if (info[3].IsUndefined() || info[3].IsNull()) {
    st = std::make_shared<DraftState>(c);
  } else {
    Napi::Object so = need_object(env, info[3], "shard");
    std::shared_ptr<Comm> world = unwrapComm(so.Get("comm"));
    const int tp = int(field_int(so, "tp", "shard", 1, 1 << 20));
    const int sp = int(field_int(so, "sp", "shard", 1, 1 << 20));
    const int dp = int(field_int(so, "dp", "shard", 1, 1 << 20));
    if (int64_t(tp) * sp * dp != world->size())
      throw_invalid(env, "shard: tp·sp·dp = " + std::to_string(int64_t(tp) * sp * dp) +
                             " must equal the communicator's size " + std::to_string(world->size()));
    const std::string err = check_shard_config(c, tp, sp, dp);
    if (!err.empty()) throw_invalid(env, "shard: config." + err);
    st = std::make_shared<DraftState>(c, ShardLayout::of(world->rank(), tp, sp, dp));
    st->world = std::move(world);
  }
  DraftModel& m = st->model;
  if (m.sharded)
    read_full(env, w, m, st->pending_full, {"embed", "target_head", "d2t"});
  else
    read_trainable(env, w, m, true, m.params, "weight", {"embed", "target_head", "d2t"});
  const std::string eshape = " [" + std::to_string(c.vocab) + ", " + std::to_string(c.hidden) + "]";
  read_f32(env, w.Get("embed"), "weight 'embed'" + eshape, c.vocab * c.hidden, m.embed.data());
  read_f32(env, w.Get("target_head"), "weight 'target_head'" + eshape, c.vocab * c.hidden, m.target_head.data());
  auto d2t = need_typed<int32_t>(env, w.Get("d2t"), "weight 'd2t' [" + std::to_string(c.draft_vocab) + "]",
                                 c.draft_vocab);
  const std::string err = m.set_d2t(std::vector<int32_t>(d2t.Data(), d2t.Data() + c.draft_vocab));
  if (!err.empty()) throw_invalid(env, "weight " + err);
  m.threads = int(threads);
  // backend: 'cpu' (default) | 'resident-host' | 'cuda'; the resident ones step an unsharded model
  if (!info[4].IsUndefined() && !info[4].IsNull()) {
    if (!info[4].IsString()) throw_invalid(env, "backend must be 'cpu', 'resident-host' or 'cuda'");
    const std::string b = info[4].As<Napi::String>().Utf8Value();
    st->backend = b == "cpu" ? Backend::Cpu : b == "resident-host" ? Backend::ResidentHost : b == "cuda" ? Backend::Cuda
                                                                                                           : throw_invalid_backend(env, b);
    if (st->backend != Backend::Cpu && m.sharded)
      throw_invalid(env, "backend '" + b + "' steps an unsharded model (one rank); a sharded world trains on the 'cpu' backend");
    if (st->backend == Backend::ResidentHost) st->ops = std::make_unique<step::HostOps>();
    if (st->backend == Backend::Cuda) {
      try {
        st->ops = cuda::make_cuda_ops(0);
      } catch (const std::exception& e) {
        throw_native(env, std::string("backend 'cuda' is not available here: ") + e.what());
      }
    }
  }
  state_ = std::move(st);
}

std::shared_ptr<DraftState> DraftWrap::acquire(Napi::Env env, const char* op) {
  if (!state_) throw_native(env, std::string("DraftModel.") + op + ": the model is closed");
  if (!state_->busy.try_acquire())
    throw_native(env, std::string("DraftModel.") + op + ": the model is busy (another operation is running)");
  return state_;
}

DraftWrap* DraftWrap::from(Napi::Env env, Napi::Value v, const char* what) {
  auto* data = env.GetInstanceData<AddonData>();
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data->draft_ctor.Value()))
    throw_invalid(env, std::string(what) + " must be a native DraftModel");
  return DraftWrap::Unwrap(v.As<Napi::Object>());
}

Napi::Value DraftWrap::RunBatch(const Napi::CallbackInfo& info, int mode) {
  Napi::Env env = info.Env();
  if (!state_) throw_native(env, "DraftModel: the model is closed");
  if (state_->model.sharded && !state_->model.attached())
    throw_native(env, "DraftModel: a sharded model must be attach()ed to its world first");
  BatchCopy batch = parse_batch(env, info[0], state_->model);
  StepRequest req;
  bool return_grads = false;
  if (mode == kTrain) {
    Napi::Object o = need_object(env, info[1], "options");
    req.backward = true;
    Napi::Value lr = o.Get("lr"), clip = o.Get("clip"), wd = o.Get("weightDecay"), rg = o.Get("returnGrads");
    if (!lr.IsNull() && !lr.IsUndefined()) {
      req.lr = need_number(env, lr, "options.lr");
      if (req.lr < 0) throw_invalid(env, "options.lr must be >= 0 (or null for no update)");
      req.update = true;
    }
    if (!clip.IsNull() && !clip.IsUndefined()) {
      req.clip = need_number(env, clip, "options.clip");
      if (req.clip < 0) throw_invalid(env, "options.clip must be >= 0 (or null for no clipping)");
    }
    if (!wd.IsUndefined()) {
      req.weight_decay = need_number(env, wd, "options.weightDecay");
      if (req.weight_decay < 0) throw_invalid(env, "options.weightDecay must be >= 0");
    }
    if (!rg.IsUndefined() && !rg.IsBoolean()) throw_invalid(env, "options.returnGrads must be a boolean");
    Napi::Value ns = o.Get("samples");
    if (!ns.IsNull() && !ns.IsUndefined()) {
      // the samples of the global batch the loss is averaged over: 1 ≤ samples ≤ B·dp
      const int64_t most = batch.B * int64_t(state_->model.shard_layout.dp);
      const double d = need_number(env, ns, "options.samples");
      if (std::floor(d) != d || d < 1 || d > double(most))
        throw_invalid(env, "options.samples must be an integer in [1, B·dp = " + std::to_string(most) +
                               "] (the real samples of the global batch; or null for all of them), got " +
                               std::to_string(d));
      req.samples = int64_t(d);
    }
    return_grads = rg.IsBoolean() && rg.As<Napi::Boolean>().Value();
    req.gather_grads = return_grads;
  }
  auto st = acquire(env, mode == kTrain ? "step" : mode == kEval ? "evaluate" : "logits");
  auto* w = new DraftWorker(env, st, std::move(batch), req, mode, return_grads);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value DraftWrap::Step(const Napi::CallbackInfo& info) { return RunBatch(info, kTrain); }
Napi::Value DraftWrap::Evaluate(const Napi::CallbackInfo& info) { return RunBatch(info, kEval); }
Napi::Value DraftWrap::Logits(const Napi::CallbackInfo& info) { return RunBatch(info, kLogits); }

Napi::Value DraftWrap::Weights(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (state_ && state_->model.sharded)
    throw_native(env, "DraftModel.weights: a sharded model holds only its shards; use gather('weights') (a collective)");
  auto st = acquire(env, "weights");
  BusyRelease hold{st->busy};
  sync_host(env, *st);
  return trainable_object(env, st->model.layout, st->model.params);
}

Napi::Value DraftWrap::OptimizerState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (state_ && state_->model.sharded)
    throw_native(env, "DraftModel.optimizerState: a sharded model holds only its shards; use gather('m') and gather('v') (collectives)");
  auto st = acquire(env, "optimizerState");
  BusyRelease hold{st->busy};
  sync_host(env, *st);
  Napi::Object o = Napi::Object::New(env);
  o.Set("step", double(st->model.step_count));
  o.Set("m", trainable_object(env, st->model.layout, st->model.adam_m));
  o.Set("v", trainable_object(env, st->model.layout, st->model.adam_v));
  return o;
}

Napi::Value DraftWrap::LoadOptimizerState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto st = acquire(env, "loadOptimizerState");
  BusyRelease hold{st->busy};
  drop_resident(env, *st);
  DraftModel& m = st->model;
  Napi::Object o = need_object(env, info[0], "optimizer state");
  const int64_t step = need_int(env, o.Get("step"), "optimizer state.step", 0, int64_t(1) << 53);
  std::vector<float> mm(m.adam_m), vv(m.adam_v);
  read_trainable(env, need_object(env, o.Get("m"), "optimizer state.m"), m, true, mm, "optimizer state.m tensor", {});
  read_trainable(env, need_object(env, o.Get("v"), "optimizer state.v"), m, true, vv, "optimizer state.v tensor", {});
  for (size_t i = 0; i < vv.size(); i++)
    if (vv[i] < 0) throw_invalid(env, "optimizer state.v has a negative entry at flat index " + std::to_string(i));
  m.adam_m.swap(mm);
  m.adam_v.swap(vv);
  m.step_count = step;
  return env.Undefined();
}

Napi::Value DraftWrap::SetWeights(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto st = acquire(env, "setWeights");
  BusyRelease hold{st->busy};
  drop_resident(env, *st);
  read_trainable(env, need_object(env, info[0], "weights"), st->model, false, st->model.params, "weight", {});
  return env.Undefined();
}

Napi::Value DraftWrap::Attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!state_) throw_native(env, "DraftModel.attach: the model is closed");
  if (!state_->model.sharded) throw_native(env, "DraftModel.attach: the model is not sharded");
  if (state_->model.attached() || !state_->world) throw_native(env, "DraftModel.attach: the model is attached already");
  auto st = acquire(env, "attach");
  auto* w = new AttachWorker(env, st);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// gather(kind: 'weights' | 'grads' | 'm' | 'v') → Promise<Record<name, Float32Array>> (full shapes)
Napi::Value DraftWrap::Gather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw_invalid(env, "gather: kind must be 'weights', 'grads', 'm' or 'v'");
  const std::string k = info[0].As<Napi::String>().Utf8Value();
  const int kind = k == "weights" ? 0 : k == "grads" ? 1 : k == "m" ? 2 : k == "v" ? 3 : -1;
  if (kind < 0) throw_invalid(env, "gather: kind must be 'weights', 'grads', 'm' or 'v' (got '" + k + "')");
  if (state_ && state_->model.sharded && !state_->model.attached())
    throw_native(env, "DraftModel.gather: a sharded model must be attach()ed to its world first");
  auto st = acquire(env, "gather");
  auto* w = new GatherWorker(env, st, kind);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value DraftWrap::ShardInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!state_) throw_native(env, "DraftModel.shardInfo: the model is closed");
  const DraftModel& m = state_->model;
  if (!m.sharded) return env.Null();
  const ShardLayout& L = m.shard_layout;
  Napi::Object o = Napi::Object::New(env);
  o.Set("rank", L.rank());
  o.Set("tp", L.tp);
  o.Set("sp", L.sp);
  o.Set("dp", L.dp);
  o.Set("tpIdx", L.tpIdx);
  o.Set("spIdx", L.spIdx);
  o.Set("dpIdx", L.dpIdx);
  o.Set("attached", m.attached());
  o.Set("step", double(m.step_count));
  return o;
}

Napi::Value DraftWrap::Close(const Napi::CallbackInfo& info) {
  state_.reset();  // an in-flight worker keeps its own reference; memory goes when it ends
  return info.Env().Undefined();
}

}  // namespace dw
