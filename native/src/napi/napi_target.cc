// JS binding of TargetModel (seeded or from weights, napi_models.h) and of acceptLength.
#include <cstring>

#include "kernels/convert.h"
#include "model/accept.h"
#include "napi/napi_models.h"

namespace dw {

namespace {

constexpr int64_t kMaxDim = (int64_t(1) << 31) - 1;
constexpr int64_t kMaxSeed = int64_t(1) << 53;
constexpr uint32_t kMaxRolloutPrompts = 4096;

TargetConfig parse_target_config(Napi::Env env, Napi::Value v) {
  Napi::Object o = need_object(env, v, "config");
  TargetConfig c;
  c.vocab = field_int(o, "vocab", "config", 1, kMaxDim);
  c.hidden = field_int(o, "hidden", "config", 1, kMaxDim);
  c.heads = field_int(o, "heads", "config", 1, kMaxDim);
  c.kv_heads = field_int(o, "kvHeads", "config", 1, kMaxDim);
  c.intermediate = field_int(o, "intermediate", "config", 1, kMaxDim);
  c.layers = field_int(o, "layers", "config", 1, kMaxDim);
  c.rope_theta = field_number(o, "ropeTheta", "config");
  c.rms_eps = field_number(o, "rmsEps", "config");
  c.seed = uint64_t(field_int(o, "seed", "config", 0, kMaxSeed));
  // shape knobs of the seeded weights: optional (src/native/addon.ts always passes them)
  auto opt = [&](const char* key, double def) {
    return o.Has(key) && !o.Get(key).IsUndefined() ? field_number(o, key, "config") : def;
  };
  c.logit_scale = opt("logitScale", kTargetLogitScale);
  c.zipf = opt("zipf", kTargetZipf);
  c.residual_scale = opt("residualScale", kTargetResidualScale);
  c.head_dim_ = field_head_dim(o, "config");
  c.attention_bias = field_bool(o, "attentionBias", "config", false);
  c.qk_norm = field_bool(o, "qkNorm", "config", false);
  c.tie = field_bool(o, "tie", "config", false);
  c.rope_scaling = field_rope_scaling(o, "config");
  if (o.Has("auxLayers") && !o.Get("auxLayers").IsUndefined() && !o.Get("auxLayers").IsNull()) {
    Napi::Value a = o.Get("auxLayers");
    if (!a.IsArray() || a.As<Napi::Array>().Length() != 3)
      throw_invalid(env, "config.auxLayers must be an array of 3 layer indices");
    for (uint32_t i = 0; i < 3; i++)
      c.aux_layers[i] = need_int(env, a.As<Napi::Array>().Get(i), "config.auxLayers[" + std::to_string(i) + "]", 0, kMaxDim);
  }
  const std::string err = c.check();
  if (!err.empty()) throw_invalid(env, "config: " + err);
  return c;
}

void check_ids(Napi::Env env, const int32_t* ids, int64_t n, int64_t V, const std::string& what) {
  for (int64_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= V)
      throw_invalid(env, what + "[" + std::to_string(i) + "] = " + std::to_string(ids[i]) + " is outside [0, vocab=" +
                             std::to_string(V) + ")");
}

// Every entry of w into the model (names and sizes checked before anything is copied).
void set_weights(Napi::Env env, TargetModel& m, Napi::Object w) {
  Napi::Array keys = w.GetPropertyNames();
  std::vector<std::pair<std::string, Napi::Float32Array>> ts;
  for (uint32_t i = 0; i < keys.Length(); i++) {
    const std::string k = keys.Get(i).ToString().Utf8Value();
    ts.emplace_back(k, need_typed<float>(env, w.Get(k), "weights[" + k + "]", -1));
  }
  const std::vector<TensorSlot> slots = TargetModel::tensor_list(m.cfg);
  for (auto& [k, a] : ts) {
    int64_t n = 0;
    for (const TensorSlot& s : slots)
      if (s.name == k) n = s.numel;
    if (n == 0) throw_invalid(env, "weights: no tensor " + k + " in this config");
    if (int64_t(a.ElementLength()) != n)
      throw_invalid(env, "weights[" + k + "] has " + std::to_string(a.ElementLength()) + " elements, expected " +
                             std::to_string(n));
    const int64_t bad = first_nonfinite(a.Data(), n);
    if (bad >= 0) throw_invalid(env, "weights[" + k + "][" + std::to_string(bad) + "] is not finite");
  }
  for (auto& [k, a] : ts) {
    const std::string err = m.set_tensor(k, a.Data(), int64_t(a.ElementLength()));
    if (!err.empty()) throw_invalid(env, "weights: " + err);
  }
}

// Features leave the worker as f32, or as bf16 rounded here on the worker thread (what a
// rollout writes to the store: half the bytes, converted off the event loop).
struct FeaturesOut {
  bool bf16 = false;
  std::vector<uint16_t> aux16, last16;
  void convert(const std::vector<float>& aux, const std::vector<float>& last) {
    if (!bf16) return;
    aux16.resize(aux.size());
    last16.resize(last.size());
    f32_to_bf16(aux.data(), aux16.data(), int64_t(aux.size()));
    f32_to_bf16(last.data(), last16.data(), int64_t(last.size()));
  }
  Napi::Value aux(Napi::Env env, const std::vector<float>& f32) const { return bf16 ? to_u16(env, aux16) : to_f32(env, f32.data(), f32.size()); }
  Napi::Value last(Napi::Env env, const std::vector<float>& f32) const { return bf16 ? to_u16(env, last16) : to_f32(env, f32.data(), f32.size()); }
  static Napi::Value to_u16(Napi::Env env, const std::vector<uint16_t>& v) {
    auto a = Napi::Uint16Array::New(env, v.size());
    if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * 2);
    return a;
  }
};

bool need_feature_dtype(Napi::Env env, const Napi::Value& v) {
  if (v.IsUndefined() || v.IsNull()) return false;
  const std::string d = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (d == "f32") return false;
  if (d == "bf16") return true;
  throw_invalid(env, "featureDtype must be \"f32\" or \"bf16\"");
  return false;
}

class TargetForwardWorker : public PromiseWorker {
 public:
  TargetForwardWorker(Napi::Env env, std::shared_ptr<TargetState> st, std::vector<int32_t> ids, int64_t B, int64_t T, bool bf16)
      : PromiseWorker(env, "draftwire:target"), st_(std::move(st)), ids_(std::move(ids)), B_(B), T_(T) { out_.bf16 = bf16; }

