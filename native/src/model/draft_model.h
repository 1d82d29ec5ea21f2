// The EAGLE3 draft model on CPU: weights, AdamW state and scratch live here between steps.
// Forward and backward follow docs/model-math.md, one plain function per layer piece
// (llm.c style, draft_layers.cc), strung together by the step (draft_model.cc). Every
// per-layer function takes its sizes from `dims` (this rank's heads, MLP width, draft vocab)
// and its positions from the batch, so the sharded step of DESIGN.md §3 is this same code on
// a rank's shards (shard.h) with collectives at a few seams:
//   TP  forward: h1 and h2 partial sums (o and down are row-parallel) all-reduced; backward:
//       the input gradients of lm, gate|up and q|k|v (column-parallel) all-reduced; the
//       target argmax/normaliser and the loss are vocabulary-parallel (kernels/loss.h).
//   SP  step-0 keys/values all-gathered before attention, their gradients reduce-scattered
//       back; the batch slice carries K positions past the chunk for the TTT shift.
//   all gradients all-reduced over the replica group (SP × DP), those of the TP-replicated
//       fc and norms also averaged over TP; loss, accuracy and the gradient norm reduced so
//       every rank reports the global values.
// An unsharded model (or tp = sp = dp = 1) makes no collective call at all.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/rope.h"
#include "model/draft_config.h"
#include "model/shard.h"

namespace dw {

class PhaseTimer;

// Borrowed views of one training batch: ids i32[B,S], aux f32[B,T,3H], last f32[B,S,H],
// mask u8[B,S] with S = span (T when 0). A sharded rank gets its slice: B = its samples,
// T = its positions [t0, t0+T) of aux, and ids/last/mask for span = min(T + K, T_global − t0)
// positions from t0 (the TTT shift reads tokens, targets and weights up to K positions past
// the chunk). lengths (optional, i32[B]): each sample's true length in [1, T_global]; the
// positions past it are padding: never a token, target or loss row, and the sample's loss is
// its own mean over its length (docs/model-math.md "Padding").
struct DraftBatch {
  const int32_t* ids = nullptr;
  const float* aux = nullptr;
  const float* last = nullptr;
  const uint8_t* mask = nullptr;
  const int32_t* lengths = nullptr;
  int64_t B = 0, T = 0;
  int64_t span = 0;
  int64_t ext() const { return span > 0 ? span : T; }
};

struct StepRequest {
  bool backward = false;      // compute gradients
  bool update = false;        // then apply AdamW
  double lr = 0, clip = 0, weight_decay = 0;
  int64_t samples = 0;        // the loss normaliser is samples·T_global (the real samples of the
                              // global batch; the others are all-mask-zero padding); 0: every
                              // sample, B·dp (the normaliser B·T of the whole global batch)
  float* logits_out = nullptr;  // debug: all logits [K, B, T, Vd], forward only (unsharded)
  bool gather_grads = false;    // sharded: the caller gathers the full gradients afterwards
                                // (every rank must agree: checked with the batch sizes)
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
  std::vector<float> lw;                  // loss weights w·Tg/len (len: the sample's length)
  std::vector<float> lsc;                 // their length scale Tg/len (1 without lengths)
  std::vector<float> hf, rstd_f, logits;  // [nl, H], [nl], [nl, Vd] (gradient after a step)
  void resize(const DraftConfig& c, const ShardDims& s, int64_t rows, int64_t lse_size);
};

class DraftModel {
 public:
  explicit DraftModel(const DraftConfig& c);
  // One rank of a sharded world: holds only its shards (shard.h). attach() before stepping.
  DraftModel(const DraftConfig& c, const ShardLayout& L);

  const DraftConfig cfg;                     // global sizes
  const bool sharded;
  const ShardLayout shard_layout;            // 1 × 1 × 1 when unsharded
  const ShardDims dims;                      // this rank's share (everything when unsharded)
  const std::vector<ParamInfo> layout;       // this rank's tensors (its shapes)
  const std::vector<ParamInfo> full_layout;  // the global shapes (== layout when unsharded)
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
  // "" or a message naming the first bad value (ids range, mask 0/1, finite aux/last), or a
  // span that does not fit this rank's slice of the sequence.
  std::string check_batch(const DraftBatch& b) const;

