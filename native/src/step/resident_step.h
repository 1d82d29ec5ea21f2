// The draft model's training step with everything resident on a backend (step/step_ops.h):
// weights, AdamW moments, gradients, the frozen embedding and target head, and every
// activation stay in the backend's memory between steps. Per step only the batch goes in
// and the metrics come out (the per-row loss terms, the gradient norm). The arithmetic is
// DraftModel's (docs/model-math.md), written once over StepOps, so the CPU instance (HostOps)
// is checked against DraftModel here and a device instance (CudaOps) against the CPU there.
//
// Differences from DraftModel, all exact in value: the lm head runs on every row (rows of
// weight 0 contribute exactly 0), q|k|v is two products over the two halves of x, and the
// attention of a (sample, head) is one pair of score GEMMs instead of row tiles.
// Scope: one rank, unsharded (tp = sp = dp = 1), fp32.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/rope.h"
#include "model/draft_model.h"
#include "step/step_ops.h"

namespace dw::step {

class ResidentStep {
 public:
  // Uploads m's weights, frozen tensors, vocabulary maps, AdamW moments and step count.
  // m must be unsharded.
  ResidentStep(StepOps& ops, const DraftModel& m);
  ~ResidentStep();
  ResidentStep(const ResidentStep&) = delete;
  ResidentStep& operator=(const ResidentStep&) = delete;

  // One step over b (host memory, checked by DraftModel::check_batch first; span == T).
  // req: backward, update, lr, clip, weight_decay, samples as DraftModel::run; no logits_out.
  StepOutput run(const DraftBatch& b, const StepRequest& req);
  // Waits until the backend has finished every step queued (AdamW of the last one included).
  void wait();
  // The trainable state back into m (params, grads of the last step, AdamW moments, step count).
  void store(DraftModel& m) const;

  const DraftConfig cfg;
  int64_t step_count = 0;

 private:
  struct Acts;  // one TTT step's activations
  template <typename T>
  T* take(std::vector<void*>& owner, int64_t n);
  void release(std::vector<void*>& owner);
  void ensure_workspace(int64_t B, int64_t T);
  void upload_batch(const DraftBatch& b);
  void forward();
  void layer_forward(int64_t k);
  void attention_forward(int64_t k);
  void compute_loss(double Ng, bool with_grad, StepOutput& out);
  void backward();
  void layer_backward(int64_t k);
  void attention_backward(int64_t k);
  double grad_norm();
  void update(const StepRequest& req, double grad_norm);
  float* W(int p) const { return params_ + layout_[size_t(p)].offset; }
  float* G(int p) const { return grads_ + layout_[size_t(p)].offset; }
  float* qkv(int64_t k) const;
  struct Head {
    const float *q, *k, *v, *ek, *ev;  // ek/ev: step 1's, extra j at + j·stride
    int64_t row0, kofs, stride;        // first row of the sample; k's offset in a q|k|v buffer
    float scale;                       // 1/√d
  };
  Head head(int64_t k, int64_t b, int64_t h) const;
  float* dqkv(int64_t k) const;

  StepOps& ops_;
  const std::vector<ParamInfo> layout_;
  const int64_t n_params_;
  std::vector<void*> state_mem_, ws_mem_;
  float *params_ = nullptr, *grads_ = nullptr, *adam_m_ = nullptr, *adam_v_ = nullptr;
  float *embed_ = nullptr, *target_head_ = nullptr;
  int32_t *d2t_ = nullptr, *t2d_ = nullptr;
  RopeTable rope_;
  struct Workspace;
  Workspace* ws_ = nullptr;
};

}  // namespace dw::step
