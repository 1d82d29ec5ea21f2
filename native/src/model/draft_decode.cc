// Decoding with the draft model (accept length, model/accept.cc): step 0 over a whole
// sequence, then one row per TTT step, through the same layer functions as training.
#include "model/draft_model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace dw {

void DraftModel::decode_prefill(const float* aux, const int32_t* ids, int64_t L, LayerActs& a,
                                std::vector<float>& logits) {
  if (sharded) throw std::runtime_error("decoding (accept length) needs an unsharded DraftModel");
  apply_threads();
  rope_.ensure(L, cfg.head_dim(), cfg.rope_theta, cfg.rope_scaling);
  const int64_t H = cfg.hidden, Vd = cfg.draft_vocab, D = cfg.qkv_dim(), d = cfg.head_dim();
  const int64_t g = cfg.heads / cfg.kv_heads, qd = cfg.q_dim(), kvd = cfg.kv_dim();
  a.resize(cfg, dims, L, cfg.heads * L);
  std::vector<float> hin(static_cast<size_t>(L * H)), scratch(static_cast<size_t>(L * H));
  fc_forward(aux, L, hin.data());
  for (int64_t t = 0; t < L; t++) {
    a.tok[size_t(t)] = t + 1 < L ? ids[t + 1] : 0;
    a.pos[size_t(t)] = int32_t(t);
  }
  a.hin = hin.data();
  layer_input_forward(a, scratch.data());
  AttnShape sh;
  sh.Tq = L;
  sh.d = d;
  sh.scale = float(1.0 / std::sqrt(double(d)));
  for_each_task(cfg.kv_heads, [&](int64_t c, AttnScratch& scratch) {
    for (int64_t h = c * g; h < (c + 1) * g; h++) {
      AttnHead hd;
      hd.q = a.qkv.data() + h * d;
      hd.ldq = D;
      hd.k = a.qkv.data() + qd + c * d;
      hd.ldk = D;
      hd.v = a.qkv.data() + qd + kvd + c * d;
      hd.ldv = D;
      hd.o = a.attn.data() + h * d;
      hd.ldo = qd;
      hd.lse = a.lse.data() + h * L;
      attention_forward(sh, hd, scratch);
    }
  });
  layer_output_forward(a);
  a.hin = nullptr;  // `hin` dies here; decode_step only reads qkv and h2
  a.lrow.clear();
  for (int64_t t = 0; t < L; t++) a.lrow.push_back(int32_t(t));
  head_forward(a, scratch.data());
  logits.assign(a.logits.begin(), a.logits.begin() + L * Vd);
}

void DraftModel::decode_step(const LayerActs& seq, int64_t p, const float* hin, std::vector<LayerActs>& chain,
                             int64_t j, int32_t tok, std::vector<float>& logits) {
  const int64_t H = cfg.hidden, Vd = cfg.draft_vocab, D = cfg.qkv_dim(), d = cfg.head_dim();
  const int64_t g = cfg.heads / cfg.kv_heads, qd = cfg.q_dim(), kvd = cfg.kv_dim();
  LayerActs& a = chain[size_t(j)];
  if (sharded) throw std::runtime_error("decoding (accept length) needs an unsharded DraftModel");
  if (a.rows != 1) a.resize(cfg, dims, 1, cfg.heads);
  rope_.ensure(p + 1, d, cfg.rope_theta, cfg.rope_scaling);
  std::vector<float> hin_copy(hin, hin + H), scratch(static_cast<size_t>(H));
  a.hin = hin_copy.data();
  a.tok[0] = tok;
  a.pos[0] = int32_t(p);
  layer_input_forward(a, scratch.data());
  AttnShape sh;
  sh.Tq = 1;
  sh.q0 = p;
  sh.d = d;
  sh.nextra = j;
  sh.scale = float(1.0 / std::sqrt(double(d)));
  std::vector<const float*> ek(static_cast<size_t>(j)), ev(static_cast<size_t>(j));
  if (attn_scratch_.empty()) attn_scratch_.resize(1);
  AttnScratch& scratch1 = attn_scratch_[0];  // one row: serial is fastest
  for (int64_t h = 0; h < cfg.heads; h++) {
    const int64_t c = h / g;
    for (int64_t i = 1; i <= j; i++) {
      ek[size_t(i - 1)] = chain[size_t(i)].qkv.data() + qd + c * d;
      ev[size_t(i - 1)] = chain[size_t(i)].qkv.data() + qd + kvd + c * d;
    }
    AttnHead hd;
    hd.q = a.qkv.data() + h * d;
    hd.ldq = D;
    hd.k = seq.qkv.data() + qd + c * d;
    hd.ldk = D;
    hd.v = seq.qkv.data() + qd + kvd + c * d;
    hd.ldv = D;
    hd.ek = ek.data();
    hd.ev = ev.data();
    hd.lde = D;
    hd.o = a.attn.data() + h * d;
    hd.ldo = qd;
    hd.lse = a.lse.data() + h;
    attention_forward(sh, hd, scratch1);
  }
  layer_output_forward(a);
  a.hin = nullptr;
  a.lrow.assign(1, 0);
  head_forward(a, scratch.data());
  logits.assign(a.logits.begin(), a.logits.begin() + Vd);
}

}  // namespace dw
