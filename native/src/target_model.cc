#include "target_model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "blas.h"
#include "parallel.h"
#include "rmsnorm.h"
#include "rng.h"
#include "swiglu.h"
#include "vec.h"

namespace dw {

std::string TargetConfig::check() const {
  if (vocab < 1) return "vocab must be >= 1";
  if (hidden < 1) return "hidden must be >= 1";
  if (heads < 1) return "heads must be >= 1";
  if (kv_heads < 1) return "kvHeads must be >= 1";
  if (heads % kv_heads != 0) return "heads must be a multiple of kvHeads";
  if (hidden % heads != 0) return "hidden must be a multiple of heads";
  if ((hidden / heads) % 2 != 0) return "hidden/heads (head dim) must be even";
  if (intermediate < 1) return "intermediate must be >= 1";
  if (layers < 8) return "layers must be >= 8";
  if (layers > 1024) return "layers must be <= 1024";
  if (!(rope_theta > 0) || rope_theta > 1e12) return "ropeTheta must be a positive finite number";
  if (!(rms_eps > 0) || rms_eps > 1) return "rmsEps must be in (0, 1]";
  const double big = 1LL << 31;
  if (double(vocab) * double(hidden) >= big || double(intermediate) * double(hidden) * 2 >= big)
    return "config too large (a weight matrix would exceed 2^31 elements)";
  const double per_layer = double(hidden) * double(qkv_dim() + q_dim() + 3 * intermediate + 2);
  const double total = 2.0 * double(vocab) * double(hidden) + double(layers) * per_layer;
  if (total * 4 > 8.0 * (1ull << 30)) return "config too large (more than 8 GiB of weights)";
  return "";
}

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
// o and down 0.5/√fan_in; the head 2/√H (logits with std ≈ 2, a peaked but not one-hot
// next-token distribution). Norm weights are 1.
TargetModel::TargetModel(const TargetConfig& c) : cfg(c) {
  const int64_t V = c.vocab, H = c.hidden, I = c.intermediate, qd = c.q_dim(), D = c.qkv_dim();
  embed.resize(static_cast<size_t>(V * H));
  target_head.resize(static_cast<size_t>(V * H));
  fill_normal(embed.data(), V * H, c.seed, 1, 0.0, 1.0);
  fill_normal(target_head.data(), V * H, c.seed, 2, 0.0, 2.0 / std::sqrt(double(H)));
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
    fill_normal(L.wo.data(), H * qd, c.seed, s + 1, 0.0, 0.5 / std::sqrt(double(qd)));
    fill_normal(L.wgu.data(), 2 * I * H, c.seed, s + 2, 0.0, 1.0 / std::sqrt(double(H)));
    fill_normal(L.wdown.data(), H * I, c.seed, s + 3, 0.0, 0.5 / std::sqrt(double(I)));
  }
  final_norm_.assign(size_t(H), 1.0f);
}

void TargetModel::apply_threads() const {
  if (threads > 0) {
    set_blas_threads(threads);
    set_pool_threads(threads);
  }
}