  // Forward (+ backward, + AdamW) over one batch. Throws std::runtime_error on numeric failure,
  // CommError when a collective fails (the model then refuses further steps), InvalidArg-like
  // std::invalid_argument when the ranks' batches or requests disagree.
  StepOutput run(const DraftBatch& b, const StepRequest& req);

  // ---- sharding ----
  // Joins the world (creates the TP, SP and replica groups), replaces every trainable and
  // frozen tensor by world rank 0's (broadcast; `full` is this rank's copy in the global
  // layout) and keeps this rank's shards. Collective over the world.
  void attach(std::shared_ptr<Comm> world, std::vector<float> full);
  bool attached() const { return shard_.world != nullptr; }
  // full (global layout) ← src (this rank's layout: params, grads, adam_m or adam_v) of every
  // TP rank. Collective over the TP group (a copy when unsharded).
  void gather_full(const std::vector<float>& src, std::vector<float>& full);

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
  DraftModel(const DraftConfig& c, const ShardLayout& L, bool is_sharded);
  struct Workspace {
    int64_t B = 0, T = 0, span = 0;  // this rank's samples, positions, positions of ids/last/mask
    int64_t t0 = 0, Tg = 0, Ng = 0;  // global position of local 0, global T, global B·T
    std::vector<float> part;         // TP partial sums [B·T, H]
    std::vector<float> kv0, dkv0;    // SP: step-0 k|v of every position [B, Tg, 2·kvd], and d
    std::vector<float> kvx, kvl;     // SP: exchange buffers [sp·B·T·2·kvd], [B·T·2·kvd]
    std::vector<LayerActs> steps;
    std::vector<float> fc_out, p, scr, scr2;
    std::vector<int32_t> tgt;
    std::vector<uint8_t> need;
    std::vector<float> tscratch;
    std::vector<float> dh2, dh1, dact, dgu, duu, dattn, dx, dhf;
    std::vector<std::vector<float>> dqkv;
  };

  void ensure_workspace(int64_t B, int64_t T, int64_t span);
  StepOutput run_impl(const DraftBatch& b, const StepRequest& req);
  void agree(const DraftBatch& b, const StepRequest& req);
  void gather_step0_kv();
  void scatter_step0_dkv();
  double global_grad_norm();
  void sync_replicated_grads();
  Comm* tpc() const { return shard_.tp.get(); }
  Comm* spc() const { return shard_.sp.get(); }
  Comm* repc() const { return shard_.rep.get(); }
  void prepare_targets(const DraftBatch& b);
  void prepare_step_rows(const DraftBatch& b, int64_t k, bool all_rows);

  // the training step (run_impl): forward, loss, zero_grad, backward, update
  void forward(const DraftBatch& b, bool all_rows, PhaseTimer& tm);
  void copy_logits(float* out) const;
  void compute_loss(double Ng, bool with_grad, StepOutput& out, PhaseTimer& tm);
  void zero_grad();
  void backward(const DraftBatch& b, PhaseTimer& tm);
  void update(const StepRequest& req, double grad_norm);
  // one TTT step, forward and backward
  void step_forward(const DraftBatch& b, int64_t k, bool all_rows, PhaseTimer& tm);
  void step_backward(int64_t k, PhaseTimer& tm);

  // forward pieces
  void fc_forward(const float* aux, int64_t n, float* out) const;
  void embed_rows(const int32_t* tok, int64_t rows, float* out) const;
  void layer_input_forward(LayerActs& a, float* emb_scratch);
  void attention_forward_train(int64_t k);
  void layer_output_forward(LayerActs& a);
  void head_forward(LayerActs& a, float* scratch);
  // backward pieces (gradients accumulate into `grads`)
  void fc_backward(const float* aux, int64_t n, const float* dhin);
  void head_backward(LayerActs& a, float* dh2);
  void layer_output_backward(LayerActs& a, const float* dh2, float* dh1);
  void attention_backward_train(int64_t k);
  void for_each_task(int64_t n, const std::function<void(int64_t, AttnScratch&)>& fn);
  void layer_input_backward(LayerActs& a, float* dqkv, float* dhin);

  Workspace ws_;
  ShardContext shard_;
  std::vector<float> wtd_;  // TP: rows d2t[j0 .. j0+Vd) of target_head
  RopeTable rope_;
  std::vector<AttnScratch> attn_scratch_;  // one per attention task
};

}  // namespace dw
