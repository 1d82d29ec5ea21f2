// RMSNorm(x; w) = w ⊙ x / √(mean(x²) + ε), over rows of length H.
#pragma once
#include <cstdint>

namespace dw {

// y[r] = RMSNorm(x[r]; w); rstd[r] = 1/√(mean(x[r]²) + ε) is kept for the backward pass.
void rmsnorm_forward(int64_t rows, int64_t H, const float* x, int64_t ldx, const float* w, double eps,
                     float* y, int64_t ldy, float* rstd);

// dx[r] (+)= ∂/∂x of RMSNorm given dy; dw += Σ_r dy ⊙ x·rstd. accumulate_dx: add to dx.
void rmsnorm_backward(int64_t rows, int64_t H, const float* x, int64_t ldx, const float* w,
                      const float* rstd, const float* dy, int64_t lddy, float* dx, int64_t lddx,
                      bool accumulate_dx, float* dw);

}  // namespace dw
