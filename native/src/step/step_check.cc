#include "step/step_check.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "cuda/check_util.h"
#include "kernels/rng.h"
#include "model/draft_model.h"
#include "step/resident_step.h"

namespace dw::step {
namespace {

using cuda::BodyCheck;
using cuda::Diff;

void init_model(DraftModel& m, uint64_t seed) {
  for (size_t p = 0; p < m.layout.size(); p++) {
    const ParamInfo& t = m.layout[p];
    fill_normal(m.params.data() + t.offset, t.size, seed, 100 + p, t.is_norm ? 1.0 : 0.0, t.is_norm ? 0.1 : 0.05);
  }
  // AdamW state of a run in progress (step 10): this checks that it is carried over, and keeps
  // the update well conditioned. From zero moments, the first update is lr·sign(g), and the sign
  // of a gradient within rounding of 0 is either.
  fill_normal(m.adam_m.data(), int64_t(m.adam_m.size()), seed, 92, 0.0, 1e-3);
  fill_normal(m.adam_v.data(), int64_t(m.adam_v.size()), seed, 93, 0.0, 1e-4);
  for (float& v : m.adam_v) v = 1e-4f + std::fabs(v);
  m.step_count = 10;
  fill_normal(m.embed.data(), int64_t(m.embed.size()), seed, 90, 0.0, 1.0);
  fill_normal(m.target_head.data(), int64_t(m.target_head.size()), seed, 91, 0.0, 0.1);
  // the draft vocabulary: a seeded choice of distinct target ids
  std::vector<int32_t> ids(size_t(m.cfg.vocab));
  std::iota(ids.begin(), ids.end(), 0);
  SplitMix64 g(seed ^ 0x5eedull);
  for (size_t i = ids.size() - 1; i > 0; i--) std::swap(ids[i], ids[size_t(g.next() % (i + 1))]);
  ids.resize(size_t(m.cfg.draft_vocab));
  m.set_d2t(ids);
}

struct Batch {
  std::vector<int32_t> ids, lengths;
  std::vector<float> aux, last;
  std::vector<uint8_t> mask;
  DraftBatch view(int64_t B, int64_t T, bool with_lengths) const {
    DraftBatch b;
    b.ids = ids.data(); b.aux = aux.data(); b.last = last.data(); b.mask = mask.data();
    b.lengths = with_lengths ? lengths.data() : nullptr;
    b.B = B; b.T = T;
    return b;
  }
};

// ids over the target vocabulary, a mask with a few holes, the samples of length T, T−3, ...
Batch make_batch(const DraftConfig& c, int64_t B, int64_t T, uint64_t seed, uint64_t stream) {
  Batch b;
  const int64_t N = B * T, H = c.hidden;
  SplitMix64 g(seed * 31 + stream);
  b.ids.resize(size_t(N));
  b.mask.resize(size_t(N));
  for (int64_t i = 0; i < N; i++) {
    b.ids[size_t(i)] = int32_t(g.next() % uint64_t(c.vocab));
    b.mask[size_t(i)] = g.next() % 7 != 0;
  }
  for (int64_t i = 0; i < B; i++) b.lengths.push_back(int32_t(std::max<int64_t>(1, T - 3 * (i % 3))));
  b.aux = cuda::randn(N * 3 * H, seed, stream * 10 + 1);
  b.last = cuda::randn(N * H, seed, stream * 10 + 2);
  return b;
}

// Worst relative difference over the tensors of the layout.
BodyCheck per_tensor(const std::string& name, const std::vector<ParamInfo>& layout, const std::vector<float>& got,
                     const std::vector<float>& want, double tol) {
  BodyCheck worst{name, 0, tol, 0, ""};
  for (const ParamInfo& t : layout) {
    Diff d;
    d.add(got.data() + t.offset, want.data() + t.offset, t.size);
    const BodyCheck c = d.done(name, tol);
    worst.err = std::max(worst.err, std::isnan(c.err) ? INFINITY : c.err);
    worst.values += c.values;
  }
  return worst;
}

// The continuous metrics into d, the accuracies (counts of argmax hits) into acc.
void add_metrics(Diff& d, Diff& acc, const StepOutput& got, const StepOutput& want) {
  d.add(got.loss, want.loss);
  d.add(got.grad_norm, want.grad_norm);
  for (size_t k = 0; k < want.ploss.size(); k++) {
    d.add(got.ploss[k], want.ploss[k]);
    acc.add(got.acc[k], want.acc[k]);
  }
}

}  // namespace

DraftConfig check_config() {
  DraftConfig c;
  c.vocab = 96; c.draft_vocab = 40; c.hidden = 32; c.heads = 4; c.kv_heads = 2; c.intermediate = 48; c.ttt = 3;
  return c;
}

std::vector<BodyCheck> resident_step_check(StepOps& ops, StepOps* ref, const DraftConfig& c, int64_t B, int64_t T,
                                           uint64_t seed, double tol) {
  const auto label = [](const StepOps& o) { return o.name() + (o.bf16_matmul ? ", bf16 matmul" : ""); };
  const std::string pre = "step(" + label(ops) + (ref ? " vs " + label(*ref) : "") + ").";
  DraftModel want(c), got(c);
  init_model(want, seed);
  init_model(got, seed);
  const Batch b1 = make_batch(c, B, T, seed, 1), b2 = make_batch(c, B, T, seed, 2);
  StepRequest train;
  train.backward = train.update = true;
  train.lr = 3e-3;
  train.clip = 0.5;
  train.weight_decay = 0.01;
  StepRequest eval;
  std::vector<BodyCheck> out;
  ResidentStep step(ops, got);
  std::unique_ptr<ResidentStep> ref_step = ref ? std::make_unique<ResidentStep>(*ref, want) : nullptr;
  const auto reference = [&](const DraftBatch& b, const StepRequest& r) { return ref_step ? ref_step->run(b, r) : want.run(b, r); };
  Diff metrics, acc, evals;
  // step 1: short samples and a mask; step 2: full-length samples, fewer real samples than rows
  add_metrics(metrics, acc, step.run(b1.view(B, T, true), train), reference(b1.view(B, T, true), train));
  StepRequest train2 = train;
  train2.samples = std::max<int64_t>(1, B - 1);
  add_metrics(metrics, acc, step.run(b2.view(B, T, false), train2), reference(b2.view(B, T, false), train2));
  step.store(got);
  if (ref_step) ref_step->store(want);
  out.push_back(metrics.done(pre + "metrics(loss, per-step loss, grad norm)", tol));
  out.push_back(per_tensor(pre + "grads", want.layout, got.grads, want.grads, tol));
  out.push_back(per_tensor(pre + "adamw.weights", want.layout, got.params, want.params, tol));
  BodyCheck mv = per_tensor(pre + "adamw.moments", want.layout, got.adam_m, want.adam_m, tol);
  const BodyCheck v = per_tensor(pre + "adamw.moments", want.layout, got.adam_v, want.adam_v, tol);
  mv.err = std::max(mv.err, v.err);
  mv.values += v.values;
  out.push_back(mv);
  // an evaluation of the updated model
  add_metrics(evals, acc, step.run(b1.view(B, T, true), eval), reference(b1.view(B, T, true), eval));
  out.push_back(evals.done(pre + "evaluate(after 2 steps)", tol));
  // Accuracy counts argmax hits: exact when both sides compute in fp32; rounding the products
  // to bf16 on one side only may legitimately flip a near-tie, so it is not compared then.
  if (ops.bf16_matmul == (ref && ref->bf16_matmul)) out.push_back(acc.done(pre + "accuracy(train and evaluate)", tol));
  Diff count;
  count.add(double(got.step_count), double(want.step_count));
  out.push_back(count.done(pre + "optimizer step count", 0));
  return out;
}

}  // namespace dw::step
