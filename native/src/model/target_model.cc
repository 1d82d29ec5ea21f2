#include "model/target_model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/blas.h"
#include "kernels/parallel.h"
#include "kernels/rmsnorm.h"
#include "kernels/rng.h"
#include "kernels/swiglu.h"
#include "kernels/vec.h"

namespace dw {

std::string TargetConfig::check() const {
  if (vocab < 1) return "vocab must be >= 1";
  if (hidden < 1) return "hidden must be >= 1";
  if (heads < 1) return "heads must be >= 1";
  if (kv_heads < 1) return "kvHeads must be >= 1";
  if (heads % kv_heads != 0) return "heads must be a multiple of kvHeads";
  if (head_dim_ < 0 || head_dim_ > 65536) return "headDim must be in [0, 65536] (0: hidden/heads)";
  if (head_dim_ == 0 && hidden % heads != 0) return "hidden must be a multiple of heads";
  if (head_dim() % 2 != 0) return head_dim_ ? "headDim must be even" : "hidden/heads (head dim) must be even";
  if (intermediate < 1) return "intermediate must be >= 1";
  const bool default_aux = aux_layers[0] < 0 && aux_layers[1] < 0 && aux_layers[2] < 0;
  if (default_aux && layers < 8) return "layers must be >= 8";
  if (layers < 1) return "layers must be >= 1";
  if (layers > 1024) return "layers must be <= 1024";
  if (!default_aux)
    for (int i = 0; i < 3; i++) {
      const std::string f = "auxLayers[" + std::to_string(i) + "]";
      if (aux_layers[i] < 0 || aux_layers[i] >= layers) return f + " must be in [0, layers)";
      if (i > 0 && aux_layers[i] <= aux_layers[i - 1]) return f + " must be above auxLayers[" + std::to_string(i - 1) + "]";
    }
  const std::string rs = rope_scaling.check();
  if (!rs.empty()) return "ropeScaling: " + rs;
  if (!(rope_theta > 0) || rope_theta > 1e12) return "ropeTheta must be a positive finite number";
  if (!(rms_eps > 0) || rms_eps > 1) return "rmsEps must be in (0, 1]";
  if (!(logit_scale > 0) || logit_scale > 1000) return "logitScale must be in (0, 1000]";
  if (!(zipf >= 0) || zipf > 8) return "zipf must be in [0, 8]";
  if (!(residual_scale >= 0) || residual_scale > 16) return "residualScale must be in [0, 16]";
  const double big = 1LL << 31;
  if (double(vocab) * double(hidden) >= big || double(intermediate) * double(hidden) * 2 >= big)
    return "config too large (a weight matrix would exceed 2^31 elements)";
  if (double(q_dim()) * double(hidden) >= big) return "config too large (a weight matrix would exceed 2^31 elements)";
  const double per_layer = double(hidden) * double(qkv_dim() + q_dim() + 3 * intermediate + 2);
  const double total = 2.0 * double(vocab) * double(hidden) + double(layers) * per_layer;
  if (total * 4 > 8.0 * (1ull << 30)) return "config too large (more than 8 GiB of weights)";
  return "";
}

// Keeps the buffers of an earlier use (every position is written before it is read).
void KVCache::reset(int64_t layers, int64_t kv_dim, int64_t c) {
  len = 0;
  cap = c;
  k.resize(static_cast<size_t>(layers));
  v.resize(static_cast<size_t>(layers));
  for (auto& x : k) x.resize(static_cast<size_t>(c * kv_dim));
  for (auto& x : v) x.resize(static_cast<size_t>(c * kv_dim));
}

// Weight streams: embed 1, target_head 2, layer ℓ tensor j: 100 + 16ℓ + j.
// Scales keep the residual stream near unit RMS: inputs N(0,1); q/k/v/gate/up 1/√H;
// o and down residual_scale·0.5/√fan_in (small branches: the stream changes gradually over
// the layers, so middle layers already predict the output, as in trained LMs); the head
// logit_scale·2/√H with row v scaled by (v+1)^(−zipf) (peaked next-token distributions and a
// Zipf-like unigram skew: a few tokens are frequent). Norm weights are 1.
TargetModel::TargetModel(const TargetConfig& c) : cfg(c) {
  const int64_t V = c.vocab, H = c.hidden, I = c.intermediate, qd = c.q_dim(), D = c.qkv_dim();
  embed.resize(static_cast<size_t>(V * H));
  target_head.resize(static_cast<size_t>(V * H));
  fill_normal(embed.data(), V * H, c.seed, 1, 0.0, 1.0);
  fill_normal(target_head.data(), V * H, c.seed, 2, 0.0, c.logit_scale * 2.0 / std::sqrt(double(H)));
  if (c.zipf != 0)
    for (int64_t v = 0; v < V; v++) {
      const float r = float(std::pow(double(v + 1), -c.zipf));
      for (int64_t j = 0; j < H; j++) target_head[size_t(v * H + j)] *= r;
    }
  layers_.resize(static_cast<size_t>(c.layers));
  for (int64_t l = 0; l < c.layers; l++) {
    Layer& L = layers_[size_t(l)];
    const uint64_t s = 100 + 16 * uint64_t(l);
    L.attn_norm.assign(size_t(H), 1.0f);
    L.mlp_norm.assign(size_t(H), 1.0f);
    L.wqkv.resize(static_cast<size_t>(D * H));
    L.wo.resize(static_cast<size_t>(H * qd));
    L.wgu.resize(static_cast<size_t>(2 * I * H));
    L.wdown.resize(static_cast<size_t>(H * I));
    fill_normal(L.wqkv.data(), D * H, c.seed, s + 0, 0.0, 1.0 / std::sqrt(double(H)));
    fill_normal(L.wo.data(), H * qd, c.seed, s + 1, 0.0, c.residual_scale * 0.5 / std::sqrt(double(qd)));
    fill_normal(L.wgu.data(), 2 * I * H, c.seed, s + 2, 0.0, 1.0 / std::sqrt(double(H)));
    fill_normal(L.wdown.data(), H * I, c.seed, s + 3, 0.0, c.residual_scale * 0.5 / std::sqrt(double(I)));
    if (c.attention_bias) L.bqkv.assign(size_t(D), 0.0f);  // the shapes alone: zero biases, unit qk-norm
    if (c.qk_norm) L.q_norm.assign(size_t(c.head_dim()), 1.0f), L.k_norm.assign(size_t(c.head_dim()), 1.0f);
  }
  if (c.tie) target_head = embed;
  final_norm_.assign(size_t(H), 1.0f);
}

void TargetModel::apply_threads() const {
  if (threads > 0) {
    set_blas_threads(threads);
    set_pool_threads(threads);
  }
}

namespace {

// One query row (position p) of one head against keys/values 0..p of a KV cache: the
// decoding case of attention_forward (same softmax kernels), without its GEMM calls.
void decode_attention(const float* q, const float* k, const float* v, int64_t ld, int64_t p, int64_t d, float scale,
                      float* s, float* o) {
  const int64_t nk = p + 1;
  for (int64_t j = 0; j < nk; j++) s[j] = scale * vdot(q, k + j * ld, d);
  const float m = vmax(s, nk);
  const float inv = 1.0f / vexp_sub_sum(s, s, m, nk);
  std::fill(o, o + d, 0.0f);
  for (int64_t j = 0; j < nk; j++) vaxpy(o, s[j] * inv, v + j * ld, d);
}

}  // namespace

void TargetModel::forward_seqs(const SeqRows* seqs, int64_t B, float* logits) {
  const int64_t H = cfg.hidden, I = cfg.intermediate, D = cfg.qkv_dim(), qd = cfg.q_dim(),
                kvd = cfg.kv_dim(), d = cfg.head_dim(), g = cfg.heads / cfg.kv_heads, nkv = cfg.kv_heads;
  if (B <= 0) return;
  if (!unset_.empty()) throw std::runtime_error("TargetModel: weight " + unset_[0] + " was never set");
  row0_.resize(static_cast<size_t>(B + 1));
  int64_t R = 0, maxpos = 0, work = 0;
  bool decode_only = true;
  for (int64_t b = 0; b < B; b++) {
    const SeqRows& sq = seqs[b];
    if (sq.n <= 0) throw std::runtime_error("forward_seqs: a sequence with no new rows");
    if (sq.cache->len + sq.n > sq.cache->cap) throw std::runtime_error("KV cache overflow");
    row0_[size_t(b)] = R;
    R += sq.n;
    maxpos = std::max(maxpos, sq.cache->len + sq.n);
    work += sq.n * (sq.cache->len + sq.n);
    if (sq.n != 1) decode_only = false;
  }
  row0_[size_t(B)] = R;
  rope_.ensure(maxpos, d, cfg.rope_theta, cfg.rope_scaling);
  h_.resize(static_cast<size_t>(R * H));
  u_.resize(static_cast<size_t>(R * H));
  qkv_.resize(static_cast<size_t>(R * D));
  attn_.resize(static_cast<size_t>(R * qd));
  gu_.resize(static_cast<size_t>(R * 2 * I));
  act_.resize(static_cast<size_t>(R * I));
  rstd_.resize(static_cast<size_t>(R));
  lse_.resize(static_cast<size_t>(R * cfg.heads));
  pos_.resize(static_cast<size_t>(R));
  if (attn_scratch_.size() < size_t(B * nkv)) attn_scratch_.resize(static_cast<size_t>(B * nkv));
  for (int64_t b = 0; b < B; b++)
    for (int64_t i = 0; i < seqs[b].n; i++) {
      const int64_t r = row0_[size_t(b)] + i;
      std::copy_n(embed.data() + int64_t(seqs[b].ids[i]) * H, H, h_.data() + r * H);
      pos_[size_t(r)] = int32_t(seqs[b].cache->len + i);
    }
  const float scale = float(1.0 / std::sqrt(double(d)));
  for (int64_t l = 0; l < cfg.layers; l++) {
    const Layer& L = layers_[size_t(l)];
    // attention block
    rmsnorm_forward(R, H, h_.data(), H, L.attn_norm.data(), cfg.rms_eps, u_.data(), H, rstd_.data());
    gemm_nt(R, D, H, 1.0f, u_.data(), H, L.wqkv.data(), H, 0.0f, qkv_.data(), D);
    if (!L.bqkv.empty())
      parallel_for(R, 64, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) vaxpy(qkv_.data() + r * D, 1.0f, L.bqkv.data(), D);
      });
    if (!L.q_norm.empty()) {  // per head, in place (the row's sum of squares is taken before it is written)
      for (int64_t h = 0; h < cfg.heads; h++)
        rmsnorm_forward(R, d, qkv_.data() + h * d, D, L.q_norm.data(), cfg.rms_eps, qkv_.data() + h * d, D, rstd_.data());
      for (int64_t h = 0; h < nkv; h++)
        rmsnorm_forward(R, d, qkv_.data() + qd + h * d, D, L.k_norm.data(), cfg.rms_eps, qkv_.data() + qd + h * d, D,
                        rstd_.data());
    }
    rope_apply(R, pos_.data(), qkv_.data(), D, cfg.heads, d, rope_, false);
    rope_apply(R, pos_.data(), qkv_.data() + qd, D, cfg.kv_heads, d, rope_, false);
    for (int64_t b = 0; b < B; b++) {
      KVCache& c = *seqs[b].cache;
      float* kc = c.k[size_t(l)].data();
      float* vc = c.v[size_t(l)].data();
      for (int64_t i = 0; i < seqs[b].n; i++) {
        const float* row = qkv_.data() + (row0_[size_t(b)] + i) * D;
        std::copy_n(row + qd, kvd, kc + (c.len + i) * kvd);
        std::copy_n(row + qd + kvd, kvd, vc + (c.len + i) * kvd);
      }
    }
    // one task per (sequence, kv head): its query heads in turn, single-threaded GEMMs inside
    auto task = [&](int64_t t) {
      const int64_t b = t / nkv, c = t % nkv;
      const SeqRows& sq = seqs[b];
      const float* kc = sq.cache->k[size_t(l)].data() + c * d;
      const float* vc = sq.cache->v[size_t(l)].data() + c * d;
      const int64_t r0 = row0_[size_t(b)];
      AttnScratch& sc = attn_scratch_[size_t(t)];
      for (int64_t h = c * g; h < (c + 1) * g; h++) {
        if (sq.n == 1) {
          if (sc.s.size() < size_t(sq.cache->len + 1)) sc.s.resize(size_t(sq.cache->len + 1));
          decode_attention(qkv_.data() + r0 * D + h * d, kc, vc, kvd, sq.cache->len, d, scale, sc.s.data(),
                           attn_.data() + r0 * qd + h * d);
          continue;
        }
        AttnShape sh;
        sh.Tq = sq.n;
        sh.q0 = sq.cache->len;
        sh.d = d;
        sh.scale = scale;
        AttnHead hd;
        hd.q = qkv_.data() + r0 * D + h * d;
        hd.ldq = D;
        hd.k = kc;
        hd.ldk = kvd;
        hd.v = vc;
        hd.ldv = kvd;
        hd.o = attn_.data() + r0 * qd + h * d;
        hd.ldo = qd;
        hd.lse = lse_.data() + h * R + r0;
        attention_forward(sh, hd, sc);
      }
    };
    if (decode_only && work < 4096) {
      for (int64_t t = 0; t < B * nkv; t++) task(t);  // decoding a few tokens: tiny
    } else {
      with_serial_blas([&] { parallel_chunks(B * nkv, task); });
    }
    gemm_nt(R, H, qd, 1.0f, attn_.data(), qd, L.wo.data(), qd, 1.0f, h_.data(), H);
    // MLP block
    rmsnorm_forward(R, H, h_.data(), H, L.mlp_norm.data(), cfg.rms_eps, u_.data(), H, rstd_.data());
    gemm_nt(R, 2 * I, H, 1.0f, u_.data(), H, L.wgu.data(), H, 0.0f, gu_.data(), 2 * I);
    swiglu_forward(R, I, gu_.data(), 2 * I, act_.data(), I);
    gemm_nt(R, H, I, 1.0f, act_.data(), I, L.wdown.data(), I, 1.0f, h_.data(), H);
    for (int a = 0; a < 3; a++)
      if (cfg.aux_layer(a) == l)
        for (int64_t b = 0; b < B; b++)
          if (seqs[b].aux)
            for (int64_t i = 0; i < seqs[b].n; i++)
              std::copy_n(h_.data() + (row0_[size_t(b)] + i) * H, H, seqs[b].aux + i * 3 * H + a * H);
  }
  for (int64_t b = 0; b < B; b++) seqs[b].cache->len += seqs[b].n;
  bool any_last = false;
  for (int64_t b = 0; b < B; b++) any_last = any_last || seqs[b].last;
  if (!any_last && !logits) return;
  rmsnorm_forward(R, H, h_.data(), H, final_norm_.data(), cfg.rms_eps, u_.data(), H, rstd_.data());
  for (int64_t b = 0; b < B; b++)
    if (seqs[b].last) std::copy_n(u_.data() + row0_[size_t(b)] * H, seqs[b].n * H, seqs[b].last);
  if (logits) {
    fin_.resize(static_cast<size_t>(B * H));
    for (int64_t b = 0; b < B; b++) std::copy_n(u_.data() + (row0_[size_t(b) + 1] - 1) * H, H, fin_.data() + b * H);
    gemm_nt(B, cfg.vocab, H, 1.0f, fin_.data(), H, target_head.data(), H, 0.0f, logits, cfg.vocab);
  }
}