 protected:
  void run() override {
    const int64_t H = st_->model.cfg.hidden;
    aux_.resize(static_cast<size_t>(B_ * T_ * 3 * H));
    last_.resize(static_cast<size_t>(B_ * T_ * H));
    st_->model.forward_batch(ids_.data(), B_, T_, aux_.data(), last_.data());
    out_.convert(aux_, last_);
  }
  Napi::Value result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("aux", out_.aux(env, aux_));
    o.Set("last", out_.last(env, last_));
    return o;
  }
  void done() override { st_->busy.release(); }

 private:
  std::shared_ptr<TargetState> st_;
  std::vector<int32_t> ids_;
  int64_t B_, T_;
  std::vector<float> aux_, last_;
  FeaturesOut out_;
};

class GenerateWorker : public PromiseWorker {
 public:
  GenerateWorker(Napi::Env env, std::shared_ptr<TargetState> st, std::vector<int32_t> prompt, int64_t max_new,
                 double temperature, uint64_t seed)
      : PromiseWorker(env, "draftwire:generate"),
        st_(std::move(st)),
        prompt_(std::move(prompt)),
        max_new_(max_new),
        temperature_(temperature),
        seed_(seed) {}

 protected:
  void run() override {
    out_ = st_->model.generate(prompt_.data(), int64_t(prompt_.size()), max_new_, temperature_, seed_);
  }
  Napi::Value result(Napi::Env env) override { return to_i32(env, out_.data(), out_.size()); }
  void done() override { st_->busy.release(); }

