// SwiGLU activation: act = silu(g) ⊙ u with silu(x) = x·σ(x). gu rows hold [g (I) | u (I)].
#pragma once
#include <cstdint>

namespace dw {

void swiglu_forward(int64_t rows, int64_t I, const float* gu, int64_t ldgu, float* act, int64_t ldact);
// dgu = [dact·u·σ(g)(1 + g(1 − σ(g))) | dact·silu(g)]
void swiglu_backward(int64_t rows, int64_t I, const float* gu, int64_t ldgu, const float* dact,
                     int64_t lddact, float* dgu, int64_t lddgu);

}  // namespace dw
