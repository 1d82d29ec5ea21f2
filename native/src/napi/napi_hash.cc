// N-API glue of the block checksums (src/store/checksum.ts): blake3Blocks hashes consecutive
// blocks of one buffer with BLAKE3 (native/third_party/blake3), on the libuv pool, the blocks
// spread over the kernel pool (each block is hashed by one thread, so the digests do not depend
// on the thread count). Declared in src/native/addon.ts.
#include <napi.h>

#include <string>
#include <vector>

#include "blake3.h"
#include "kernels/parallel.h"
#include "napi/napi_util.h"

namespace dw {

namespace {

class Blake3BlocksWorker : public PromiseWorker {
 public:
  Blake3BlocksWorker(Napi::Env env, Napi::Uint8Array data, std::vector<int64_t> lens)
      : PromiseWorker(env, "blake3Blocks"), keep_(Napi::Persistent(data)), data_(data.Data()), lens_(std::move(lens)) {}

 protected:
  void run() override {
    const int64_t n = int64_t(lens_.size());
    std::vector<int64_t> off(size_t(n) + 1, 0);
    for (int64_t b = 0; b < n; b++) off[size_t(b) + 1] = off[size_t(b)] + lens_[size_t(b)];
    out_.resize(size_t(n) * BLAKE3_OUT_LEN);
    parallel_chunks(n, [&](int64_t b) {
      blake3_hasher h;
      blake3_hasher_init(&h);
      blake3_hasher_update(&h, data_ + off[size_t(b)], size_t(lens_[size_t(b)]));
      blake3_hasher_finalize(&h, out_.data() + size_t(b) * BLAKE3_OUT_LEN, BLAKE3_OUT_LEN);
    });
  }
  Napi::Value result(Napi::Env env) override {
    return Napi::Buffer<uint8_t>::Copy(env, out_.data(), out_.size());
  }

 private:
  Napi::Reference<Napi::Uint8Array> keep_;  // the bytes stay alive while the worker reads them
  const uint8_t* data_;
  std::vector<int64_t> lens_;
  std::vector<uint8_t> out_;
};

// blake3Blocks(data: Uint8Array, lens: number[]) → Promise<Buffer of 32 × lens.length bytes>.
// The blocks are data[0, lens[0]), then the next lens[1] bytes, …; they must fit in data.
Napi::Value Blake3Blocks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto data = need_typed<uint8_t>(env, info[0], "data", -1);
  if (!info[1].IsArray()) throw_invalid(env, "lens must be an array of block lengths");
  auto arr = info[1].As<Napi::Array>();
  std::vector<int64_t> lens(arr.Length());
  int64_t total = 0;
  const int64_t cap = int64_t(data.ByteLength());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    lens[i] = need_int(env, arr.Get(i), "lens[" + std::to_string(i) + "]", 0, cap);
    total += lens[i];
    if (total > cap) throw_invalid(env, "the block lengths add up to more than data's " + std::to_string(cap) + " bytes");
  }
  auto* w = new Blake3BlocksWorker(env, data, std::move(lens));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

}  // namespace

void registerHash(Napi::Env env, Napi::Object exports) {
  exports.Set("blake3Blocks", Napi::Function::New(env, Blake3Blocks, "blake3Blocks"));
}

}  // namespace dw
