// Upcasts of 16-bit float features (bf16, f16) to the f32 the draft step consumes, at memory
// speed, and the f32 → bf16 rounding a rollout writes its features with. bf16 is the top half of an f32 (a 16-bit shift, NaN payloads kept as they are); f16
// is IEEE binary16, widened exactly (subnormals become normal f32, ±inf stay inf, a NaN keeps
// its sign and payload and comes out quiet, as IEEE 754 §5.4.2 and the F16C instruction do).
#pragma once
#include <cstdint>

namespace dw {

void bf16_to_f32(const uint16_t* src, float* dst, int64_t n);
// portable: skip the F16C path even where the CPU has it (tests compare the two).
void f16_to_f32(const uint16_t* src, float* dst, int64_t n, bool portable = false);
// f32 → bf16, rounded to nearest even (as torch's .to(torch.bfloat16)); a NaN stays a NaN
// (its top half, quieted), so a producer never turns one into an infinity.
void f32_to_bf16(const float* src, uint16_t* dst, int64_t n);
// Whether f16_to_f32 takes the F16C path on this CPU.
bool have_f16c();

}  // namespace dw
