// Causal attention for one (sample, query head), with the TTT extras of EAGLE3 training.
//
// Queries are positions q0 .. q0+Tq−1 (row i is position q0+i). Query row i sees
//   - the shared keys/values at positions s ≤ q0+i  (step-0 keys, or the target's KV cache)
//   - `nextra` extra key/value rows at its own position: ek[j][i], ev[j][i] (TTT steps 1..k).
// a = softmax(scale·(q·key)) over that set; out = Σ a·value. The shared part runs as row-tiled
// GEMMs that skip the blocks above the diagonal; the extras are dot products.
// The backward pass recomputes the scores from q, k and the saved log-sum-exp (no T×T
// probabilities are stored), then routes gradients to q, the shared k/v and every extra.
// q0 lets a rank own a slice of the queries while holding the keys up to its last position
// (sequence parallelism).
#pragma once
#include <cstdint>
#include <vector>

namespace dw {

struct AttnShape {
  int64_t Tq = 0;      // query rows
  int64_t q0 = 0;      // position of query row 0; shared keys are positions [0, q0+Tq)
  int64_t d = 0;       // head dim
  int64_t nextra = 0;  // extra (same-position) keys per query
  float scale = 1.0f;  // 1/√d
};

struct AttnHead {
  const float* q = nullptr;  int64_t ldq = 0;   // [Tq, d]
  const float* k = nullptr;  int64_t ldk = 0;   // [q0+Tq, d]
  const float* v = nullptr;  int64_t ldv = 0;   // [q0+Tq, d]
  const float* const* ek = nullptr;             // nextra × [Tq, d], row stride lde
  const float* const* ev = nullptr;
  int64_t lde = 0;
  float* o = nullptr;        int64_t ldo = 0;   // [Tq, d] (read-only in the backward pass)
  float* lse = nullptr;                         // [Tq] log-sum-exp of the scaled scores
};

struct AttnGrad {
  const float* dout = nullptr; int64_t lddo = 0;  // [Tq, d]
  float* dq = nullptr;  int64_t lddq = 0;         // written
  float* dk = nullptr;  int64_t lddk = 0;         // accumulated
  float* dv = nullptr;  int64_t lddv = 0;         // accumulated
  float* const* dek = nullptr;                    // accumulated, row stride ldde
  float* const* dev = nullptr;
  int64_t ldde = 0;
};

// Scratch for one head at a time (reused across heads and steps).
struct AttnScratch {
  std::vector<float> s, dp, a, da;
  void ensure(const AttnShape& sh);
};

constexpr int64_t kAttnTile = 64;  // query rows per GEMM tile

void attention_forward(const AttnShape& sh, const AttnHead& hd, AttnScratch& sc);
void attention_backward(const AttnShape& sh, const AttnHead& hd, const AttnGrad& g, AttnScratch& sc);

// GEMM FLOPs of one head's forward (fwd=true) or backward pass as implemented (tiles).
double attention_flops(const AttnShape& sh, bool fwd);

}  // namespace dw
