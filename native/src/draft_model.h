// The EAGLE3 draft model on CPU: weights, AdamW state and scratch live here between steps.
// Forward and backward follow docs/model-math.md, one plain function per layer piece
// (llm.c style). Every per-layer function takes its sizes explicitly (rows, heads, widths),
// so a tensor-parallel rank can later run the same code on its slice of heads / MLP width /
// draft vocab, and a sequence-parallel rank on its slice of positions (AttnShape::q0).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "attention.h"
#include "draft_config.h"
#include "rope.h"

namespace dw {

// Borrowed views of one training batch: ids i32[B,T], aux f32[B,T,3H], last f32[B,T,H],
// mask u8[B,T].
struct DraftBatch {
  const int32_t* ids = nullptr;
  const float* aux = nullptr;
  const float* last = nullptr;
  const uint8_t* mask = nullptr;
  int64_t B = 0, T = 0;
};

struct StepRequest {
  bool backward = false;      // compute gradients
  bool update = false;        // then apply AdamW
  double lr = 0, clip = 0, weight_decay = 0;
  float* logits_out = nullptr;  // debug: all logits [K, B, T, Vd], forward only
};

struct StepOutput {
  double loss = 0, grad_norm = 0;
  std::vector<double> ploss, acc;
  int64_t step = 0;
};

// Activations of one TTT step over `rows` rows (rows = B·T in training, 1 when decoding).
struct LayerActs {
  int64_t rows = 0;
  const float* hin = nullptr;           // fc(aux) at step 0, h2 of the previous step after
  std::vector<int32_t> tok, pos;        // input token and RoPE position per row
  std::vector<float> x;                 // [rows, 2H] = [RMSNorm(E[tok]; n_in) | RMSNorm(hin; n_hid)]
  std::vector<float> rstd_e, rstd_h;    // [rows]
  std::vector<float> qkv;               // [rows, qkv_dim], q and k after RoPE
  std::vector<float> lse;               // attention log-sum-exp, [B, heads, T]
  std::vector<float> attn;              // [rows, q_dim]
  std::vector<float> h1, rstd_post, uu; // h1 = hin + attn·oᵀ; uu = RMSNorm(h1; n_post)
  std::vector<float> gu, act;           // [rows, 2I] gate|up pre-activation; [rows, I]
  std::vector<float> h2;                // [rows, H]
  // loss rows (compact: only rows whose weight is > 0 go through the lm head)
  std::vector<int32_t> lrow, prow, ltgt;  // row, its target row (b, t+1+k), target draft id
  std::vector<float> lw;                  // weights
  std::vector<float> hf, rstd_f, logits;  // [nl, H], [nl], [nl, Vd] (gradient after a step)
  void resize(const DraftConfig& c, int64_t rows, int64_t lse_size);
};

class DraftModel {
 public:
  explicit DraftModel(const DraftConfig& c);

  const DraftConfig cfg;
  const std::vector<ParamInfo> layout;
  std::vector<float> params, grads, adam_m, adam_v;  // flat, in `layout` order
  std::vector<float> embed, target_head;             // frozen [V, H]
  std::vector<int32_t> d2t, t2d;                     // [Vd], [V] (−1: not in the draft vocab)
  int64_t step_count = 0;
  int threads = 0;  // BLAS + pool threads for this model's work (0: leave as they are)

  float* W(int p) { return params.data() + layout[size_t(p)].offset; }
  const float* W(int p) const { return params.data() + layout[size_t(p)].offset; }
  float* G(int p) { return grads.data() + layout[size_t(p)].offset; }

  // Rebuilds t2d from d2t; "" or a message (range, duplicates).
  std::string set_d2t(const std::vector<int32_t>& map);
  // "" or a message naming the first bad value (ids range, mask 0/1, finite aux/last).
  std::string check_batch(const DraftBatch& b) const;

  // Forward (+ backward, + AdamW) over one batch. Throws std::runtime_error on numeric failure.
  StepOutput run(const DraftBatch& b, const StepRequest& req);

  // ---- decoding support (accept length) ----
  // Step 0 over one sequence of L positions (hin = fc(aux_s), token = ids[s+1]); keeps its
  // activations in `seq` and writes the step-0 logits of every position to logits [L, Vd].
  void decode_prefill(const float* aux, const int32_t* ids, int64_t L, LayerActs& seq,
                      std::vector<float>& logits);
  // Step j ≥ 1 at position p, one row in chain[j]: hin (H floats, h2 of step j−1), token tok;
  // attends to seq's step-0 keys s ≤ p and to the step-1..j keys chain[1..j]. Writes
  // logits [Vd]. chain must hold at least j+1 entries.
  void decode_step(const LayerActs& seq, int64_t p, const float* hin, std::vector<LayerActs>& chain,
                   int64_t j, int32_t tok, std::vector<float>& logits);

  void apply_threads() const;

 private:
  struct Workspace {
    int64_t B = 0, T = 0;
    std::vector<LayerActs> steps;
    std::vector<float> fc_out, p, scr, scr2;
    std::vector<int32_t> tgt;
    std::vector<uint8_t> need;
    std::vector<float> tscratch;
    std::vector<float> dh2, dh1, dact, dgu, duu, dattn, dx, dhf;
    std::vector<std::vector<float>> dqkv;
  };

  void ensure_workspace(int64_t B, int64_t T);
  void prepare_targets(const DraftBatch& b);
  void prepare_step_rows(const DraftBatch& b, int64_t k, bool all_rows);

  // forward pieces
  void embed_rows(const int32_t* tok, int64_t rows, float* out) const;
  void layer_input_forward(LayerActs& a, float* emb_scratch);
  void attention_forward_train(int64_t k);
  void layer_output_forward(LayerActs& a);
  void head_forward(LayerActs& a, float* scratch);
  // backward pieces (gradients accumulate into `grads`)
  void head_backward(LayerActs& a, float* dh2);
  void layer_output_backward(LayerActs& a, const float* dh2, float* dh1);
  void attention_backward_train(int64_t k);
  void for_each_task(int64_t n, const std::function<void(int64_t, AttnScratch&)>& fn);
  void layer_input_backward(LayerActs& a, float* dqkv, float* dhin);

  Workspace ws_;
  RopeTable rope_;
  std::vector<AttnScratch> attn_scratch_;  // one per attention task
};

}  // namespace dw
