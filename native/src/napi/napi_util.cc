#include "napi/napi_util.h"

#include <cmath>
#include <cstring>

#include "collectives/comm.h"

namespace dw {

void throw_invalid(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, "INVALID_ARGUMENT"));
  throw e;
}

void throw_native(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, "NATIVE"));
  throw e;
}

Napi::Object need_object(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsObject() || v.IsArray() || v.IsTypedArray()) throw_invalid(env, what + " must be an object");
  return v.As<Napi::Object>();
}

int64_t need_int(Napi::Env env, Napi::Value v, const std::string& what, int64_t lo, int64_t hi) {
  if (!v.IsNumber()) throw_invalid(env, what + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d)
    throw_invalid(env, what + " must be an integer (got " + std::to_string(d) + ")");
  if (d < double(lo) || d > double(hi))
    throw_invalid(env, what + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "] (got " +
                           std::to_string(int64_t(d)) + ")");
  return int64_t(d);
}

int64_t field_int(Napi::Object o, const char* key, const std::string& what, int64_t lo, int64_t hi) {
  return need_int(o.Env(), o.Get(key), what + "." + key, lo, hi);
}

double need_number(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsNumber()) throw_invalid(env, what + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throw_invalid(env, what + " must be finite");
  return d;
}

double field_number(Napi::Object o, const char* key, const std::string& what) {
  return need_number(o.Env(), o.Get(key), what + "." + key);
}

static bool absent(Napi::Object o, const char* key) {
  if (!o.Has(key)) return true;
  Napi::Value v = o.Get(key);
  return v.IsUndefined() || v.IsNull();
}

RopeScaling field_rope_scaling(Napi::Object o, const std::string& what) {
  RopeScaling s;
  if (absent(o, "ropeScaling")) return s;
  const std::string w = what + ".ropeScaling";
  Napi::Object r = need_object(o.Env(), o.Get("ropeScaling"), w);
  Napi::Value t = r.Get("type");
  const std::string type = t.IsString() ? t.As<Napi::String>().Utf8Value() : "";
  if (type == "linear") s.kind = 1;
  else if (type == "llama3") s.kind = 2;
  else throw_invalid(o.Env(), w + ".type must be 'linear' or 'llama3'");
  s.factor = field_number(r, "factor", w);
  if (s.kind == 2) {
    if (!absent(r, "lowFreqFactor")) s.low_freq_factor = field_number(r, "lowFreqFactor", w);
    if (!absent(r, "highFreqFactor")) s.high_freq_factor = field_number(r, "highFreqFactor", w);
    if (!absent(r, "originalMaxPositionEmbeddings"))
      s.original_max_position = double(field_int(r, "originalMaxPositionEmbeddings", w, 1, 1000000000));
  }
  const std::string err = s.check();
  if (!err.empty()) throw_invalid(o.Env(), w + ": " + err);
  return s;
}

int64_t field_head_dim(Napi::Object o, const std::string& what) {
  if (absent(o, "headDim")) return 0;
  const int64_t d = field_int(o, "headDim", what, 0, 65536);
  if (d % 2 != 0) throw_invalid(o.Env(), what + ".headDim must be even (got " + std::to_string(d) + ")");
  return d;
}

bool field_bool(Napi::Object o, const char* key, const std::string& what, bool def) {
  if (!o.Has(key) || o.Get(key).IsUndefined()) return def;
  Napi::Value v = o.Get(key);
  if (!v.IsBoolean()) throw_invalid(o.Env(), what + "." + key + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

template <typename T>
struct TypeOf;
template <>
struct TypeOf<float> {
  static constexpr napi_typedarray_type type = napi_float32_array;
  static constexpr const char* name = "Float32Array";
};
template <>
struct TypeOf<int32_t> {
  static constexpr napi_typedarray_type type = napi_int32_array;
  static constexpr const char* name = "Int32Array";
};
template <>
struct TypeOf<uint16_t> {
  static constexpr napi_typedarray_type type = napi_uint16_array;
  static constexpr const char* name = "Uint16Array";
};
template <>
struct TypeOf<uint8_t> {
  static constexpr napi_typedarray_type type = napi_uint8_array;
  static constexpr const char* name = "Uint8Array";
};

template <typename T>
Napi::TypedArrayOf<T> need_typed(Napi::Env env, Napi::Value v, const std::string& what, int64_t expected) {
  if (v.IsUndefined() || v.IsNull()) throw_invalid(env, "missing " + what);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != TypeOf<T>::type)
    throw_invalid(env, what + " must be a " + TypeOf<T>::name);
  auto a = v.As<Napi::TypedArrayOf<T>>();
  if (expected >= 0 && int64_t(a.ElementLength()) != expected)
    throw_invalid(env, what + " has " + std::to_string(a.ElementLength()) + " elements, expected " +
                           std::to_string(expected));
  return a;
}

template Napi::TypedArrayOf<float> need_typed<float>(Napi::Env, Napi::Value, const std::string&, int64_t);
template Napi::TypedArrayOf<int32_t> need_typed<int32_t>(Napi::Env, Napi::Value, const std::string&, int64_t);
template Napi::TypedArrayOf<uint8_t> need_typed<uint8_t>(Napi::Env, Napi::Value, const std::string&, int64_t);
template Napi::TypedArrayOf<uint16_t> need_typed<uint16_t>(Napi::Env, Napi::Value, const std::string&, int64_t);

Napi::Float32Array to_f32(Napi::Env env, const float* p, size_t n) {
  auto a = Napi::Float32Array::New(env, n);
  if (n) std::memcpy(a.Data(), p, n * sizeof(float));
  return a;
}

Napi::Int32Array to_i32(Napi::Env env, const int32_t* p, size_t n) {
  auto a = Napi::Int32Array::New(env, n);
  if (n) std::memcpy(a.Data(), p, n * sizeof(int32_t));
  return a;
}

int64_t first_nonfinite(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (!std::isfinite(p[i])) return i;
  return -1;
}

void PromiseWorker::Execute() {
  try {
    run();
  } catch (const InvalidArg& e) {
    code_ = "INVALID_ARGUMENT";
    SetError(e.what());
  } catch (const std::invalid_argument& e) {
    code_ = "INVALID_ARGUMENT";
    SetError(e.what());
  } catch (const CommError& e) {
    code_ = "COLLECTIVE";
    SetError(e.what());
  } catch (const std::bad_alloc&) {
    SetError("out of memory");
  } catch (const std::exception& e) {
    SetError(e.what());
  } catch (...) {
    SetError("unknown native error");
  }
}

void PromiseWorker::OnOK() {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  done();
  try {
    deferred_.Resolve(result(env));
  } catch (const Napi::Error& e) {
    deferred_.Reject(e.Value());
  }
}

void PromiseWorker::OnError(const Napi::Error& e) {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  done();
  Napi::Error err = Napi::Error::New(env, e.Message());
  err.Set("code", Napi::String::New(env, code_));
  deferred_.Reject(err.Value());
}

}  // namespace dw