 private:
  std::shared_ptr<TargetState> st_;
  std::vector<int32_t> prompt_;
  int64_t max_new_;
  double temperature_;
  uint64_t seed_;
  std::vector<int32_t> out_;
};

class RolloutWorker : public PromiseWorker {
 public:
  RolloutWorker(Napi::Env env, std::shared_ptr<TargetState> st, std::vector<std::vector<int32_t>> prompts,
                int64_t max_new, double temperature, std::vector<uint64_t> seeds, bool features, bool bf16)
      : PromiseWorker(env, "draftwire:rollout"),
        st_(std::move(st)),
        prompts_(std::move(prompts)),
        max_new_(max_new),
        temperature_(temperature),
        seeds_(std::move(seeds)),
        features_(features) {
    conv_.resize(prompts_.size());
    for (auto& c : conv_) c.bf16 = bf16;
  }

 protected:
  void run() override {
    st_->model.rollout(prompts_, max_new_, temperature_, seeds_, features_, features_, out_);
    if (features_)
      for (size_t i = 0; i < out_.size(); i++) conv_[i].convert(out_[i].aux, out_[i].last);
  }
  Napi::Value result(Napi::Env env) override {
    const size_t n = out_.size();
    Napi::Array ids = Napi::Array::New(env, n);
    Napi::Object o = Napi::Object::New(env);
    for (size_t i = 0; i < n; i++) ids.Set(uint32_t(i), to_i32(env, out_[i].ids.data(), out_[i].ids.size()));
    o.Set("ids", ids);
    if (features_) {
      Napi::Array aux = Napi::Array::New(env, n), last = Napi::Array::New(env, n);
      for (size_t i = 0; i < n; i++) {
        aux.Set(uint32_t(i), conv_[i].aux(env, out_[i].aux));
        last.Set(uint32_t(i), conv_[i].last(env, out_[i].last));
      }
      o.Set("aux", aux);
      o.Set("last", last);
    }
    return o;
  }
  void done() override { st_->busy.release(); }

 private:
  std::shared_ptr<TargetState> st_;
  std::vector<std::vector<int32_t>> prompts_;
  int64_t max_new_;
  double temperature_;
  std::vector<uint64_t> seeds_;
  bool features_;
  std::vector<RolloutSeq> out_;
  std::vector<FeaturesOut> conv_;
};

class AcceptWorker : public PromiseWorker {
 public:
  AcceptWorker(Napi::Env env, std::shared_ptr<DraftState> d, std::shared_ptr<TargetState> t,
               std::vector<std::vector<int32_t>> prompts, int64_t max_new)
      : PromiseWorker(env, "draftwire:accept"),
        d_(std::move(d)),
        t_(std::move(t)),
        prompts_(std::move(prompts)),
        max_new_(max_new) {}

 protected:
  void run() override {
    d_->sync_host();  // a resident draft's weights, back on the host the decoder reads
    res_ = accept_length(d_->model, t_->model, prompts_, max_new_);
  }
  Napi::Value result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("acceptLength", res_.accept_length);
    o.Set("verifySteps", double(res_.verify_steps));
    o.Set("generated", double(res_.generated));
    return o;
  }
  void done() override {
    d_->busy.release();
    t_->busy.release();
  }

 private:
  std::shared_ptr<DraftState> d_;
  std::shared_ptr<TargetState> t_;
  std::vector<std::vector<int32_t>> prompts_;
  int64_t max_new_;
  AcceptResult res_;
};

}  // namespace

