#include "kernels/swiglu.h"

#include "kernels/parallel.h"
#include "kernels/vec.h"

namespace dw {

DW_CLONES static void swiglu_row(int64_t I, const float* g, const float* u, float* act) {
#pragma omp simd
  for (int64_t i = 0; i < I; i++) {
    const float sg = 1.0f / (1.0f + exp_poly(-g[i]));
    act[i] = g[i] * sg * u[i];
  }
}

DW_CLONES static void swiglu_row_backward(int64_t I, const float* g, const float* u, const float* da,
                                          float* dg, float* du) {
#pragma omp simd
  for (int64_t i = 0; i < I; i++) {
    const float sg = 1.0f / (1.0f + exp_poly(-g[i]));
    du[i] = da[i] * g[i] * sg;
    dg[i] = da[i] * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
  }
}

void swiglu_forward(int64_t rows, int64_t I, const float* gu, int64_t ldgu, float* act, int64_t ldact) {
  parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) swiglu_row(I, gu + r * ldgu, gu + r * ldgu + I, act + r * ldact);
  });
}

void swiglu_backward(int64_t rows, int64_t I, const float* gu, int64_t ldgu, const float* dact,
                     int64_t lddact, float* dgu, int64_t lddgu) {
  parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++)
      swiglu_row_backward(I, gu + r * ldgu, gu + r * ldgu + I, dact + r * lddact, dgu + r * lddgu,
                          dgu + r * lddgu + I);
  });
}

}  // namespace dw
