// Rotary position embedding, rotate-half convention: for i in [0, d/2), f_i = θ^(−2i/d),
// a = pos·f_i, r[i] = x[i]·cos a − x[i+d/2]·sin a, r[i+d/2] = x[i+d/2]·cos a + x[i]·sin a.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dw {

// Frequency scaling of a Hugging Face config's `rope_scaling` / `rope_parameters`
// (transformers' modeling_rope_utils): kind 0 none; 1 linear (every f_i / factor); 2 llama3
// (wavelengths 2π/f_i above original_max/low_freq_factor divided by factor, below
// original_max/high_freq_factor kept, smoothly interpolated between).
struct RopeScaling {
  int kind = 0;
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  double original_max_position = 8192.0;
  bool operator==(const RopeScaling& o) const {
    return kind == o.kind && factor == o.factor && low_freq_factor == o.low_freq_factor &&
           high_freq_factor == o.high_freq_factor && original_max_position == o.original_max_position;
  }
  // "" when valid, else a message naming the field
  std::string check() const;
};

// f_i for i in [0, d/2), with the scaling applied.
std::vector<double> rope_inv_freq(int64_t d, double theta, const RopeScaling& s);

class RopeTable {
 public:
  // cos/sin for positions [0, max_pos), computed in double.
  void ensure(int64_t max_pos, int64_t d, double theta, const RopeScaling& scaling = RopeScaling{});
  const float* cos_row(int64_t pos) const { return cos_.data() + pos * (d_ / 2); }
  const float* sin_row(int64_t pos) const { return sin_.data() + pos * (d_ / 2); }

 private:
  int64_t n_ = 0, d_ = 0;
  double theta_ = 0;
  RopeScaling scaling_;
  std::vector<double> inv_freq_;
  std::vector<float> cos_, sin_;
};

// In place on `rows` rows of x (row stride ld); each row holds `nheads` heads of d at
// x + row·ld + h·d. pos[row] is the row's position. inverse = true applies the transpose
// (rotation by −a): the backward pass.
void rope_apply(int64_t rows, const int32_t* pos, float* x, int64_t ld, int64_t nheads, int64_t d,
                const RopeTable& table, bool inverse);

}  // namespace dw