Napi::Function TargetWrap::Init(Napi::Env env) {
  return DefineClass(env, "TargetModel",
                     {
                         InstanceMethod("frozen", &TargetWrap::Frozen),
                         InstanceMethod("forward", &TargetWrap::Forward),
                         InstanceMethod("generate", &TargetWrap::Generate),
                         InstanceMethod("rollout", &TargetWrap::Rollout),
                         InstanceMethod("close", &TargetWrap::Close),
                         InstanceMethod("setWeights", &TargetWrap::SetWeights),
                         InstanceMethod("missing", &TargetWrap::Missing),
                     });
}

// new TargetModel(config, threads, weights?)
TargetWrap::TargetWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TargetWrap>(info) {
  Napi::Env env = info.Env();
  const TargetConfig c = parse_target_config(env, info[0]);
  const int64_t threads = info[1].IsUndefined() || info[1].IsNull() ? 0 : need_int(env, info[1], "threads", 0, 256);
  if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
    Napi::Object w = need_object(env, info[2], "weights");
    state_ = std::make_shared<TargetState>(c, TargetModel::FromWeights{});
    set_weights(env, state_->model, w);
  } else {
    state_ = std::make_shared<TargetState>(c);
  }
  state_->model.threads = int(threads);
}

// setWeights(record): copies the named tensors in (synchronous: a memcpy per tensor)
Napi::Value TargetWrap::SetWeights(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto st = acquire(env, "setWeights");
  BusyRelease hold{st->busy};
  set_weights(env, st->model, need_object(env, info[0], "weights"));
  return env.Undefined();
}

Napi::Value TargetWrap::Missing(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!state_) throw_native(env, "TargetModel.missing: the model is closed");
  const auto m = state_->model.missing();
  Napi::Array a = Napi::Array::New(env, m.size());
  for (size_t i = 0; i < m.size(); i++) a.Set(uint32_t(i), Napi::String::New(env, m[i]));
  return a;
}

std::shared_ptr<TargetState> TargetWrap::acquire(Napi::Env env, const char* op) {
  if (!state_) throw_native(env, std::string("TargetModel.") + op + ": the model is closed");
  if (!state_->busy.try_acquire())
    throw_native(env, std::string("TargetModel.") + op + ": the model is busy (another operation is running)");
  return state_;
}

TargetWrap* TargetWrap::from(Napi::Env env, Napi::Value v, const char* what) {
  auto* data = env.GetInstanceData<AddonData>();
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data->target_ctor.Value()))
    throw_invalid(env, std::string(what) + " must be a native TargetModel");
  return TargetWrap::Unwrap(v.As<Napi::Object>());
}

Napi::Value TargetWrap::Frozen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto st = acquire(env, "frozen");
  BusyRelease hold{st->busy};
  const auto miss = st->model.missing();
  if (!miss.empty()) throw_native(env, "TargetModel.frozen: weight " + miss[0] + " was never set");
  Napi::Object o = Napi::Object::New(env);
  o.Set("embed", to_f32(env, st->model.embed.data(), st->model.embed.size()));
  o.Set("target_head", to_f32(env, st->model.target_head.data(), st->model.target_head.size()));
  return o;
}

// forward(ids, batch, seq, featureDtype?: 'f32' | 'bf16')
Napi::Value TargetWrap::Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!state_) throw_native(env, "TargetModel.forward: the model is closed");
  const TargetConfig& c = state_->model.cfg;
  const int64_t B = need_int(env, info[1], "batch", 1, 1 << 20);
  const int64_t T = need_int(env, info[2], "seq", 1, 1 << 20);
  if (T > kMaxDecodeLen) throw_invalid(env, "seq must be <= " + std::to_string(kMaxDecodeLen));
  const double bytes = 4.0 * double(B * T) * double(4 * c.hidden) +
                       4.0 * double(T) * double(2 * c.layers * c.kv_dim() + 4 * c.hidden + c.qkv_dim() + 3 * c.intermediate);
  if (bytes > kMaxScratchBytes)
    throw_invalid(env, "batch too large: ~" + std::to_string(int64_t(bytes / (1 << 20))) + " MiB of outputs and scratch");
  auto ids = need_typed<int32_t>(env, info[0], "ids (batch·seq = " + std::to_string(B * T) + ")", B * T);
  check_ids(env, ids.Data(), B * T, c.vocab, "ids");
  const bool bf16 = need_feature_dtype(env, info[3]);
  std::vector<int32_t> copy(ids.Data(), ids.Data() + B * T);
  auto st = acquire(env, "forward");
  auto* w = new TargetForwardWorker(env, st, std::move(copy), B, T, bf16);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// generate(prompt, maxNew, temperature, seed)