void TargetModel::forward(const int32_t* ids, int64_t n, KVCache& cache, float* aux, float* last,
                          float* logits_last) {
  if (n <= 0) return;
  SeqRows sq;
  sq.ids = ids;
  sq.n = n;
  sq.cache = &cache;
  sq.aux = aux;
  sq.last = last;
  forward_seqs(&sq, 1, logits_last);
}

void TargetModel::forward_batch(const int32_t* ids, int64_t B, int64_t T, float* aux, float* last) {
  apply_threads();
  const int64_t H = cfg.hidden;
  // Several sequences per pass (bigger GEMMs), up to ~512 rows.
  const int64_t per = std::max<int64_t>(1, std::min<int64_t>(B, 512 / std::max<int64_t>(T, 1)));
  std::vector<KVCache>& caches = caches_;
  if (caches.size() < size_t(per)) caches.resize(static_cast<size_t>(per));
  std::vector<SeqRows> seqs(static_cast<size_t>(per));
  for (int64_t b0 = 0; b0 < B; b0 += per) {
    const int64_t nb = std::min(per, B - b0);
    for (int64_t j = 0; j < nb; j++) {
      const int64_t b = b0 + j;
      caches[size_t(j)].reset(cfg.layers, cfg.kv_dim(), T);
      seqs[size_t(j)] = SeqRows{ids + b * T, T, &caches[size_t(j)], aux ? aux + b * T * 3 * H : nullptr,
                                last ? last + b * T * H : nullptr};
    }
    forward_seqs(seqs.data(), nb, nullptr);
  }
}

