// Parsing a batch argument (napi_batch.h): the stacked form copied here, on the JS thread;
// the samples form validated here and gathered by the worker.
#include "napi/napi_batch.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/convert.h"
#include "napi/napi_util.h"

namespace dw {

namespace {

// activations kept for the backward pass, per step and row, plus the targets (see LayerActs)
void check_scratch(Napi::Env env, const DraftConfig& c, int64_t N) {
  const int64_t H = c.hidden;
  const double per_row = double(c.ttt) * double(8 * H + 2 * c.qkv_dim() + c.q_dim() + 3 * c.intermediate + c.draft_vocab + 2 * c.heads + 8) +
                         double(c.draft_vocab) * (c.ttt + 1) + double(4 * H + c.q_dim() + 3 * c.intermediate + 3 * H + 8);
  const double bytes = 4.0 * double(N) * per_row;
  if (bytes > kMaxScratchBytes)
    throw_invalid(env, "batch too large: batch·seq = " + std::to_string(N) + " rows need ~" +
                           std::to_string(int64_t(bytes / (1 << 20))) + " MiB of scratch (limit " +
                           std::to_string(int64_t(kMaxScratchBytes / (1 << 20))) + " MiB)");
}

BatchCopy::Dtype dtype_of(Napi::Env env, Napi::Object o, const char* key, const std::string& what) {
  Napi::Value v = o.Get(key);
  const std::string d = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (d == "f32") return BatchCopy::Dtype::f32;
  if (d == "bf16") return BatchCopy::Dtype::bf16;
  if (d == "f16") return BatchCopy::Dtype::f16;
  throw_invalid(env, what + "." + key + " must be 'f32', 'bf16' or 'f16'");
}

// A float feature of a sample: Float32Array for f32, Uint16Array for bf16/f16, of n elements.
const void* float_feature(Napi::Env env, Napi::Object o, const char* key, BatchCopy::Dtype d, int64_t n,
                          const std::string& what, BatchCopy& b) {
  Napi::Value v = o.Get(key);
  const std::string w = what + "." + key;
  b.keep.push_back(Napi::Persistent(v));
  if (d == BatchCopy::Dtype::f32) return need_typed<float>(env, v, w + " (f32)", n).Data();
  return need_typed<uint16_t>(env, v, w + (d == BatchCopy::Dtype::bf16 ? " (bf16)" : " (f16)"), n).Data();
}

void put_floats(const void* src, BatchCopy::Dtype d, int64_t from, int64_t n, float* dst) {
  if (n <= 0) return;
  if (d == BatchCopy::Dtype::f32) std::memcpy(dst, static_cast<const float*>(src) + from, size_t(n) * sizeof(float));
  else if (d == BatchCopy::Dtype::bf16) bf16_to_f32(static_cast<const uint16_t*>(src) + from, dst, n);
  else f16_to_f32(static_cast<const uint16_t*>(src) + from, dst, n);
}

// batch = {samples: [{ids, mask, aux, last, auxDtype, lastDtype}], batch: B, seq: T_global}:
// B >= samples.length (the rest fully-masked padding), every sample at most T_global long.
void parse_samples(Napi::Env env, Napi::Object o, const DraftModel& m, BatchCopy& b) {
  const DraftConfig& c = m.cfg;
  const ShardLayout& L = m.shard_layout;
  Napi::Value sv = o.Get("samples");
  if (!sv.IsArray()) throw_invalid(env, "batch.samples must be an array");
  Napi::Array samples = sv.As<Napi::Array>();
  b.B = field_int(o, "batch", "batch", 1, 1 << 20);
  b.T_global = field_int(o, "seq", "batch", 1, 1 << 20);
  if (int64_t(samples.Length()) > b.B)
    throw_invalid(env, "batch.samples holds " + std::to_string(samples.Length()) + " samples, more than batch = " + std::to_string(b.B));
  const int sp = m.sharded ? L.sp : 1, spIdx = m.sharded ? L.spIdx : 0;
  if (b.T_global % sp != 0)
    throw_invalid(env, "batch.seq = " + std::to_string(b.T_global) + " is not divisible by sp = " + std::to_string(sp) +
                           " (sequence parallelism splits the positions)");
  b.T = b.T_global / sp;
  b.t0 = b.T * spIdx;
  b.span = m.sharded ? std::min(b.T + c.ttt, b.T_global - b.t0) : b.T;
  b.H = c.hidden;
  check_scratch(env, c, b.B * b.T);
  const int64_t H = c.hidden;
  for (uint32_t i = 0; i < samples.Length(); i++) {
    const std::string what = "batch.samples[" + std::to_string(i) + "]";
    Napi::Object s = need_object(env, samples.Get(i), what);
    Napi::Value iv = s.Get("ids");
    auto ids = need_typed<int32_t>(env, iv, what + ".ids", -1);
    const int64_t len = int64_t(ids.ElementLength());
    if (len < 1 || len > b.T_global)
      throw_invalid(env, what + ".ids has " + std::to_string(len) + " positions, outside [1, seq = " + std::to_string(b.T_global) + "]");
    BatchCopy::Part p{};
    p.len = len;
    p.ids = ids.Data();
    b.keep.push_back(Napi::Persistent(iv));
    Napi::Value mv = s.Get("mask");
    p.mask = need_typed<uint8_t>(env, mv, what + ".mask (one per position of ids)", len).Data();
    b.keep.push_back(Napi::Persistent(mv));
    p.aux_dtype = dtype_of(env, s, "auxDtype", what);
    p.last_dtype = dtype_of(env, s, "lastDtype", what);
    p.aux = float_feature(env, s, "aux", p.aux_dtype, len * 3 * H, what, b);
    p.last = float_feature(env, s, "last", p.last_dtype, len * H, what, b);
    b.parts.push_back(p);
  }
}

}  // namespace

void BatchCopy::gather() {
  if (!from_samples) return;
  ids.assign(size_t(B * span), 0);
  mask.assign(size_t(B * span), 0);
  last.assign(size_t(B * span * H), 0.0f);
  aux.assign(size_t(B * T * 3 * H), 0.0f);
  lengths.assign(size_t(B), int32_t(T_global));  // padding samples: whole, fully masked
  bool shorter = false;
  for (size_t b = 0; b < parts.size(); b++) {
    const Part& p = parts[b];
    lengths[b] = int32_t(p.len);
    shorter = shorter || p.len < T_global;
    // This rank's positions [t0, t0 + span) of ids/last/mask and [t0, t0 + T) of aux, those
    // the sample has; the rest stays zero (padding).
    const int64_t ns = std::clamp<int64_t>(p.len - t0, 0, span), na = std::clamp<int64_t>(p.len - t0, 0, T);
    if (ns > 0) {
      std::memcpy(ids.data() + b * span, p.ids + t0, size_t(ns) * sizeof(int32_t));
      std::memcpy(mask.data() + b * span, p.mask + t0, size_t(ns));
    }
    put_floats(p.last, p.last_dtype, t0 * H, ns * H, last.data() + b * span * H);
    put_floats(p.aux, p.aux_dtype, t0 * 3 * H, na * 3 * H, aux.data() + b * T * 3 * H);
  }
  if (!shorter) lengths.clear();
}

DraftBatch BatchCopy::view() const {
  DraftBatch b;
  b.ids = ids.data();
  b.aux = aux.data();
  b.last = last.data();
  b.mask = mask.data();
  b.lengths = lengths.empty() ? nullptr : lengths.data();
  b.B = B;
  b.T = T;
  b.span = span;
  return b;
}

// A sharded model takes this rank's slice: batch = its samples, seq = its positions; ids,
// last and mask cover span = min(seq + ttt, seq·sp − seq·spIdx) positions per sample.
BatchCopy parse_batch(Napi::Env env, Napi::Value v, const DraftModel& m) {
  const DraftConfig& c = m.cfg;
  Napi::Object o = need_object(env, v, "batch");
  BatchCopy b;
  if (o.Has("samples")) {
    b.from_samples = true;
    parse_samples(env, o, m, b);
    return b;
  }
  b.B = field_int(o, "batch", "batch", 1, 1 << 20);
  b.T = field_int(o, "seq", "batch", 1, 1 << 20);
  const ShardLayout& L = m.shard_layout;
  b.span = m.sharded ? std::min(b.T + c.ttt, b.T * L.sp - b.T * L.spIdx) : b.T;
  const int64_t N = b.B * b.T, NS = b.B * b.span, H = c.hidden;
  const std::string rows = m.sharded ? "batch·span = " + std::to_string(NS) + ", span = " + std::to_string(b.span) +
                                           " positions of this sequence-parallel rank"
                                     : "batch·seq = " + std::to_string(NS);
  check_scratch(env, c, N);
  auto ids = need_typed<int32_t>(env, o.Get("ids"), "batch.ids (" + rows + ")", NS);
  auto aux = need_typed<float>(env, o.Get("aux"), "batch.aux (batch·seq·3·hidden = " + std::to_string(N * 3 * H) + ")",
                               N * 3 * H);
  auto last = need_typed<float>(env, o.Get("last"), "batch.last ((" + rows + ")·hidden)", NS * H);
  auto mask = need_typed<uint8_t>(env, o.Get("mask"), "batch.mask (" + rows + ")", NS);
  b.ids.assign(ids.Data(), ids.Data() + NS);
  b.aux.assign(aux.Data(), aux.Data() + N * 3 * H);
  b.last.assign(last.Data(), last.Data() + NS * H);
  b.mask.assign(mask.Data(), mask.Data() + NS);
  Napi::Value lv = o.Get("lengths");
  if (!lv.IsUndefined() && !lv.IsNull()) {
    auto lengths = need_typed<int32_t>(env, lv, "batch.lengths (one per sample: batch = " + std::to_string(b.B) + ")", b.B);
    b.lengths.assign(lengths.Data(), lengths.Data() + b.B);
  }
  return b;
}

}  // namespace dw
