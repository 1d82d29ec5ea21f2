// The resident step: DraftModel's forward, loss, backward and AdamW (model/draft_model.cc,
// model/draft_layers.cc) as calls on StepOps, over buffers that live on the backend.
#include "step/resident_step.h"

#include <cmath>
#include <stdexcept>
#include <utility>

namespace dw::step {

// One TTT step's activations, [N = B·T] rows each.
struct ResidentStep::Acts {
  int32_t *tok, *pos, *prow, *ltgt;  // the step's rows (cuda::step_row)
  float *w, *lsc;
  float *xe, *xh, *rstd_e, *rstd_h;  // x = [xe | xh] = [RMSNorm(E[tok]) | RMSNorm(hin)]
  float* lse;                        // [B, heads, T]
  float *attn, *h1, *rstd_post, *uu, *gu, *act, *h2, *hf, *rstd_f, *logits;
  double *ce, *hit;
};

struct ResidentStep::Workspace {
  int64_t B = 0, T = 0;
  int32_t *ids = nullptr, *lengths = nullptr;  // lengths null: every sample is T long
  float *aux = nullptr, *last = nullptr;
  uint8_t* mask = nullptr;
  bool has_lengths = false;
  float *cos = nullptr, *sin = nullptr;  // RoPE [T, d/2]
  float *z = nullptr, *p = nullptr, *fc_out = nullptr;
  int32_t* tgt = nullptr;
  float *qkv = nullptr, *dqkv = nullptr;  // every step's q|k|v (after RoPE) [K, N, D], and d
  std::vector<Acts> steps;
  float *S = nullptr, *dP = nullptr, *E = nullptr, *dE = nullptr, *delta = nullptr;  // one head's attention
  float *dh2 = nullptr, *dh1 = nullptr, *tmp = nullptr, *dact = nullptr, *dgu = nullptr, *duu = nullptr;
  float *dattn = nullptr, *dxe = nullptr, *dxh = nullptr, *emb = nullptr;
  double* acc = nullptr;
};

template <typename T>
T* ResidentStep::take(std::vector<void*>& owner, int64_t n) {
  T* p = ops_.alloc<T>(n);
  owner.push_back(p);
  return p;
}

void ResidentStep::release(std::vector<void*>& owner) {
  for (void* p : owner) ops_.free_bytes(p);
  owner.clear();
}

ResidentStep::ResidentStep(StepOps& ops, const DraftModel& m)
    : cfg(m.cfg), step_count(m.step_count), ops_(ops), layout_(m.layout), n_params_(int64_t(m.params.size())) {
  if (m.sharded) throw std::invalid_argument("the resident step runs an unsharded model (tp = sp = dp = 1 per rank)");
  const int64_t n = n_params_, VH = cfg.vocab * cfg.hidden;
  params_ = take<float>(state_mem_, n);
  grads_ = take<float>(state_mem_, n);
  adam_m_ = take<float>(state_mem_, n);
  adam_v_ = take<float>(state_mem_, n);
  embed_ = take<float>(state_mem_, VH);
  target_head_ = take<float>(state_mem_, VH);
  d2t_ = take<int32_t>(state_mem_, cfg.draft_vocab);
  t2d_ = take<int32_t>(state_mem_, cfg.vocab);
  ops_.upload(params_, m.params.data(), size_t(n) * 4);
  ops_.upload(adam_m_, m.adam_m.data(), size_t(n) * 4);
  ops_.upload(adam_v_, m.adam_v.data(), size_t(n) * 4);
  ops_.upload(embed_, m.embed.data(), size_t(VH) * 4);
  ops_.upload(target_head_, m.target_head.data(), size_t(VH) * 4);
  ops_.upload(d2t_, m.d2t.data(), m.d2t.size() * 4);
  ops_.upload(t2d_, m.t2d.data(), m.t2d.size() * 4);
}

ResidentStep::~ResidentStep() {
  release(ws_mem_);
  release(state_mem_);
  delete ws_;
}

void ResidentStep::store(DraftModel& m) const {
  if (m.params.size() != size_t(n_params_) || m.sharded) throw std::invalid_argument("store: not the model this step was made from");
  ops_.download(m.params.data(), params_, size_t(n_params_) * 4);
  ops_.download(m.grads.data(), grads_, size_t(n_params_) * 4);
  ops_.download(m.adam_m.data(), adam_m_, size_t(n_params_) * 4);
  ops_.download(m.adam_v.data(), adam_v_, size_t(n_params_) * 4);
  m.step_count = step_count;
}

void ResidentStep::wait() {
  double x = 0;
  if (ws_) ops_.download(&x, ws_->acc, 8);
}

// Query head h of sample b at step k, its kv head's step-0 keys/values, and the first extra
// (step 1's k and v at the same positions; extra j at + j·stride).
ResidentStep::Head ResidentStep::head(int64_t k, int64_t b, int64_t h) const {
  const int64_t T = ws_->T, D = cfg.qkv_dim(), d = cfg.head_dim(), kvd = cfg.kv_dim();
  const int64_t c = h / (cfg.heads / cfg.kv_heads), row0 = b * T, kofs = row0 * D + cfg.q_dim() + c * d;
  const float* e = ws_->qkv + ws_->B * T * D + kofs;  // qkv(1) + kofs, valid when k > 0
  return {qkv(k) + row0 * D + h * d, qkv(0) + kofs, qkv(0) + kofs + kvd, e, e + kvd, row0, kofs, ws_->B * T * D,
          float(1.0 / std::sqrt(double(d)))};
}

float* ResidentStep::qkv(int64_t k) const { return ws_->qkv + k * ws_->B * ws_->T * cfg.qkv_dim(); }
float* ResidentStep::dqkv(int64_t k) const { return ws_->dqkv + k * ws_->B * ws_->T * cfg.qkv_dim(); }

void ResidentStep::ensure_workspace(int64_t B, int64_t T) {
  if (ws_ && ws_->B == B && ws_->T == T) return;
  release(ws_mem_);
  delete ws_;
  ws_ = new Workspace();
  Workspace& w = *ws_;
  const int64_t N = B * T, H = cfg.hidden, I = cfg.intermediate, D = cfg.qkv_dim(), qd = cfg.q_dim();
  const int64_t V = cfg.vocab, Vd = cfg.draft_vocab, K = cfg.ttt, half = cfg.head_dim() / 2;
  auto f = [&](int64_t n) { return take<float>(ws_mem_, n); };
  auto i32 = [&](int64_t n) { return take<int32_t>(ws_mem_, n); };
  auto f64 = [&](int64_t n) { return take<double>(ws_mem_, n); };
  w.B = B;
  w.T = T;
  w.ids = i32(N);
  w.lengths = i32(B);
  w.aux = f(N * 3 * H);
  w.last = f(N * H);
  w.mask = take<uint8_t>(ws_mem_, N);
  rope_.ensure(T, cfg.head_dim(), cfg.rope_theta, cfg.rope_scaling);
  w.cos = f(T * half);
  w.sin = f(T * half);
  ops_.upload(w.cos, rope_.cos_row(0), size_t(T * half) * 4);
  ops_.upload(w.sin, rope_.sin_row(0), size_t(T * half) * 4);
  w.z = f(N * V);
  w.p = f(N * Vd);
  w.tgt = i32(N);
  w.fc_out = f(N * H);
  w.qkv = f(K * N * D);
  w.dqkv = f(K * N * D);
  w.steps.resize(size_t(K));
  for (Acts& a : w.steps) {
    a.tok = i32(N); a.pos = i32(N); a.prow = i32(N); a.ltgt = i32(N);
    a.w = f(N); a.lsc = f(N);
    a.xe = f(N * H); a.xh = f(N * H); a.rstd_e = f(N); a.rstd_h = f(N);
    a.lse = f(B * cfg.heads * T);
    a.attn = f(N * qd); a.h1 = f(N * H); a.rstd_post = f(N); a.uu = f(N * H);
    a.gu = f(N * 2 * I); a.act = f(N * I); a.h2 = f(N * H); a.hf = f(N * H); a.rstd_f = f(N);
    a.logits = f(N * Vd);
    a.ce = f64(N); a.hit = f64(N);
  }
  w.S = f(T * T); w.dP = f(T * T); w.E = f(T * K); w.dE = f(T * K); w.delta = f(T);
  w.dh2 = f(N * H); w.dh1 = f(N * H); w.tmp = f(N * H); w.dact = f(N * I); w.dgu = f(N * 2 * I);
  w.duu = f(N * H); w.dattn = f(N * qd); w.dxe = f(N * H); w.dxh = f(N * H); w.emb = f(N * H);
  w.acc = f64(1);
}

void ResidentStep::upload_batch(const DraftBatch& b) {
  Workspace& w = *ws_;
  const int64_t N = b.B * b.T, H = cfg.hidden;
  ops_.upload_inputs(w.ids, b.ids, size_t(N) * 4);
  ops_.upload_inputs(w.aux, b.aux, size_t(N * 3 * H) * 4);
  ops_.upload_inputs(w.last, b.last, size_t(N * H) * 4);
  ops_.upload_inputs(w.mask, b.mask, size_t(N));
  w.has_lengths = b.lengths != nullptr;
  if (b.lengths) ops_.upload_inputs(w.lengths, b.lengths, size_t(b.B) * 4);
  ops_.inputs_ready();
}

// ---------------------------------------------------------------------------------------------

StepOutput ResidentStep::run(const DraftBatch& b, const StepRequest& req) {
  if (b.ext() != b.T) throw std::invalid_argument("resident step: span must equal seq (an unsharded batch)");
  if (req.logits_out || req.gather_grads) throw std::invalid_argument("resident step: the debug logits and gathered gradients are the CPU step's");
  if (req.samples < 0 || req.samples > b.B)
    throw std::invalid_argument("options.samples must be in [1, " + std::to_string(b.B) + "] (got " + std::to_string(req.samples) + ")");
  ensure_workspace(b.B, b.T);
  upload_batch(b);
  const double Ng = double(req.samples > 0 ? req.samples : b.B) * double(b.T);
  StepOutput out;
  out.step = step_count;
  forward();
  compute_loss(Ng, req.backward, out);
  if (!req.backward) {
    ops_.release_inputs();
    return out;
  }
  backward();  // the batch's last reader is fc's weight gradient
  ops_.release_inputs();
  out.grad_norm = grad_norm();
  if (req.update) {
    update(req, out.grad_norm);
    out.step = step_count;
  }
  return out;
}

// The target distribution, fc, then each TTT step's layer and lm head (on every row).
void ResidentStep::forward() {
  Workspace& w = *ws_;
  const int64_t N = w.B * w.T, H = cfg.hidden, V = cfg.vocab, Vd = cfg.draft_vocab;
  ops_.gemm(false, true, N, V, H, 1.0f, w.last, H, target_head_, H, 0.0f, w.z, V);
  ops_.target_distribution(N, w.z, V, d2t_, t2d_, Vd, w.p, w.tgt);
  ops_.gemm(false, true, N, H, 3 * H, 1.0f, w.aux, 3 * H, W(kFc), 3 * H, 0.0f, w.fc_out, H);
  for (int64_t k = 0; k < cfg.ttt; k++) layer_forward(k);
}

void ResidentStep::layer_forward(int64_t k) {
  Workspace& w = *ws_;
  Acts& a = w.steps[size_t(k)];
  const int64_t N = w.B * w.T, H = cfg.hidden, I = cfg.intermediate, D = cfg.qkv_dim(), qd = cfg.q_dim();
  const int64_t d = cfg.head_dim(), Vd = cfg.draft_vocab;
  const float* hin = k == 0 ? w.fc_out : w.steps[size_t(k - 1)].h2;
  float* q = qkv(k);
  ops_.step_rows(w.B, w.T, k, w.ids, w.mask, w.has_lengths ? w.lengths : nullptr, w.tgt, a.tok, a.pos, a.prow, a.ltgt,
                 a.w, a.lsc);
  // layer input: the two norms, q|k|v over both halves of x, RoPE on q and k
  ops_.embed_gather(a.tok, N, embed_, H, w.emb);
  ops_.rmsnorm_forward(N, H, w.emb, W(kNIn), cfg.rms_eps, a.xe, a.rstd_e);
  ops_.rmsnorm_forward(N, H, hin, W(kNHid), cfg.rms_eps, a.xh, a.rstd_h);
  ops_.gemm(false, true, N, D, H, 1.0f, a.xe, H, W(kQ), 2 * H, 0.0f, q, D);
  ops_.gemm(false, true, N, D, H, 1.0f, a.xh, H, W(kQ) + H, 2 * H, 1.0f, q, D);
  ops_.rope(N, a.pos, q, D, cfg.heads, d, w.cos, w.sin, false);
  ops_.rope(N, a.pos, q + qd, D, cfg.kv_heads, d, w.cos, w.sin, false);
  attention_forward(k);
  // layer output: h1 = hin + attn·oᵀ; h2 = h1 + down(silu(gate·uu) ⊙ up·uu), uu = RMSNorm(h1)
  ops_.copy(a.h1, hin, size_t(N * H) * 4);
  ops_.gemm(false, true, N, H, qd, 1.0f, a.attn, qd, W(kO), qd, 1.0f, a.h1, H);
  ops_.rmsnorm_forward(N, H, a.h1, W(kNPost), cfg.rms_eps, a.uu, a.rstd_post);
  ops_.gemm(false, true, N, 2 * I, H, 1.0f, a.uu, H, W(kGate), H, 0.0f, a.gu, 2 * I);
  ops_.swiglu_forward(N, I, a.gu, a.act);
  ops_.copy(a.h2, a.h1, size_t(N * H) * 4);
  ops_.gemm(false, true, N, H, I, 1.0f, a.act, I, W(kDown), I, 1.0f, a.h2, H);
  // lm head
  ops_.rmsnorm_forward(N, H, a.h2, W(kNFinal), cfg.rms_eps, a.hf, a.rstd_f);
  ops_.gemm(false, true, N, Vd, H, 1.0f, a.hf, H, W(kLm), H, 0.0f, a.logits, Vd);
}

// Step-k queries of (sample b, head h) against step 0's keys (causal: S) and the step-1..k
// keys at the same position (extras: E); out = P·V + Σ_j E_j·v_j.
void ResidentStep::attention_forward(int64_t k) {
  Workspace& w = *ws_;
  Acts& a = w.steps[size_t(k)];
  const int64_t T = w.T, D = cfg.qkv_dim(), d = cfg.head_dim(), qd = cfg.q_dim();
  for (int64_t b = 0; b < w.B; b++)
    for (int64_t h = 0; h < cfg.heads; h++) {
      const Head x = head(k, b, h);
      float* out = a.attn + x.row0 * qd + h * d;
      ops_.gemm(false, true, T, T, d, x.scale, x.q, D, x.k, D, 0.0f, w.S, T);
      if (k > 0) ops_.row_dots(T, k, d, x.scale, x.q, D, x.ek, D, x.stride, w.E);
      ops_.attention_softmax(T, 0, w.S, T, w.E, k, a.lse + (b * cfg.heads + h) * T);
      ops_.gemm(false, false, T, d, T, 1.0f, w.S, T, x.v, D, 0.0f, out, qd);
      if (k > 0) ops_.rows_combine(T, k, d, w.E, x.ev, D, x.stride, out, qd);
    }
}

// ploss_k = Σ ce / Ng, acc_k = Σ hit / Σ w (tokens, unscaled), loss = Σ_k 0.8^k·ploss_k; the
// per-row terms come back to the host. With grad, each step's logits become ∂loss/∂logits.
void ResidentStep::compute_loss(double Ng, bool with_grad, StepOutput& out) {
  Workspace& w = *ws_;
  const int64_t N = w.B * w.T, K = cfg.ttt, Vd = cfg.draft_vocab;
  std::vector<double> ce(static_cast<size_t>(N)), hit(static_cast<size_t>(N));
  std::vector<float> wt(static_cast<size_t>(N)), lsc(static_cast<size_t>(N));
  out.ploss.assign(size_t(K), 0.0);
  out.acc.assign(size_t(K), 0.0);
  for (int64_t k = 0; k < K; k++) {
    Acts& a = w.steps[size_t(k)];
    const float scale = with_grad ? float(std::pow(0.8, double(k)) / Ng) : 0.0f;
    ops_.soft_cross_entropy(N, Vd, a.logits, w.p, a.prow, a.w, a.ltgt, scale, a.ce, a.hit);
  }
  for (int64_t k = 0; k < K; k++) {
    const Acts& a = w.steps[size_t(k)];
    ops_.download(ce.data(), a.ce, size_t(N) * 8);
    ops_.download(hit.data(), a.hit, size_t(N) * 8);
    ops_.download(wt.data(), a.w, size_t(N) * 4);
    ops_.download(lsc.data(), a.lsc, size_t(N) * 4);
    double sce = 0, shit = 0, sw = 0;
    for (int64_t i = 0; i < N; i++) {
      if (wt[size_t(i)] <= 0) continue;
      sce += ce[size_t(i)];
      shit += hit[size_t(i)] / lsc[size_t(i)];
      sw += wt[size_t(i)] / lsc[size_t(i)];
    }
    out.ploss[size_t(k)] = sce / Ng;
    out.acc[size_t(k)] = sw > 0 ? shit / sw : 0.0;
    out.loss += std::pow(0.8, double(k)) * out.ploss[size_t(k)];
  }
}

// ---------------------------------------------------------------------------------------------

void ResidentStep::backward() {
  Workspace& w = *ws_;
  const int64_t N = w.B * w.T, H = cfg.hidden;
  ops_.zero(grads_, size_t(n_params_) * 4);
  ops_.zero(w.dqkv, size_t(cfg.ttt * N * cfg.qkv_dim()) * 4);
  ops_.zero(w.dh2, size_t(N * H) * 4);
  for (int64_t k = cfg.ttt - 1; k >= 0; k--) layer_backward(k);
  ops_.gemm(true, false, H, 3 * H, N, 1.0f, w.dh2, H, w.aux, 3 * H, 1.0f, G(kFc), 3 * H);
}

// From dlogits (in the logits) and dh2 (from step k+1) to dhin, left in dh2 for step k−1.
void ResidentStep::layer_backward(int64_t k) {
  Workspace& w = *ws_;
  Acts& a = w.steps[size_t(k)];
  const int64_t N = w.B * w.T, H = cfg.hidden, I = cfg.intermediate, D = cfg.qkv_dim(), qd = cfg.q_dim();
  const int64_t d = cfg.head_dim(), Vd = cfg.draft_vocab;
  const float* hin = k == 0 ? w.fc_out : w.steps[size_t(k - 1)].h2;
  // lm head
  ops_.gemm(true, false, Vd, H, N, 1.0f, a.logits, Vd, a.hf, H, 1.0f, G(kLm), H);
  ops_.gemm(false, false, N, H, Vd, 1.0f, a.logits, Vd, W(kLm), H, 0.0f, w.duu, H);
  ops_.rmsnorm_backward(N, H, a.h2, W(kNFinal), a.rstd_f, w.duu, w.tmp, G(kNFinal));
  ops_.axpy(N * H, 1.0f, w.tmp, w.dh2);
  // layer output: MLP, post norm, o
  ops_.gemm(false, false, N, I, H, 1.0f, w.dh2, H, W(kDown), I, 0.0f, w.dact, I);
  ops_.gemm(true, false, H, I, N, 1.0f, w.dh2, H, a.act, I, 1.0f, G(kDown), I);
  ops_.swiglu_backward(N, I, a.gu, w.dact, w.dgu);
  ops_.gemm(true, false, 2 * I, H, N, 1.0f, w.dgu, 2 * I, a.uu, H, 1.0f, G(kGate), H);
  ops_.gemm(false, false, N, H, 2 * I, 1.0f, w.dgu, 2 * I, W(kGate), H, 0.0f, w.duu, H);
  ops_.copy(w.dh1, w.dh2, size_t(N * H) * 4);
  ops_.rmsnorm_backward(N, H, a.h1, W(kNPost), a.rstd_post, w.duu, w.tmp, G(kNPost));
  ops_.axpy(N * H, 1.0f, w.tmp, w.dh1);
  ops_.gemm(true, false, H, qd, N, 1.0f, w.dh1, H, a.attn, qd, 1.0f, G(kO), qd);
  ops_.gemm(false, false, N, qd, H, 1.0f, w.dh1, H, W(kO), qd, 0.0f, w.dattn, qd);
  attention_backward(k);
  // layer input: dqkv of step k is complete (its k|v parts came from the steps ≥ k)
  float* dq = dqkv(k);
  ops_.rope(N, a.pos, dq, D, cfg.heads, d, w.cos, w.sin, true);
  ops_.rope(N, a.pos, dq + qd, D, cfg.kv_heads, d, w.cos, w.sin, true);
  ops_.gemm(true, false, D, H, N, 1.0f, dq, D, a.xe, H, 1.0f, G(kQ), 2 * H);
  ops_.gemm(true, false, D, H, N, 1.0f, dq, D, a.xh, H, 1.0f, G(kQ) + H, 2 * H);
  ops_.gemm(false, false, N, H, D, 1.0f, dq, D, W(kQ), 2 * H, 0.0f, w.dxe, H);
  ops_.gemm(false, false, N, H, D, 1.0f, dq, D, W(kQ) + H, 2 * H, 0.0f, w.dxh, H);
  ops_.rmsnorm_backward(N, H, hin, W(kNHid), a.rstd_h, w.dxh, w.tmp, G(kNHid));
  ops_.axpy(N * H, 1.0f, w.tmp, w.dh1);
  ops_.embed_gather(a.tok, N, embed_, H, w.emb);  // E is frozen: only n_in's gradient is kept
  ops_.rmsnorm_backward(N, H, w.emb, W(kNIn), a.rstd_e, w.dxe, w.tmp, G(kNIn));
  std::swap(w.dh1, w.dh2);
}

// The scores and probabilities recomputed from q, k (the lse is rewritten with the same value),
// then dq (written), step 0's dk/dv and the extras' dk/dv (accumulated).
void ResidentStep::attention_backward(int64_t k) {
  Workspace& w = *ws_;
  Acts& a = w.steps[size_t(k)];
  const int64_t T = w.T, D = cfg.qkv_dim(), d = cfg.head_dim(), qd = cfg.q_dim(), kvd = cfg.kv_dim();
  for (int64_t b = 0; b < w.B; b++)
    for (int64_t h = 0; h < cfg.heads; h++) {
      const Head x = head(k, b, h);
      const float* out = a.attn + x.row0 * qd + h * d;
      const float* dout = w.dattn + x.row0 * qd + h * d;
      float* dQ = dqkv(k) + x.row0 * D + h * d;
      float* dK = dqkv(0) + x.kofs;  // step 0's k|v of this head's kv head, and the extras' after
      float* dV = dK + kvd;
      ops_.gemm(false, true, T, T, d, x.scale, x.q, D, x.k, D, 0.0f, w.S, T);
      if (k > 0) ops_.row_dots(T, k, d, x.scale, x.q, D, x.ek, D, x.stride, w.E);
      ops_.attention_softmax(T, 0, w.S, T, w.E, k, a.lse + (b * cfg.heads + h) * T);
      ops_.row_dots(T, 1, d, 1.0f, dout, qd, out, qd, 0, w.delta);  // δ_i = dout_i·out_i
      ops_.gemm(false, true, T, T, d, 1.0f, dout, qd, x.v, D, 0.0f, w.dP, T);
      ops_.attention_dscores(T, 0, w.S, w.dP, T, w.delta, x.scale);
      ops_.gemm(false, false, T, d, T, 1.0f, w.dP, T, x.k, D, 0.0f, dQ, D);
      ops_.gemm(true, false, T, d, T, 1.0f, w.dP, T, x.q, D, 1.0f, dK, D);
      ops_.gemm(true, false, T, d, T, 1.0f, w.S, T, dout, qd, 1.0f, dV, D);
      if (k > 0) {
        // dE = E ⊙ (dout·v_j − δ)·scale: every extra is visible (q0 = k ≥ any j).
        ops_.row_dots(T, k, d, 1.0f, dout, qd, x.ev, D, x.stride, w.dE);
        ops_.attention_dscores(T, k, w.E, w.dE, k, w.delta, x.scale);
        ops_.rows_combine(T, k, d, w.dE, x.ek, D, x.stride, dQ, D);
        ops_.rows_spread(T, k, d, w.dE, x.q, D, dqkv(1) + x.kofs, D, x.stride);
        ops_.rows_spread(T, k, d, w.E, dout, qd, dqkv(1) + x.kofs + kvd, D, x.stride);
      }
    }
}

double ResidentStep::grad_norm() {
  double s = 0;
  ops_.zero(ws_->acc, 8);
  ops_.sum_squares(n_params_, grads_, ws_->acc);
  ops_.download(&s, ws_->acc, 8);
  return std::sqrt(s);
}

// AdamW (β1 0.9, β2 0.95, ε 1e−8, kernels/adamw.h) with the global-norm clip folded in.
void ResidentStep::update(const StepRequest& req, double grad_norm) {
  if (!std::isfinite(grad_norm))
    throw std::runtime_error("gradient norm is not finite (" + std::to_string(grad_norm) + "); weights were not updated");
  step_count++;
  const cuda::AdamWStep s = cuda::adamw_step(req.lr, 0.9, 0.95, 1e-8, req.weight_decay, step_count,
                                             cuda::clip_coef(grad_norm, req.clip));
  ops_.adamw(n_params_, params_, grads_, adam_m_, adam_v_, s);
}

}  // namespace dw::step