Napi::Value TargetWrap::Generate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!state_) throw_native(env, "TargetModel.generate: the model is closed");
  const TargetConfig& c = state_->model.cfg;
  auto prompt = need_typed<int32_t>(env, info[0], "prompt", -1);
  if (prompt.ElementLength() == 0) throw_invalid(env, "prompt must hold at least one token");
  check_ids(env, prompt.Data(), int64_t(prompt.ElementLength()), c.vocab, "prompt");
  const int64_t max_new = need_int(env, info[1], "maxNew", 0, kMaxDecodeLen);
  if (int64_t(prompt.ElementLength()) + max_new > kMaxDecodeLen)
    throw_invalid(env, "prompt length + maxNew must be <= " + std::to_string(kMaxDecodeLen));
  const double temperature = info[2].IsUndefined() ? 0.0 : need_number(env, info[2], "temperature");
  if (temperature < 0) throw_invalid(env, "temperature must be >= 0");
  const int64_t seed = info[3].IsUndefined() ? 0 : need_int(env, info[3], "seed", 0, kMaxSeed);
  std::vector<int32_t> copy(prompt.Data(), prompt.Data() + prompt.ElementLength());
  auto st = acquire(env, "generate");
  auto* w = new GenerateWorker(env, st, std::move(copy), max_new, temperature, uint64_t(seed));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// rollout(prompts: Int32Array[], maxNew, temperature, seeds: number[] | undefined, features: boolean, featureDtype?)
//   → { ids: Int32Array[], aux?: Float32Array[] | Uint16Array[], last?: (the same) }
Napi::Value TargetWrap::Rollout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!state_) throw_native(env, "TargetModel.rollout: the model is closed");
  const TargetConfig& c = state_->model.cfg;
  if (!info[0].IsArray()) throw_invalid(env, "prompts must be an array of Int32Array");
  Napi::Array arr = info[0].As<Napi::Array>();
  if (arr.Length() == 0) throw_invalid(env, "prompts is empty");
  if (arr.Length() > kMaxRolloutPrompts)
    throw_invalid(env, "prompts holds " + std::to_string(arr.Length()) + " prompts; at most " +
                           std::to_string(kMaxRolloutPrompts) + " per call");
  const int64_t max_new = need_int(env, info[1], "maxNew", 0, kMaxDecodeLen);
  const double temperature = info[2].IsUndefined() ? 0.0 : need_number(env, info[2], "temperature");
  if (temperature < 0) throw_invalid(env, "temperature must be >= 0");
  const bool features = info[4].IsUndefined() ? false : info[4].ToBoolean().Value();
  const bool bf16 = need_feature_dtype(env, info[5]);
  std::vector<uint64_t> seeds;
  if (!info[3].IsUndefined() && !info[3].IsNull()) {
    if (!info[3].IsArray()) throw_invalid(env, "seeds must be an array of integers (one per prompt)");
    Napi::Array sa = info[3].As<Napi::Array>();
    if (sa.Length() != arr.Length())
      throw_invalid(env, "seeds has " + std::to_string(sa.Length()) + " entries for " + std::to_string(arr.Length()) +
                             " prompts");
    for (uint32_t i = 0; i < sa.Length(); i++)
      seeds.push_back(uint64_t(need_int(env, sa.Get(i), "seeds[" + std::to_string(i) + "]", 0, kMaxSeed)));
  }
  std::vector<std::vector<int32_t>> prompts;
  double bytes = 0;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    const std::string what = "prompts[" + std::to_string(i) + "]";
    auto p = need_typed<int32_t>(env, arr.Get(i), what, -1);
    if (p.ElementLength() == 0) throw_invalid(env, what + " is empty");
    const int64_t L = int64_t(p.ElementLength()) + max_new;
    if (L > kMaxDecodeLen) throw_invalid(env, what + ": length + maxNew must be <= " + std::to_string(kMaxDecodeLen));
    check_ids(env, p.Data(), int64_t(p.ElementLength()), c.vocab, what);
    prompts.emplace_back(p.Data(), p.Data() + p.ElementLength());
    // outputs (ids, aux, last), the KV cache, and the prefill's activations (bounded above by
    // prefilling every prompt in one pass)
    bytes += 4.0 * double(L) * (1.0 + (features ? 4.0 * double(c.hidden) : 0.0) + 2.0 * double(c.layers * c.kv_dim())) +
             4.0 * double(p.ElementLength()) * double(4 * c.hidden + c.qkv_dim() + 3 * c.intermediate + c.heads);
  }
  if (bytes > kMaxScratchBytes)
    throw_invalid(env, "rollout too large: ~" + std::to_string(int64_t(bytes / (1 << 20))) + " MiB of outputs and KV cache");
  auto st = acquire(env, "rollout");
  auto* w = new RolloutWorker(env, st, std::move(prompts), max_new, temperature, std::move(seeds), features, bf16);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value TargetWrap::Close(const Napi::CallbackInfo& info) {
  state_.reset();
  return info.Env().Undefined();
}

