// The training target (frozen target head → draft-vocab distribution) and the soft
// cross-entropy loss with its gradient.
#pragma once
#include <cstdint>
#include <vector>

namespace dw {

class Comm;

// One row of target logits z [V] → p [Vd] = softmax(z[d2t]); returns t2d[argmax z] (lowest
// index; −1 when the argmax is not in the draft vocabulary).
int32_t target_row(const float* z, int64_t V, const int32_t* d2t, const int32_t* t2d, int64_t Vd, float* p);

// For every row r with need[r] != 0: z = last[r]·Wtᵀ (V logits), y = argmax z (lowest index),
// tgt[r] = t2d[y] (the draft id of y, −1 when y ∉ d2t, i.e. ok = 0), and
// p[r, j] = softmax_j(z[d2t[j]]). Rows without need get tgt = −1 and p untouched.
// Rows are gathered into chunks so one GEMM per chunk covers only the needed rows.
void target_distribution(int64_t N, const uint8_t* need, const float* last, int64_t H, const float* Wt,
                         int64_t V, const int32_t* d2t, const int32_t* t2d, int64_t Vd, float* p,
                         int32_t* tgt, std::vector<float>& scratch);

// Soft cross-entropy over n rows of logits [n, Vd] (row stride Vd). Row r has target
// distribution p + prow[r]·Vd, weight w[r] and target class tgt[r].
// Writes ce[r] = w·(−Σ_j p_j·log_softmax_j) and hit[r] = w·[argmax logits == tgt] (lowest
// index on ties). With grad_scale != 0 the logits are overwritten by
// ∂(grad_scale·Σ_r ce[r])/∂logits = grad_scale·w·(softmax·Σp − p); otherwise left as they are.
void soft_cross_entropy(int64_t n, int64_t Vd, float* logits, const float* p, const int32_t* prow,
                        const float* w, const int32_t* tgt, float grad_scale, double* ce, double* hit);

// Vocabulary-parallel versions for tensor parallelism. This rank holds draft ids [j0, j0+Vl)
// (its p columns and logits) and searches target ids [v0, v1) for the argmax of z; `tp`
// all-reduces over the TP group (max of the row maxima, lowest index among equal maxima, sums
// of exponentials), so every TP rank ends with the same tgt, normalisers, ce and hit.
// All TP ranks must pass the same rows (need / n, prow, w, tgt). Comm null: one rank holds
// everything (the results then equal the functions above up to float rounding order).

// Like target_distribution with p [N, Vl] (this rank's columns of the distribution over the
// whole draft vocabulary) and Wtd [Vl, H] = rows d2t[j0..j0+Vl) of Wt.
void target_distribution_vp(int64_t N, const uint8_t* need, const float* last, int64_t H, const float* Wt,
                            int64_t v0, int64_t v1, const float* Wtd, int64_t Vl, const int32_t* t2d, float* p,
                            int32_t* tgt, std::vector<float>& scratch, Comm* tp);

// Like soft_cross_entropy with logits [n, Vl] of draft ids [j0, j0+Vl) and p rows [·, Vl];
// tgt holds global draft ids. The gradient written is this rank's columns of the full one.
void soft_cross_entropy_vp(int64_t n, int64_t Vl, int64_t j0, float* logits, const float* p, const int32_t* prow,
                           const float* w, const int32_t* tgt, float grad_scale, double* ce, double* hit, Comm* tp);

}  // namespace dw