namespace {

// The next token from a row of logits: greedy (lowest index on ties) when temperature <= 0,
// else one draw from softmax(logits/temperature) (computed in double).
int32_t pick_token(const float* logits, int64_t V, double temperature, SplitMix64& rng, std::vector<double>& prob) {
  if (temperature <= 0) return int32_t(vargmax(logits, V));
  prob.resize(static_cast<size_t>(V));
  const double m = vmax(logits, V);
  double s = 0;
  for (int64_t v = 0; v < V; v++) s += (prob[size_t(v)] = std::exp((logits[size_t(v)] - m) / temperature));
  const double u = rng.uniform() * s;
  double acc = 0;
  for (int64_t v = 0; v < V; v++) {
    acc += prob[size_t(v)];
    if (u <= acc) return int32_t(v);
  }
  return int32_t(V - 1);
}

}  // namespace

void TargetModel::rollout(const std::vector<std::vector<int32_t>>& prompts, int64_t max_new, double temperature,
                          const std::vector<uint64_t>& seeds, bool want_aux, bool want_last,
                          std::vector<RolloutSeq>& out) {
  apply_threads();
  const int64_t H = cfg.hidden, V = cfg.vocab, N = int64_t(prompts.size());
  if (!seeds.empty() && int64_t(seeds.size()) != N) throw std::runtime_error("rollout: one seed per prompt");
  const bool feats = want_aux || want_last;
  out.assign(static_cast<size_t>(N), RolloutSeq{});
  // Sequences decode in groups of up to kGroup (bounded scratch); each step is one pass.
  constexpr int64_t kGroup = 32;
  std::vector<KVCache>& caches = caches_;  // reused across calls (no fresh allocation per call)
  std::vector<SeqRows> rows;
  std::vector<SplitMix64> rngs;
  std::vector<float> logits;
  std::vector<double> prob;
  for (int64_t b0 = 0; b0 < N; b0 += kGroup) {
    const int64_t nb = std::min(kGroup, N - b0);
    if (caches.size() < size_t(nb)) caches.resize(static_cast<size_t>(nb));
    rows.assign(static_cast<size_t>(nb), SeqRows{});
    rngs.clear();
    for (int64_t j = 0; j < nb; j++) {
      const auto& p = prompts[size_t(b0 + j)];
      const int64_t P = int64_t(p.size()), L = P + max_new;
      if (P <= 0) throw std::runtime_error("rollout: an empty prompt");
      RolloutSeq& o = out[size_t(b0 + j)];
      o.ids.reserve(static_cast<size_t>(L));  // rows[j].ids points into it: no reallocation
      o.ids.assign(p.begin(), p.end());
      if (want_aux) o.aux.resize(static_cast<size_t>(L * 3 * H));
      if (want_last) o.last.resize(static_cast<size_t>(L * H));
      caches[size_t(j)].reset(cfg.layers, cfg.kv_dim(), L);
      rows[size_t(j)] = SeqRows{o.ids.data(), P, &caches[size_t(j)], want_aux ? o.aux.data() : nullptr,
                                want_last ? o.last.data() : nullptr};
      rngs.emplace_back(stream_seed(seeds.empty() ? 0 : seeds[size_t(b0 + j)], 7));
    }
    logits.resize(static_cast<size_t>(nb * V));
    if (max_new <= 0) {
      if (feats) forward_seqs(rows.data(), nb, nullptr);
      continue;
    }
    forward_seqs(rows.data(), nb, logits.data());  // prefill: every prompt in one pass
    for (int64_t i = 0; i < max_new; i++) {
      const bool more = i + 1 < max_new;
      for (int64_t j = 0; j < nb; j++) {
        RolloutSeq& o = out[size_t(b0 + j)];
        const int64_t P = int64_t(prompts[size_t(b0 + j)].size());
        o.ids.push_back(pick_token(logits.data() + j * V, V, temperature, rngs[size_t(j)], prob));
        SeqRows& r = rows[size_t(j)];
        r.ids = o.ids.data() + (P + i);
        r.n = 1;
        r.aux = want_aux ? o.aux.data() + (P + i) * 3 * H : nullptr;
        r.last = want_last ? o.last.data() + (P + i) * H : nullptr;
      }
      // one position per sequence; the final token only when its features are wanted
      if (more || feats) forward_seqs(rows.data(), nb, more ? logits.data() : nullptr);
    }
  }
}

std::vector<int32_t> TargetModel::generate(const int32_t* prompt, int64_t n, int64_t max_new,
                                           double temperature, uint64_t seed) {
  std::vector<RolloutSeq> out;
  rollout({std::vector<int32_t>(prompt, prompt + n)}, max_new, temperature, {seed}, false, false, out);
  return std::move(out[0].ids);
}

}  // namespace dw
