// JS classes over DraftModel and TargetModel. Model state sits behind a shared_ptr so an
// in-flight worker keeps it alive after close() or garbage collection of the JS object; a
// busy flag admits one operation per model at a time (src/native/addon.ts queues calls).
#pragma once
#include <napi.h>

#include <memory>

#include "model/draft_model.h"
#include "model/target_model.h"
#include "step/resident_step.h"
#include "step/step_ops.h"
#include "napi/napi_util.h"

namespace dw {

// A JS draft config ({vocab, draftVocab, hidden, heads, kvHeads, intermediate, ttt, ropeTheta,
// rmsEps, headDim?, ropeScaling?}), validated; throws INVALID_ARGUMENT naming the field.
DraftConfig parse_draft_config(Napi::Env env, Napi::Value v);

// Where a model's training and evaluation steps run: the CPU step (DraftModel), or the
// resident step (step/resident_step.h) on the host backend or on CUDA device 0.
enum class Backend { Cpu, ResidentHost, Cuda };

struct DraftState {
  explicit DraftState(const DraftConfig& c) : model(c) {}
  DraftState(const DraftConfig& c, const ShardLayout& L) : model(c, L) {}
  DraftModel model;
  BusyFlag busy;
  // sharded, until attach(): the world and this rank's full-shape trainable tensors
  std::shared_ptr<Comm> world;
  std::vector<float> pending_full;

  // A resident backend holds the trainable state between steps; `model` is its host copy,
  // brought up to date (sync_host) before anything reads it and the resident step rebuilt from
  // it (drop_resident, then resident_step) after anything writes it.
  Backend backend = Backend::Cpu;
  std::unique_ptr<step::StepOps> ops;
  std::unique_ptr<step::ResidentStep> resident;
  bool host_stale = false;
  void sync_host() {
    if (resident && host_stale) resident->store(model);
    host_stale = false;
  }
  void drop_resident() {
    sync_host();
    resident.reset();
  }
  step::ResidentStep& resident_step() {
    if (!resident) resident = std::make_unique<step::ResidentStep>(*ops, model);
    return *resident;
  }
};

struct TargetState {
  explicit TargetState(const TargetConfig& c) : model(c) {}
  TargetState(const TargetConfig& c, TargetModel::FromWeights w) : model(c, w) {}
  TargetModel model;
  BusyFlag busy;
};

// Per-environment constructors, for instanceof checks.
struct AddonData {
  Napi::FunctionReference draft_ctor, target_ctor;
};

class DraftWrap : public Napi::ObjectWrap<DraftWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit DraftWrap(const Napi::CallbackInfo& info);
  // Marks the model busy for one operation; throws a JS error when closed or busy.
  std::shared_ptr<DraftState> acquire(Napi::Env env, const char* op);
  static DraftWrap* from(Napi::Env env, Napi::Value v, const char* what);

 private:
  Napi::Value Step(const Napi::CallbackInfo& info);
  Napi::Value Evaluate(const Napi::CallbackInfo& info);
  Napi::Value Logits(const Napi::CallbackInfo& info);
  Napi::Value Weights(const Napi::CallbackInfo& info);
  Napi::Value OptimizerState(const Napi::CallbackInfo& info);
  Napi::Value LoadOptimizerState(const Napi::CallbackInfo& info);
  Napi::Value SetWeights(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value RunBatch(const Napi::CallbackInfo& info, int mode);
  Napi::Value Attach(const Napi::CallbackInfo& info);     // sharded: join the world (promise)
  Napi::Value Gather(const Napi::CallbackInfo& info);     // full-shape weights/grads/m/v (promise)
  Napi::Value ShardInfo(const Napi::CallbackInfo& info);  // layout, or null when unsharded

  std::shared_ptr<DraftState> state_;
};

// new TargetModel(config, threads, weights?): without weights the seeded synthetic target;
// with weights (an object, possibly empty) a model whose tensors are Float32Arrays named as
// in Hugging Face checkpoints (TargetModel::tensor_list): model.embed_tokens.weight [V, H],
// model.norm.weight [H], lm_head.weight [V, H] (absent when config.tie), and per layer i
// model.layers.{i}.input_layernorm.weight, .self_attn.{q,k,v,o}_proj.weight
// ([heads·d, H], [kvHeads·d, H] ×2, [H, heads·d]), .self_attn.{q,k,v}_proj.bias
// (attentionBias), .self_attn.{q,k}_norm.weight [d] (qkNorm), .post_attention_layernorm.weight,
// .mlp.{gate,up}_proj.weight [I, H], .mlp.down_proj.weight [H, I]. setWeights(record) fills
// more of them (loading layer by layer keeps one copy); missing() lists the unset ones, and
// every other method refuses to run until it is empty.
class TargetWrap : public Napi::ObjectWrap<TargetWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit TargetWrap(const Napi::CallbackInfo& info);
  std::shared_ptr<TargetState> acquire(Napi::Env env, const char* op);
  static TargetWrap* from(Napi::Env env, Napi::Value v, const char* what);

 private:
  Napi::Value Frozen(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value Rollout(const Napi::CallbackInfo& info);  // batched KV-cached decode (+ aux/last)
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value SetWeights(const Napi::CallbackInfo& info);
  Napi::Value Missing(const Napi::CallbackInfo& info);

  std::shared_ptr<TargetState> state_;
};

Napi::Value AcceptLength(const Napi::CallbackInfo& info);

}  // namespace dw
