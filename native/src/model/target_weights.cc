// TargetModel from caller weights (Hugging Face tensor names): the tensor list, and where each
// tensor goes in the packed layout (q/k/v rows stacked in wqkv, gate/up in wgu).
#include <algorithm>

#include "model/target_model.h"

namespace dw {

// Buffers are allocated when their first tensor arrives (set_tensor), so building a large
// model costs one layer's allocation per call instead of the whole model's up front.
TargetModel::TargetModel(const TargetConfig& c, FromWeights) : cfg(c) {
  layers_.resize(size_t(c.layers));
  for (const TensorSlot& t : tensor_list(c)) unset_.push_back(t.name);
}

void TargetModel::ensure_layer(Layer& L) {
  if (!L.wqkv.empty()) return;
  const int64_t H = cfg.hidden, I = cfg.intermediate, D = cfg.qkv_dim(), d = cfg.head_dim();
  L.attn_norm.assign(size_t(H), 0.0f);
  L.mlp_norm.assign(size_t(H), 0.0f);
  L.wqkv.assign(size_t(D * H), 0.0f);
  L.wo.assign(size_t(H * cfg.q_dim()), 0.0f);
  L.wgu.assign(size_t(2 * I * H), 0.0f);
  L.wdown.assign(size_t(H * I), 0.0f);
  if (cfg.attention_bias) L.bqkv.assign(size_t(D), 0.0f);
  if (cfg.qk_norm) L.q_norm.assign(size_t(d), 0.0f), L.k_norm.assign(size_t(d), 0.0f);
}

std::vector<TensorSlot> TargetModel::tensor_list(const TargetConfig& c) {
  const int64_t V = c.vocab, H = c.hidden, I = c.intermediate, d = c.head_dim();
  std::vector<TensorSlot> out{{"model.embed_tokens.weight", V * H}, {"model.norm.weight", H}};
  if (!c.tie) out.push_back({"lm_head.weight", V * H});
  for (int64_t l = 0; l < c.layers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string a = p + "self_attn.";
    out.push_back({p + "input_layernorm.weight", H});
    out.push_back({a + "q_proj.weight", c.q_dim() * H});
    out.push_back({a + "k_proj.weight", c.kv_dim() * H});
    out.push_back({a + "v_proj.weight", c.kv_dim() * H});
    out.push_back({a + "o_proj.weight", H * c.q_dim()});
    if (c.attention_bias) {
      out.push_back({a + "q_proj.bias", c.q_dim()});
      out.push_back({a + "k_proj.bias", c.kv_dim()});
      out.push_back({a + "v_proj.bias", c.kv_dim()});
    }
    if (c.qk_norm) {
      out.push_back({a + "q_norm.weight", d});
      out.push_back({a + "k_norm.weight", d});
    }
    out.push_back({p + "post_attention_layernorm.weight", H});
    out.push_back({p + "mlp.gate_proj.weight", I * H});
    out.push_back({p + "mlp.up_proj.weight", I * H});
    out.push_back({p + "mlp.down_proj.weight", H * I});
  }
  return out;
}

float* TargetModel::slot(const std::string& name, int64_t& n) {
  const int64_t H = cfg.hidden, I = cfg.intermediate, qd = cfg.q_dim(), kvd = cfg.kv_dim();
  const size_t VH = size_t(cfg.vocab * H);
  n = 0;
  if (name == "model.embed_tokens.weight") {
    embed.resize(VH);
    if (cfg.tie) target_head.resize(VH);
    return n = int64_t(VH), embed.data();
  }
  if (name == "model.norm.weight") return final_norm_.resize(size_t(H)), n = H, final_norm_.data();
  if (name == "lm_head.weight") return cfg.tie ? nullptr : (target_head.resize(VH), n = int64_t(VH), target_head.data());
  const std::string pre = "model.layers.";
  if (name.compare(0, pre.size(), pre) != 0) return nullptr;
  size_t dot = name.find('.', pre.size());
  if (dot == std::string::npos || dot == pre.size() || dot - pre.size() > 4) return nullptr;
  const std::string num = name.substr(pre.size(), dot - pre.size()), rest = name.substr(dot + 1);
  if (num.find_first_not_of("0123456789") != std::string::npos || (num.size() > 1 && num[0] == '0')) return nullptr;
  const int64_t l = std::stoll(num);
  if (l >= cfg.layers) return nullptr;
  Layer& L = layers_[size_t(l)];
  const bool is_bias = rest.size() > 5 && rest.compare(rest.size() - 5, 5, ".bias") == 0;
  const bool is_qk = rest == "self_attn.q_norm.weight" || rest == "self_attn.k_norm.weight";
  if ((is_bias && !cfg.attention_bias) || (is_qk && !cfg.qk_norm)) return nullptr;
  ensure_layer(L);
  auto at = [&](std::vector<float>& v, int64_t off, int64_t len) { return v.empty() ? nullptr : (n = len, v.data() + off); };
  if (rest == "input_layernorm.weight") return at(L.attn_norm, 0, H);
  if (rest == "post_attention_layernorm.weight") return at(L.mlp_norm, 0, H);
  if (rest == "self_attn.q_proj.weight") return at(L.wqkv, 0, qd * H);
  if (rest == "self_attn.k_proj.weight") return at(L.wqkv, qd * H, kvd * H);
  if (rest == "self_attn.v_proj.weight") return at(L.wqkv, (qd + kvd) * H, kvd * H);
  if (rest == "self_attn.o_proj.weight") return at(L.wo, 0, H * qd);
  if (rest == "self_attn.q_proj.bias") return at(L.bqkv, 0, qd);
  if (rest == "self_attn.k_proj.bias") return at(L.bqkv, qd, kvd);
  if (rest == "self_attn.v_proj.bias") return at(L.bqkv, qd + kvd, kvd);
  if (rest == "self_attn.q_norm.weight") return at(L.q_norm, 0, cfg.head_dim());
  if (rest == "self_attn.k_norm.weight") return at(L.k_norm, 0, cfg.head_dim());
  if (rest == "mlp.gate_proj.weight") return at(L.wgu, 0, I * H);
  if (rest == "mlp.up_proj.weight") return at(L.wgu, I * H, I * H);
  if (rest == "mlp.down_proj.weight") return at(L.wdown, 0, H * I);
  return nullptr;
}

std::string TargetModel::set_tensor(const std::string& name, const float* data, int64_t n) {
  auto it = std::find(unset_.begin(), unset_.end(), name);
  int64_t want = 0;
  float* dst = slot(name, want);
  if (!dst) return "no tensor " + name + " in this config";
  if (n != want) return name + " has " + std::to_string(n) + " elements, expected " + std::to_string(want);
  std::copy_n(data, n, dst);
  if (name == "model.embed_tokens.weight" && cfg.tie) std::copy_n(data, n, target_head.data());
  if (it != unset_.end()) unset_.erase(it);
  return "";
}

std::vector<std::string> TargetModel::missing() const { return unset_; }

}  // namespace dw