void TargetModel::forward(const int32_t* ids, int64_t n, KVCache& cache, float* aux, float* last,
                          float* logits_last) {
  const int64_t H = cfg.hidden, I = cfg.intermediate, D = cfg.qkv_dim(), qd = cfg.q_dim(),
                kvd = cfg.kv_dim(), d = cfg.head_dim(), g = cfg.heads / cfg.kv_heads;
  const int64_t t0 = cache.len;
  if (n <= 0) return;
  if (t0 + n > cache.cap) throw std::runtime_error("KV cache overflow");
  rope_.ensure(t0 + n, d, cfg.rope_theta);
  h_.resize(static_cast<size_t>(n * H));
  u_.resize(static_cast<size_t>(n * H));
  qkv_.resize(static_cast<size_t>(n * D));
  attn_.resize(static_cast<size_t>(n * qd));
  gu_.resize(static_cast<size_t>(n * 2 * I));
  act_.resize(static_cast<size_t>(n * I));
  rstd_.resize(static_cast<size_t>(n));
  lse_.resize(static_cast<size_t>(n * cfg.heads));
  attn_scratch_.resize(static_cast<size_t>(cfg.kv_heads));
  pos_.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) {
    std::copy_n(embed.data() + int64_t(ids[i]) * H, H, h_.data() + i * H);
    pos_[size_t(i)] = int32_t(t0 + i);
  }
  AttnShape sh;
  sh.Tq = n;
  sh.q0 = t0;
  sh.d = d;
  sh.scale = float(1.0 / std::sqrt(double(d)));
  for (int64_t l = 0; l < cfg.layers; l++) {
    const Layer& L = layers_[size_t(l)];
    // attention block
    rmsnorm_forward(n, H, h_.data(), H, L.attn_norm.data(), cfg.rms_eps, u_.data(), H, rstd_.data());
    gemm_nt(n, D, H, 1.0f, u_.data(), H, L.wqkv.data(), H, 0.0f, qkv_.data(), D);
    rope_apply(n, pos_.data(), qkv_.data(), D, cfg.heads, d, rope_, false);
    rope_apply(n, pos_.data(), qkv_.data() + qd, D, cfg.kv_heads, d, rope_, false);
    float* kc = cache.k[size_t(l)].data();
    float* vc = cache.v[size_t(l)].data();
    for (int64_t i = 0; i < n; i++) {
      std::copy_n(qkv_.data() + i * D + qd, kvd, kc + (t0 + i) * kvd);
      std::copy_n(qkv_.data() + i * D + qd + kvd, kvd, vc + (t0 + i) * kvd);
    }
    // one task per kv head (its query heads in turn), single-threaded GEMMs inside
    auto task = [&](int64_t c) {
      for (int64_t h = c * g; h < (c + 1) * g; h++) {
        AttnHead hd;
        hd.q = qkv_.data() + h * d;
        hd.ldq = D;
        hd.k = kc + c * d;
        hd.ldk = kvd;
        hd.v = vc + c * d;
        hd.ldv = kvd;
        hd.o = attn_.data() + h * d;
        hd.ldo = qd;
        hd.lse = lse_.data() + h * n;
        attention_forward(sh, hd, attn_scratch_[size_t(c)]);
      }
    };
    if (n == 1) {
      for (int64_t c = 0; c < cfg.kv_heads; c++) task(c);  // decoding one token: tiny
    } else {
      with_serial_blas([&] { parallel_chunks(cfg.kv_heads, task); });
    }
    gemm_nt(n, H, qd, 1.0f, attn_.data(), qd, L.wo.data(), qd, 1.0f, h_.data(), H);
    // MLP block
    rmsnorm_forward(n, H, h_.data(), H, L.mlp_norm.data(), cfg.rms_eps, u_.data(), H, rstd_.data());
    gemm_nt(n, 2 * I, H, 1.0f, u_.data(), H, L.wgu.data(), H, 0.0f, gu_.data(), 2 * I);
    swiglu_forward(n, I, gu_.data(), 2 * I, act_.data(), I);
    gemm_nt(n, H, I, 1.0f, act_.data(), I, L.wdown.data(), I, 1.0f, h_.data(), H);
    if (aux)
      for (int a = 0; a < 3; a++)
        if (cfg.aux_layer(a) == l)
          for (int64_t i = 0; i < n; i++) std::copy_n(h_.data() + i * H, H, aux + i * 3 * H + a * H);
  }
  cache.len += n;
  if (last || logits_last) {
    rmsnorm_forward(n, H, h_.data(), H, final_norm_.data(), cfg.rms_eps, u_.data(), H, rstd_.data());
    if (last) std::copy_n(u_.data(), n * H, last);
    if (logits_last) gemv_n(cfg.vocab, H, target_head.data(), H, u_.data() + (n - 1) * H, 0.0f, logits_last);
  }
}

void TargetModel::forward_batch(const int32_t* ids, int64_t B, int64_t T, float* aux, float* last) {
  apply_threads();
  KVCache cache;
  const int64_t H = cfg.hidden;
  for (int64_t b = 0; b < B; b++) {
    cache.reset(cfg.layers, cfg.kv_dim(), T);
    forward(ids + b * T, T, cache, aux ? aux + b * T * 3 * H : nullptr, last ? last + b * T * H : nullptr,
            nullptr);
  }
}

std::vector<int32_t> TargetModel::generate(const int32_t* prompt, int64_t n, int64_t max_new,
                                           double temperature, uint64_t seed) {
  apply_threads();
  std::vector<int32_t> out(prompt, prompt + n);
  if (max_new <= 0) return out;
  KVCache cache;
  cache.reset(cfg.layers, cfg.kv_dim(), n + max_new);
  std::vector<float> logits(static_cast<size_t>(cfg.vocab));
  std::vector<double> prob;
  SplitMix64 rng(stream_seed(seed, 7));
  forward(prompt, n, cache, nullptr, nullptr, logits.data());
  for (int64_t i = 0; i < max_new; i++) {
    int32_t next;
    if (temperature <= 0) {
      next = int32_t(vargmax(logits.data(), cfg.vocab));
    } else {
      prob.resize(static_cast<size_t>(cfg.vocab));
      const double m = vmax(logits.data(), cfg.vocab);
      double s = 0;
      for (int64_t v = 0; v < cfg.vocab; v++) s += (prob[size_t(v)] = std::exp((logits[size_t(v)] - m) / temperature));
      double u = rng.uniform() * s, acc = 0;
      next = int32_t(cfg.vocab - 1);
      for (int64_t v = 0; v < cfg.vocab; v++) {
        acc += prob[size_t(v)];
        if (u <= acc) {
          next = int32_t(v);
          break;
        }
      }
    }
    out.push_back(next);
    if (i + 1 < max_new) forward(&next, 1, cache, nullptr, nullptr, logits.data());
  }
  return out;
}

}  // namespace dw
