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

// Digests of consecutive blocks data[0, lens[0]), then the next lens[1] bytes, … into out.
void hash_blocks(const uint8_t* data, const std::vector<int64_t>& lens, std::vector<uint8_t>& out) {
  const int64_t n = int64_t(lens.size());
  std::vector<int64_t> off(size_t(n) + 1, 0);
  for (int64_t b = 0; b < n; b++) off[size_t(b) + 1] = off[size_t(b)] + lens[size_t(b)];
  out.resize(size_t(n) * BLAKE3_OUT_LEN);
  parallel_chunks(n, [&](int64_t b) {
    blake3_hasher h;
    blake3_hasher_init(&h);
    blake3_hasher_update(&h, data + off[size_t(b)], size_t(lens[size_t(b)]));
    blake3_hasher_finalize(&h, out.data() + size_t(b) * BLAKE3_OUT_LEN, BLAKE3_OUT_LEN);
  });
}

class Blake3BlocksWorker : public PromiseWorker {
 public:
  Blake3BlocksWorker(Napi::Env env, Napi::Uint8Array data, std::vector<int64_t> lens)
      : PromiseWorker(env, "blake3Blocks"), keep_(Napi::Persistent(data)), data_(data.Data()), lens_(std::move(lens)) {}

 protected:
  void run() override { hash_blocks(data_, lens_, out_); }
  Napi::Value result(Napi::Env env) override {
    return Napi::Buffer<uint8_t>::Copy(env, out_.data(), out_.size());
  }

 private:
  Napi::Reference<Napi::Uint8Array> keep_;  // the bytes stay alive while the worker reads them
  const uint8_t* data_;
  std::vector<int64_t> lens_;
  std::vector<uint8_t> out_;
};

std::vector<int64_t> need_lens(Napi::Env env, Napi::Uint8Array data, Napi::Value v) {
  if (!v.IsArray()) throw_invalid(env, "lens must be an array of block lengths");
  auto arr = v.As<Napi::Array>();
  std::vector<int64_t> lens(arr.Length());
  int64_t total = 0;
  const int64_t cap = int64_t(data.ByteLength());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    lens[i] = need_int(env, arr.Get(i), "lens[" + std::to_string(i) + "]", 0, cap);
    total += lens[i];
    if (total > cap) throw_invalid(env, "the block lengths add up to more than data's " + std::to_string(cap) + " bytes");
  }
  return lens;
}

// blake3Blocks(data: Uint8Array, lens: number[]) → Promise<Buffer of 32 × lens.length bytes>.
// The blocks are data[0, lens[0]), then the next lens[1] bytes, …; they must fit in data.
Napi::Value Blake3Blocks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto data = need_typed<uint8_t>(env, info[0], "data", -1);
  auto* w = new Blake3BlocksWorker(env, data, need_lens(env, data, info[1]));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// blake3BlocksSync: the same, on the calling thread. For spans small enough (the JS side caps
// them at 1 MiB, well under a millisecond) that the hop to the libuv pool costs more than the hash.
Napi::Value Blake3BlocksSync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto data = need_typed<uint8_t>(env, info[0], "data", -1);
  std::vector<uint8_t> out;
  hash_blocks(data.Data(), need_lens(env, data, info[1]), out);
  return Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size());
}

}  // namespace

void registerHash(Napi::Env env, Napi::Object exports) {
  exports.Set("blake3Blocks", Napi::Function::New(env, Blake3Blocks, "blake3Blocks"));
  exports.Set("blake3BlocksSync", Napi::Function::New(env, Blake3BlocksSync, "blake3BlocksSync"));
}

}  // namespace dw
