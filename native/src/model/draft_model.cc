// The draft model's state (weights, AdamW moments, workspace), batch checks and preparation,
// the training step (run: forward, loss, zero_grad, backward, update) and its sharding seams.
// The layer pieces it calls are in draft_layers.cc, decoding in draft_decode.cc.
#include "model/draft_model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "collectives/comm.h"
#include "kernels/adamw.h"
#include "kernels/blas.h"
#include "kernels/loss.h"
#include "kernels/parallel.h"
#include "model/profile.h"

namespace dw {

namespace {
template <typename T>
void fit(std::vector<T>& v, int64_t n) {
  if (int64_t(v.size()) != n) v.assign(size_t(n), T(0));
}
void zero(std::vector<float>& v) { std::fill(v.begin(), v.end(), 0.0f); }
}  // namespace

void LayerActs::resize(const DraftConfig& c, const ShardDims& sd, int64_t n, int64_t lse_size) {
  rows = n;
  const int64_t H = c.hidden, I = sd.I;
  fit(tok, n);
  fit(pos, n);
  fit(x, n * 2 * H);
  fit(rstd_e, n);
  fit(rstd_h, n);
  fit(qkv, n * sd.D());
  fit(lse, lse_size);
  fit(attn, n * sd.qd());
  fit(h1, n * H);
  fit(rstd_post, n);
  fit(uu, n * H);
  fit(gu, n * 2 * I);
  fit(act, n * I);
  fit(h2, n * H);
  // compact loss rows: sized for the worst case (every row), filled per batch
  fit(hf, n * H);
  fit(rstd_f, n);
  fit(logits, n * sd.Vd);
  lrow.reserve(static_cast<size_t>(n));
  prow.reserve(static_cast<size_t>(n));
  ltgt.reserve(static_cast<size_t>(n));
  lw.reserve(static_cast<size_t>(n));
  lsc.reserve(static_cast<size_t>(n));
}

DraftModel::DraftModel(const DraftConfig& c) : DraftModel(c, ShardLayout(), false) {}
DraftModel::DraftModel(const DraftConfig& c, const ShardLayout& L) : DraftModel(c, L, true) {}

DraftModel::DraftModel(const DraftConfig& c, const ShardLayout& L, bool is_sharded)
    : cfg(c),
      sharded(is_sharded),
      shard_layout(L),
      dims(ShardDims::of(c, L)),
      layout(draft_param_layout(c, dims.nh, dims.nkv, dims.I, dims.Vd)),
      full_layout(draft_param_layout(c)) {
  const int64_t n = layout.back().offset + layout.back().size;
  params.assign(size_t(n), 0.0f);
  grads.assign(size_t(n), 0.0f);
  adam_m.assign(size_t(n), 0.0f);
  adam_v.assign(size_t(n), 0.0f);
  embed.assign(size_t(c.vocab * c.hidden), 0.0f);
  target_head.assign(size_t(c.vocab * c.hidden), 0.0f);
  d2t.assign(size_t(c.draft_vocab), 0);
  t2d.assign(size_t(c.vocab), -1);
}

void DraftModel::apply_threads() const {
  if (threads > 0) {
    set_blas_threads(threads);
    set_pool_threads(threads);
  }
}

std::string DraftModel::set_d2t(const std::vector<int32_t>& map) {
  if (int64_t(map.size()) != cfg.draft_vocab)
    return "d2t has " + std::to_string(map.size()) + " entries, expected draftVocab = " +
           std::to_string(cfg.draft_vocab);
  std::vector<int32_t> inv(size_t(cfg.vocab), -1);
  for (size_t j = 0; j < map.size(); j++) {
    const int32_t t = map[j];
    if (t < 0 || t >= cfg.vocab)
      return "d2t[" + std::to_string(j) + "] = " + std::to_string(t) + " is outside [0, vocab=" +
             std::to_string(cfg.vocab) + ")";
    if (inv[size_t(t)] >= 0)
      return "d2t[" + std::to_string(j) + "] = " + std::to_string(t) + " repeats d2t[" +
             std::to_string(inv[size_t(t)]) + "] (entries must be distinct)";
    inv[size_t(t)] = int32_t(j);
  }
  d2t = map;
  t2d = std::move(inv);
  return "";
}

std::string DraftModel::check_batch(const DraftBatch& b) const {
  const int64_t H = cfg.hidden, S = b.ext();
  if (b.B < 1 || b.T < 1) return "batch and seq must be >= 1";
  if (!sharded) {
    if (S != b.T) return "span (" + std::to_string(S) + ") must equal seq (" + std::to_string(b.T) + ") on an unsharded model";
  } else {
    const int64_t Tg = b.T * shard_layout.sp, t0 = b.T * shard_layout.spIdx;
    const int64_t want = std::min(b.T + cfg.ttt, Tg - t0);
    if (S != want)
      return "ids/last/mask of a sequence-parallel rank must cover " + std::to_string(want) +
             " positions per sample (its " + std::to_string(b.T) + " positions from " + std::to_string(t0) +
             " plus up to ttt = " + std::to_string(cfg.ttt) + " more, within the sequence of " + std::to_string(Tg) +
             "), got " + std::to_string(S);
  }
  const int64_t NS = b.B * S, N = b.B * b.T, Tg = sharded ? b.T * shard_layout.sp : b.T;
  if (b.lengths)
    for (int64_t i = 0; i < b.B; i++)
      if (b.lengths[i] < 1 || b.lengths[i] > Tg)
        return "lengths[" + std::to_string(i) + "] = " + std::to_string(b.lengths[i]) + " is outside [1, seq=" +
               std::to_string(Tg) + "]";
  for (int64_t i = 0; i < NS; i++) {
    if (b.ids[i] < 0 || b.ids[i] >= cfg.vocab)
      return "ids[" + std::to_string(i) + "] = " + std::to_string(b.ids[i]) + " is outside [0, vocab=" +
             std::to_string(cfg.vocab) + ")";
    if (b.mask[i] > 1)
      return "mask[" + std::to_string(i) + "] = " + std::to_string(int(b.mask[i])) + " (must be 0 or 1)";
  }
  for (int64_t i = 0; i < N * 3 * H; i++)
    if (!std::isfinite(b.aux[i])) return "aux[" + std::to_string(i) + "] is not finite";
  for (int64_t i = 0; i < NS * H; i++)
    if (!std::isfinite(b.last[i])) return "last[" + std::to_string(i) + "] is not finite";
  return "";
}

void DraftModel::ensure_workspace(int64_t B, int64_t T, int64_t span) {
  const ShardLayout& L = shard_layout;
  rope_.ensure(T * L.sp, cfg.head_dim(), cfg.rope_theta, cfg.rope_scaling);
  if (ws_.B == B && ws_.T == T && ws_.span == span) return;
  const int64_t N = B * T, NS = B * span, H = cfg.hidden, K = cfg.ttt;
  ws_ = Workspace();
  ws_.B = B;
  ws_.T = T;
  ws_.span = span;
  ws_.Tg = T * L.sp;
  ws_.t0 = T * L.spIdx;
  ws_.Ng = N * L.sp * L.dp;
  ws_.steps.resize(static_cast<size_t>(K));
  for (auto& s : ws_.steps) s.resize(cfg, dims, N, B * dims.nh * T);
  fit(ws_.fc_out, N * H);
  fit(ws_.p, NS * dims.Vd);
  fit(ws_.tgt, NS);
  fit(ws_.need, NS);
  fit(ws_.scr, N * H);
  fit(ws_.scr2, N * H);
  if (tpc()) fit(ws_.part, N * H);
  if (spc()) {
    const int64_t kv2 = 2 * dims.kvd();
    fit(ws_.kv0, B * ws_.Tg * kv2);
    fit(ws_.dkv0, B * ws_.Tg * kv2);
    fit(ws_.kvx, int64_t(L.sp) * N * kv2);
    fit(ws_.kvl, N * kv2);
  }
}

// ---------------------------------------------------------------------------------------------
// Batch preparation

// Target distribution of every position of ids/last/mask that some step uses as a target
// (local position ≥ 1: the first is never a target of this rank's rows).
void DraftModel::prepare_targets(const DraftBatch& b) {
  const int64_t S = b.ext(), NS = b.B * S, t0 = ws_.t0;
  for (int64_t r = 0; r < NS; r++) {
    const bool real = !b.lengths || t0 + r % S < b.lengths[r / S];
    ws_.need[size_t(r)] = (b.mask[r] && (r % S) >= 1 && real) ? 1 : 0;
  }
  if (tpc())
    target_distribution_vp(NS, ws_.need.data(), b.last, cfg.hidden, target_head.data(), dims.v0, dims.v1,
                           wtd_.data(), dims.Vd, t2d.data(), ws_.p.data(), ws_.tgt.data(), ws_.tscratch, tpc());
  else
    target_distribution(NS, ws_.need.data(), b.last, cfg.hidden, target_head.data(), cfg.vocab, d2t.data(),
                        t2d.data(), cfg.draft_vocab, ws_.p.data(), ws_.tgt.data(), ws_.tscratch);
}

// Token, position and loss rows of step k: at global position t, u = t+1+k; token ids[u]
// (0 past the end), weight mask[u]·ok[u] (0 past the end), target row (b, u). The end is the
// sample's length when the batch has lengths (T_global otherwise), and the loss weight carries
// Tg/len so that the normaliser S·Tg makes each sample's loss its own mean.
void DraftModel::prepare_step_rows(const DraftBatch& b, int64_t k, bool all_rows) {
  LayerActs& a = ws_.steps[size_t(k)];
  const int64_t T = b.T, S = b.ext(), t0 = ws_.t0, Tg = ws_.Tg;
  a.lrow.clear();
  a.prow.clear();
  a.ltgt.clear();
  a.lw.clear();
  a.lsc.clear();
  for (int64_t bi = 0; bi < b.B; bi++) {
    const int64_t len = b.lengths ? b.lengths[bi] : Tg;
    const float lscale = b.lengths ? float(double(Tg) / double(len)) : 1.0f;
    for (int64_t t = 0; t < T; t++) {
      const int64_t r = bi * T + t, u = t0 + t + 1 + k;
      const bool in = u < len;
      const int64_t ur = bi * S + (u - t0);  // (b, u) in ids/last/mask (valid when in)
      a.tok[size_t(r)] = in ? b.ids[ur] : 0;
      a.pos[size_t(r)] = int32_t(t0 + t);
      const int32_t tg = in ? ws_.tgt[size_t(ur)] : -1;
      const float w = (in && b.mask[ur] && tg >= 0) ? 1.0f : 0.0f;
      if (w > 0 || all_rows) {
        a.lrow.push_back(int32_t(r));
        a.prow.push_back(int32_t(in ? ur : r));
        a.ltgt.push_back(tg);
        a.lw.push_back(w * lscale);
        a.lsc.push_back(lscale);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Sharding

void DraftModel::attach(std::shared_ptr<Comm> world, std::vector<float> full) {
  if (!sharded) throw std::logic_error("attach: this DraftModel is not sharded");
  if (shard_.world) throw std::logic_error("attach: the model is attached already");
  const ShardLayout& L = shard_layout;
  if (!world || world->size() != L.world() || world->rank() != L.rank())
    throw std::invalid_argument("attach: the communicator is rank " + std::to_string(world ? world->rank() : -1) +
                                " of " + std::to_string(world ? world->size() : 0) + ", the layout wants rank " +
                                std::to_string(L.rank()) + " of " + std::to_string(L.world()));
  if (int64_t(full.size()) != full_layout.back().offset + full_layout.back().size)
    throw std::invalid_argument("attach: wrong number of parameters");
  ShardContext ctx;
  ctx.L = L;
  ctx.world = world;
  // Every rank creates the groups in the same order; each kind partitions the world.
  if (L.tp > 1) ctx.tp = world->subgroup(L.tpGroup(), "dw-draft-tp");
  if (L.sp > 1) ctx.sp = world->subgroup(L.spGroup(), "dw-draft-sp");
  if (L.sp * L.dp > 1) ctx.rep = world->subgroup(replica_group(L), "dw-draft-rep");
  if (world->size() > 1) {  // world rank 0's tensors everywhere
    world->broadcast(full.data(), full.size(), 0);
    world->broadcast(embed.data(), embed.size(), 0);
    world->broadcast(target_head.data(), target_head.size(), 0);
    std::vector<float> ids(d2t.size() * 2);  // 16-bit halves: exact as floats
    for (size_t j = 0; j < d2t.size(); j++) {
      ids[2 * j] = float(uint32_t(d2t[j]) >> 16);
      ids[2 * j + 1] = float(uint32_t(d2t[j]) & 0xffffu);
    }
    world->broadcast(ids.data(), ids.size(), 0);
    std::vector<int32_t> map(d2t.size());
    for (size_t j = 0; j < d2t.size(); j++) map[j] = int32_t((uint32_t(ids[2 * j]) << 16) | uint32_t(ids[2 * j + 1]));
    const std::string err = set_d2t(map);
    if (!err.empty()) throw std::runtime_error("attach: rank 0's d2t is invalid: " + err);
  }
  slice_params(cfg, dims, full.data(), params.data());
  if (ctx.tp) {
    const int64_t H = cfg.hidden;
    wtd_.assign(size_t(dims.Vd * H), 0.0f);
    for (int64_t j = 0; j < dims.Vd; j++)
      std::copy_n(target_head.data() + int64_t(d2t[size_t(dims.j0 + j)]) * H, H, wtd_.data() + j * H);
  }
  shard_ = std::move(ctx);
  ws_ = Workspace();  // sized again (with the SP/TP buffers) at the next step
}

void DraftModel::gather_full(const std::vector<float>& src, std::vector<float>& full) {
  full.assign(size_t(full_layout.back().offset + full_layout.back().size), 0.0f);
  if (!sharded) {
    full = src;
    return;
  }
  if (!shard_.world) throw std::logic_error("gather: the model is not attached");
  if (!shard_.broken.empty()) throw CommError("sharded DraftModel: an earlier collective failed (" + shard_.broken + ")");
  try {
    gather_params(cfg, dims, src.data(), full.data(), tpc());
  } catch (const CommError& e) {
    shard_.broken = e.what();
    throw;
  }
}

// Every rank of the world must step on the same global batch shape with the same request:
// one small all-reduce (max and −min at once) before anything else, so a mismatch is an error
// on every rank instead of mismatched collectives.
void DraftModel::agree(const DraftBatch& b, const StepRequest& req) {
  Comm* w = shard_.world.get();
  if (!w || w->size() == 1) return;
  const double lr = req.update ? req.lr : -1.0;
  const double samples = double(req.samples > 0 ? req.samples : b.B * shard_layout.dp);
  const double mine[] = {double(b.B), double(b.T), req.backward ? 1.0 : 0.0, lr, req.clip, req.weight_decay,
                         req.gather_grads ? 1.0 : 0.0, double(step_count), samples};
  constexpr size_t n = sizeof(mine) / sizeof(mine[0]);
  double buf[2 * n];
  for (size_t i = 0; i < n; i++) {
    buf[i] = mine[i];
    buf[n + i] = -mine[i];
  }
  w->allReduce(buf, 2 * n, ReduceOp::Max);
  static const char* what[] = {"batch (samples per rank)", "seq (positions per rank)", "mode (step / evaluate)", "lr",
                               "clip", "weightDecay", "returnGrads", "optimizer step count",
                               "samples (loss normaliser)"};
  for (size_t i = 0; i < n; i++)
    if (buf[i] != -buf[n + i])
      throw std::invalid_argument(std::string("sharded step: the ranks disagree on ") + what[i] + " (from " +
                                  std::to_string(-buf[n + i]) + " to " + std::to_string(buf[i]) +
                                  " across ranks; this rank has " + std::to_string(mine[i]) + ")");
}

// fc and the norms are replicated over TP and every TP rank computes the same gradient for
// them from the same (all-reduced) inputs. Their TP mean makes that bitwise true whatever the
// ranks' arithmetic (e.g. different SIMD paths on different machines), so AdamW keeps every
// copy identical.
void DraftModel::sync_replicated_grads() {
  const auto sh = param_shards(cfg, dims);
  std::vector<float> buf;
  for (int p = 0; p < kNumParams; p++)
    if (sh[size_t(p)].split == Split::None)
      buf.insert(buf.end(), G(p), G(p) + layout[size_t(p)].size);
  tpc()->allReduce(buf.data(), buf.size(), ReduceOp::Sum);
  const float inv = 1.0f / float(shard_layout.tp);
  size_t o = 0;
  for (int p = 0; p < kNumParams; p++)
    if (sh[size_t(p)].split == Split::None) {
      float* g = G(p);
      for (int64_t i = 0; i < layout[size_t(p)].size; i++) g[i] = buf[o++] * inv;
    }
}

double DraftModel::global_grad_norm() {
  Comm* tp = tpc();
  if (!tp) return grad_norm(int64_t(grads.size()), grads.data());
  // sharded tensors count on every TP rank; replicated ones (fc, norms) once
  const auto sh = param_shards(cfg, dims);
  double s = 0;
  for (int p = 0; p < kNumParams; p++)
    if (sh[size_t(p)].split != Split::None || shard_layout.tpIdx == 0)
      s += sum_squares(layout[size_t(p)].size, grads.data() + layout[size_t(p)].offset);
  tp->allReduce(&s, 1, ReduceOp::Sum);
  return std::sqrt(s);
}

// ---------------------------------------------------------------------------------------------

StepOutput DraftModel::run(const DraftBatch& b, const StepRequest& req) {
  if (sharded) {
    if (!shard_.world) throw std::logic_error("sharded DraftModel: attach it to its world before stepping");
    if (!shard_.broken.empty())
      throw CommError("sharded DraftModel: an earlier collective failed (" + shard_.broken +
                      "); its state is undefined: rebuild the world and the model");
    if (req.logits_out) throw std::invalid_argument("logits() is not available on a sharded model");
  }
  try {
    return run_impl(b, req);
  } catch (const CommError& e) {
    if (sharded) shard_.broken = e.what();
    throw;
  }
}

// ---------------------------------------------------------------------------------------------
// The training step, llm.c style: forward (fc, then the K TTT steps through the layer and the
// lm head), loss, zero_grad, backward (the steps in reverse, then fc), update (AdamW).

StepOutput DraftModel::run_impl(const DraftBatch& b, const StepRequest& req) {
  apply_threads();
  if (sharded) agree(b, req);
  ensure_workspace(b.B, b.T, b.ext());
  const int64_t K = cfg.ttt;
  const bool debug_logits = req.logits_out != nullptr;
  const bool with_grad = req.backward && !debug_logits;
  if (req.samples < 0 || req.samples > b.B * shard_layout.dp)
    throw std::invalid_argument("options.samples must be in [1, " + std::to_string(b.B * shard_layout.dp) +
                                "] (the samples of the global batch, B·dp; got " + std::to_string(req.samples) + ")");
  // B·T of the whole (global) batch, or samples·T_global when the global batch is padded with
  // all-mask-zero samples that must not dilute the mean
  const double Ng = req.samples > 0 ? double(req.samples) * double(ws_.Tg) : double(ws_.Ng);
  StepOutput out;
  out.step = step_count;

  PhaseTimer tm;
  forward(b, debug_logits, tm);
  if (debug_logits) {
    copy_logits(req.logits_out);
    out.ploss.assign(size_t(K), 0.0);
    out.acc.assign(size_t(K), 0.0);
    tm.report("forward");
    return out;
  }
  compute_loss(Ng, with_grad, out, tm);
  if (!with_grad) {
    tm.report("forward");
    return out;
  }
  zero_grad();
  tm.lap("bwd zeroing");
  backward(b, tm);
  out.grad_norm = global_grad_norm();
  if (req.update) {
    update(req, out.grad_norm);
    out.step = step_count;
  }
  tm.lap("grad norm + adamw");
  tm.report("step");
  return out;
}

// TTT step k: the layer on (token ids[t+1+k], hin = h2 of step k−1, fc(aux) at step 0), then
// the lm head on its loss rows (every row with all_rows).
void DraftModel::step_forward(const DraftBatch& b, int64_t k, bool all_rows, PhaseTimer& tm) {
  LayerActs& a = ws_.steps[size_t(k)];
  a.hin = k == 0 ? ws_.fc_out.data() : ws_.steps[size_t(k - 1)].h2.data();
  prepare_step_rows(b, k, all_rows);
  layer_input_forward(a, ws_.scr.data());
  tm.lap("fwd norms+qkv+rope");
  if (k == 0 && spc()) {
    gather_step0_kv();
    tm.lap("fwd sp gather k|v");
  }
  attention_forward_train(k);
  tm.lap("fwd attention");
  layer_output_forward(a);
  tm.lap("fwd o+mlp");
  head_forward(a, ws_.scr.data());
  tm.lap("fwd lm head");
}

// The target distribution of the batch, fc, then every TTT step: each step's logits (of its
// loss rows, or of every row with all_rows) stay in ws_.steps[k].logits.
void DraftModel::forward(const DraftBatch& b, bool all_rows, PhaseTimer& tm) {
  prepare_targets(b);
  tm.lap("fwd target distribution");
  fc_forward(b.aux, b.B * b.T, ws_.fc_out.data());
  tm.lap("fwd fc");
  for (int64_t k = 0; k < cfg.ttt; k++) step_forward(b, k, all_rows, tm);
}

// Debug: every step's logits (forward with all rows) to out [K, B·T, Vd].
void DraftModel::copy_logits(float* out) const {
  const int64_t N = ws_.B * ws_.T, Vd = dims.Vd;
  for (int64_t k = 0; k < cfg.ttt; k++) std::copy_n(ws_.steps[size_t(k)].logits.data(), N * Vd, out + k * N * Vd);
}

// Soft cross-entropy of every step's loss rows against the target distribution:
// ploss_k = Σ ce / Ng, acc_k = Σ hit / Σ w, loss = Σ_k 0.8^k·ploss_k, summed over the replica
// group. With grad, each step's logits become ∂loss/∂logits (scale 0.8^k / Ng) for backward.
void DraftModel::compute_loss(double Ng, bool with_grad, StepOutput& out, PhaseTimer& tm) {
  const int64_t N = ws_.B * ws_.T, K = cfg.ttt, Vd = dims.Vd;
  std::vector<double> ce(static_cast<size_t>(N)), hit(static_cast<size_t>(N));
  std::vector<double> metrics(static_cast<size_t>(3 * K), 0.0);  // per step: Σce, Σhit, Σw
  for (int64_t k = 0; k < K; k++) {
    LayerActs& a = ws_.steps[size_t(k)];
    const int64_t nl = int64_t(a.lrow.size());
    const float scale = with_grad ? float(std::pow(0.8, double(k)) / Ng) : 0.0f;
    if (tpc())
      soft_cross_entropy_vp(nl, Vd, dims.j0, a.logits.data(), ws_.p.data(), a.prow.data(), a.lw.data(), a.ltgt.data(),
                            scale, ce.data(), hit.data(), tpc());
    else
      soft_cross_entropy(nl, Vd, a.logits.data(), ws_.p.data(), a.prow.data(), a.lw.data(), a.ltgt.data(), scale,
                         ce.data(), hit.data());
    double sce = 0, shit = 0, sw = 0;
    for (int64_t i = 0; i < nl; i++) {
      sce += ce[size_t(i)];
      shit += hit[size_t(i)] / a.lsc[size_t(i)];  // accuracy counts tokens, unscaled
      sw += a.lw[size_t(i)] / a.lsc[size_t(i)];
    }
    metrics[size_t(3 * k)] = sce;
    metrics[size_t(3 * k + 1)] = shit;
    metrics[size_t(3 * k + 2)] = sw;
  }
  tm.lap("fwd loss");
  if (repc()) repc()->allReduce(metrics.data(), metrics.size(), ReduceOp::Sum);
  out.ploss.assign(size_t(K), 0.0);
  out.acc.assign(size_t(K), 0.0);
  for (int64_t k = 0; k < K; k++) {
    const double sce = metrics[size_t(3 * k)], shit = metrics[size_t(3 * k + 1)], sw = metrics[size_t(3 * k + 2)];
    out.ploss[size_t(k)] = sce / Ng;
    out.acc[size_t(k)] = sw > 0 ? shit / sw : 0.0;
    out.loss += std::pow(0.8, double(k)) * out.ploss[size_t(k)];
  }
}

// Sizes the backward buffers and zeroes what accumulates: the parameter gradients, dh2 (the
// last step's hidden output gets gradient only from its head) and every step's dqkv (its k|v
// parts collect from the queries of later steps).
void DraftModel::zero_grad() {
  const int64_t N = ws_.B * ws_.T, H = cfg.hidden, K = cfg.ttt, I = dims.I, D = dims.D(), qd = dims.qd();
  fit(ws_.dh2, N * H);
  fit(ws_.dh1, N * H);
  fit(ws_.dact, N * I);
  fit(ws_.dgu, N * 2 * I);
  fit(ws_.duu, N * H);
  fit(ws_.dattn, N * qd);
  fit(ws_.dx, N * 2 * H);
  ws_.dqkv.resize(static_cast<size_t>(K));
  for (auto& v : ws_.dqkv) {
    fit(v, N * D);
    zero(v);
  }
  if (spc()) zero(ws_.dkv0);
  zero(grads);
  zero(ws_.dh2);
}

// TTT step k backward, from dlogits (in its logits) and dh2 (the gradient of its hidden output
// from step k+1) to dhin, left in ws_.dh2 for step k−1 (or fc).
void DraftModel::step_backward(int64_t k, PhaseTimer& tm) {
  LayerActs& a = ws_.steps[size_t(k)];
  head_backward(a, ws_.dh2.data());
  tm.lap("bwd lm head");
  layer_output_backward(a, ws_.dh2.data(), ws_.dh1.data());
  tm.lap("bwd o+mlp");
  attention_backward_train(k);
  tm.lap("bwd attention");
  if (k == 0 && spc()) {
    scatter_step0_dkv();
    tm.lap("bwd sp reduce-scatter dk|dv");
  }
  // dqkv of step k is complete now: its q part was just written, its k/v parts come from
  // queries of steps ≥ k (all processed); step 0's from every step (and every SP rank).
  layer_input_backward(a, ws_.dqkv[size_t(k)].data(), ws_.dh1.data());
  tm.lap("bwd rope+qkv+norms");
  std::swap(ws_.dh1, ws_.dh2);  // dhin of step k = dh2 of step k−1
}

// The steps in reverse, then fc; then the gradients reduced over the ranks that share them.
void DraftModel::backward(const DraftBatch& b, PhaseTimer& tm) {
  for (int64_t k = cfg.ttt - 1; k >= 0; k--) step_backward(k, tm);
  fc_backward(b.aux, b.B * b.T, ws_.dh2.data());
  tm.lap("bwd fc");
  if (repc()) {
    repc()->allReduce(grads.data(), grads.size(), ReduceOp::Sum);
    tm.lap("bwd all-reduce grads (sp×dp)");
  }
  if (tpc()) {
    sync_replicated_grads();
    tm.lap("bwd tp mean of replicated grads");
  }
}

// AdamW on every parameter of this rank, the gradient scaled so its global norm is at most
// req.clip (when > 0). Refuses a non-finite norm before touching anything.
void DraftModel::update(const StepRequest& req, double grad_norm) {
  if (!std::isfinite(grad_norm))
    throw std::runtime_error("gradient norm is not finite (" + std::to_string(grad_norm) +
                             "); weights were not updated");
  float c = 1.0f;
  if (req.clip > 0) c = float(std::min(1.0, req.clip / (grad_norm + 1e-6)));
  AdamWParams p;
  p.lr = req.lr;
  p.weight_decay = req.weight_decay;
  step_count++;
  adamw_update(int64_t(params.size()), params.data(), grads.data(), adam_m.data(), adam_v.data(), p, step_count,
               c);
}

}  // namespace dw
