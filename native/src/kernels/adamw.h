// AdamW with bias correction (docs/model-math.md): β1 = 0.9, β2 = 0.95, ε = 1e−8.
#pragma once
#include <cstdint>

namespace dw {

struct AdamWParams {
  double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0;
};

// One update at step t (1-based) with the gradient multiplied by clip_coef first:
// g ← c·g; m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; w ← w − lr·(m̂/(√v̂ + ε) + wd·w).
void adamw_update(int64_t n, float* w, const float* g, float* m, float* v, const AdamWParams& p,
                  int64_t t, float clip_coef);

// √(Σ g²), accumulated in double in a fixed order.
// Σ g² in double (chunked, deterministic for a given thread count), and its square root.
double sum_squares(int64_t n, const float* g);
double grad_norm(int64_t n, const float* g);

}  // namespace dw
