// Rotary position embedding, rotate-half convention: for i in [0, d/2), f_i = θ^(−2i/d),
// a = pos·f_i, r[i] = x[i]·cos a − x[i+d/2]·sin a, r[i+d/2] = x[i+d/2]·cos a + x[i]·sin a.
#pragma once
#include <cstdint>
#include <vector>

namespace dw {

class RopeTable {
 public:
  // cos/sin for positions [0, max_pos), computed in double.
  void ensure(int64_t max_pos, int64_t d, double theta);
  const float* cos_row(int64_t pos) const { return cos_.data() + pos * (d_ / 2); }
  const float* sin_row(int64_t pos) const { return sin_.data() + pos * (d_ / 2); }

 private:
  int64_t n_ = 0, d_ = 0;
  double theta_ = 0;
  std::vector<float> cos_, sin_;
};

// In place on `rows` rows of x (row stride ld); each row holds `nheads` heads of d at
// x + row·ld + h·d. pos[row] is the row's position. inverse = true applies the transpose
// (rotation by −a): the backward pass.
void rope_apply(int64_t rows, const int32_t* pos, float* x, int64_t ld, int64_t nheads, int64_t d,
                const RopeTable& table, bool inverse);

}  // namespace dw
