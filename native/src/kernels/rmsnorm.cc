#include "kernels/rmsnorm.h"

#include <cmath>
#include <vector>

#include "kernels/parallel.h"
#include "kernels/vec.h"

namespace dw {

void rmsnorm_forward(int64_t rows, int64_t H, const float* x, int64_t ldx, const float* w, double eps,
                     float* y, int64_t ldy, float* rstd) {
  parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const float* xr = x + r * ldx;
      float* yr = y + r * ldy;
      double ms = double(vsumsq(xr, H)) / double(H);
      float rs = float(1.0 / std::sqrt(ms + eps));
      rstd[r] = rs;
      for (int64_t i = 0; i < H; i++) yr[i] = w[i] * (xr[i] * rs);
    }
  });
}

void rmsnorm_backward(int64_t rows, int64_t H, const float* x, int64_t ldx, const float* w,
                      const float* rstd, const float* dy, int64_t lddy, float* dx, int64_t lddx,
                      bool accumulate_dx, float* dw) {
  // dx_j = r·w_j·dy_j − r³·x_j·(Σ_i w_i·dy_i·x_i)/H
  parallel_reduce(rows, 64, H, dw, [&](int64_t r0, int64_t r1, float* dw_part) {
    std::vector<float> wdy(static_cast<size_t>(H));
    for (int64_t r = r0; r < r1; r++) {
      const float* xr = x + r * ldx;
      const float* dyr = dy + r * lddy;
      float* dxr = dx + r * lddx;
      const float rs = rstd[r];
      for (int64_t i = 0; i < H; i++) {
        wdy[i] = w[i] * dyr[i];
        dw_part[i] += dyr[i] * xr[i] * rs;
      }
      const float c = vdot(wdy.data(), xr, H) * rs * rs * rs / float(H);
      if (accumulate_dx)
        for (int64_t i = 0; i < H; i++) dxr[i] += rs * wdy[i] - c * xr[i];
      else
        for (int64_t i = 0; i < H; i++) dxr[i] = rs * wdy[i] - c * xr[i];
    }
  });
}

}  // namespace dw