// acceptLength(draft, target, prompts: Int32Array[], maxNew)
Napi::Value AcceptLength(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DraftWrap* dw = DraftWrap::from(env, info[0], "draft");
  TargetWrap* tw = TargetWrap::from(env, info[1], "target");
  if (!info[2].IsArray()) throw_invalid(env, "prompts must be an array of Int32Array");
  Napi::Array arr = info[2].As<Napi::Array>();
  const int64_t max_new = need_int(env, info[3], "maxNew", 1, kMaxDecodeLen);
  std::vector<std::vector<int32_t>> prompts;
  auto d = dw->acquire(env, "acceptLength");
  std::shared_ptr<TargetState> t;
  try {
    t = tw->acquire(env, "acceptLength");
  } catch (...) {
    d->busy.release();
    throw;
  }
  try {
    const DraftConfig& dc = d->model.cfg;
    const TargetConfig& tc = t->model.cfg;
    if (dc.vocab != tc.vocab || dc.hidden != tc.hidden)
      throw_invalid(env, "draft and target disagree: vocab " + std::to_string(dc.vocab) + " vs " +
                             std::to_string(tc.vocab) + ", hidden " + std::to_string(dc.hidden) + " vs " +
                             std::to_string(tc.hidden));
    for (uint32_t i = 0; i < arr.Length(); i++) {
      const std::string what = "prompts[" + std::to_string(i) + "]";
      auto p = need_typed<int32_t>(env, arr.Get(i), what, -1);
      if (p.ElementLength() == 0) throw_invalid(env, what + " is empty");
      if (int64_t(p.ElementLength()) + max_new + dc.ttt > kMaxDecodeLen)
        throw_invalid(env, what + ": length + maxNew + ttt must be <= " + std::to_string(kMaxDecodeLen));
      check_ids(env, p.Data(), int64_t(p.ElementLength()), tc.vocab, what);
      prompts.emplace_back(p.Data(), p.Data() + p.ElementLength());
    }
    if (prompts.empty()) throw_invalid(env, "prompts is empty");
  } catch (...) {
    d->busy.release();
    t->busy.release();
    throw;
  }
  auto* w = new AcceptWorker(env, d, t, std::move(prompts), max_new);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

}  // namespace dw
