// device_check() (cuda/device.h): every kernel on device 0 against the CPU step's layer
// function for the same math, the cuBLAS GEMMs through col_major_gemm, NCCL on one rank and
// the host-staged collectives of two ranks on one GPU, both behind the Comm interface.
// Sizes are larger than host_check's so that rows span many threads and blocks.
#include <cuda_runtime.h>

#include <stdexcept>
#include <thread>

#include "collectives/comm_staged.h"
#include "collectives/comm_thread.h"
#include "cuda/check_util.h"
#include "cuda/cuda_ops.h"
#include "cuda/comm_check.h"
#include "cuda/device.h"
#include "cuda/gemm_map.h"
#include "cuda/kernels.h"
#include "cuda/libs.h"
#include "cuda/nccl_comm.h"
#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/blas.h"
#include "kernels/convert.h"
#include "kernels/loss.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"

namespace dw::cuda {
namespace {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Failure(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}
void ok(const std::string& launch, const char* what) {
  if (!launch.empty()) throw Failure(std::string(what) + ": " + launch);
}

// A device buffer of n T's (freed with it); put/get copy whole buffers on the default stream.
template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) { ok(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)), "cudaMalloc"); ok(cudaMemset(p, 0, std::max<size_t>(1, n) * sizeof(T)), "cudaMemset"); }
  explicit Dev(const std::vector<T>& h) : Dev(h.size()) { put(h); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void put(const std::vector<T>& h) { ok(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), "copy to the device"); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    ok(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), "copy from the device");
    return h;
  }
};

void check_norm_rope_swiglu(uint64_t seed, std::vector<BodyCheck>& out) {
  {
    const int64_t R = 33, H = 1000;
    const double eps = 1e-6;
    const Vec x = randn(R * H, seed, 1), w = randn(H, seed, 2, 0.3, 1.0), dy = randn(R * H, seed, 3);
    Vec y(R * H), rs(R), dx(R * H), dwv(H, 0.0f);
    dw::rmsnorm_forward(R, H, x.data(), H, w.data(), eps, y.data(), H, rs.data());
    dw::rmsnorm_backward(R, H, x.data(), H, w.data(), rs.data(), dy.data(), H, dx.data(), H, false, dwv.data());
    Dev<float> dX(x), dW(w), dDy(dy), dY(R * H), dRs(R), dDx(R * H), dDw(H);
    ok(rmsnorm_forward(nullptr, R, H, dX.p, dW.p, eps, dY.p, dRs.p), "rmsnorm_forward");
    ok(rmsnorm_backward(nullptr, R, H, dX.p, dW.p, dRs.p, dDy.p, dDx.p, dDw.p), "rmsnorm_backward");
    Diff f, b;
    f.add(dY.get().data(), y.data(), R * H);
    f.add(dRs.get().data(), rs.data(), R);
    b.add(dDx.get().data(), dx.data(), R * H);
    b.add(dDw.get().data(), dwv.data(), H);
    out.push_back(f.done("rmsnorm.forward", kTol));
    out.push_back(b.done("rmsnorm.backward", kTol));
  }
  {
    const int64_t R = 20, nh = 4, d = 64, half = d / 2, ld = nh * d, P = 128;
    RopeTable table;
    table.ensure(P, d, 10000.0);
    std::vector<int32_t> pos(R);
    SplitMix64 g(seed);
    for (auto& p : pos) p = int32_t(g.next() % P);
    const Vec cos(table.cos_row(0), table.cos_row(0) + P * half), sin(table.sin_row(0), table.sin_row(0) + P * half);
    const Vec x = randn(R * ld, seed, 4);
    Dev<float> dCos(cos), dSin(sin);
    Dev<int32_t> dPos(pos);
    for (const bool inverse : {false, true}) {
      Vec cpu = x;
      dw::rope_apply(R, pos.data(), cpu.data(), ld, nh, d, table, inverse);
      Dev<float> dX(x);
      ok(rope_apply(nullptr, R, dPos.p, dX.p, ld, nh, d, dCos.p, dSin.p, inverse), "rope_apply");
      Diff df;
      df.add(dX.get().data(), cpu.data(), R * ld);
      out.push_back(df.done(inverse ? "rope.inverse" : "rope.forward", kTol));
    }
  }
  {
    const int64_t R = 17, I = 1500;
    const Vec gu = randn(R * 2 * I, seed, 5, 2.0), da = randn(R * I, seed, 6);
    Vec act(R * I), dgu(R * 2 * I);
    dw::swiglu_forward(R, I, gu.data(), 2 * I, act.data(), I);
    dw::swiglu_backward(R, I, gu.data(), 2 * I, da.data(), I, dgu.data(), 2 * I);
    Dev<float> dGu(gu), dDa(da), dAct(R * I), dDgu(R * 2 * I);
    ok(swiglu_forward(nullptr, R, I, dGu.p, dAct.p), "swiglu_forward");
    ok(swiglu_backward(nullptr, R, I, dGu.p, dDa.p, dDgu.p), "swiglu_backward");
    Diff f, b;
    f.add(dAct.get().data(), act.data(), R * I);
    b.add(dDgu.get().data(), dgu.data(), R * 2 * I);
    out.push_back(f.done("swiglu.forward", kTol));
    out.push_back(b.done("swiglu.backward", kTol));
  }
}

void check_convert_embed_adamw(uint64_t seed, std::vector<BodyCheck>& out) {
  {
    const std::vector<uint16_t> all = every_bf16();
    const int64_t n = int64_t(all.size());
    Vec wide(all.size());
    dw::bf16_to_f32(all.data(), wide.data(), n);
    Dev<uint16_t> dAll(all);
    Dev<float> dWide(all.size());
    ok(bf16_to_f32(nullptr, dAll.p, dWide.p, n), "bf16_to_f32");
    out.push_back(bits_check("bf16.to_f32", dWide.get().data(), wide.data(), n));
    const Vec f = bf16_rounding_inputs(seed, 1 << 16);
    std::vector<uint16_t> cpu(f.size());
    dw::f32_to_bf16(f.data(), cpu.data(), int64_t(f.size()));
    Dev<float> dF(f);
    Dev<uint16_t> dB(f.size());
    ok(f32_to_bf16(nullptr, dF.p, dB.p, int64_t(f.size())), "f32_to_bf16");
    out.push_back(bits_check("bf16.from_f32", dB.get().data(), cpu.data(), int64_t(f.size())));
  }
  {
    const int64_t V = 50, H = 64, R = 30;
    const Vec E = randn(V * H, seed, 8);
    std::vector<int32_t> tok(R);
    for (int64_t r = 0; r < R; r++) tok[r] = int32_t((r * 7 + 3) % V);
    Vec want(R * H);
    for (int64_t r = 0; r < R; r++) std::copy_n(E.data() + tok[r] * H, H, want.data() + r * H);  // DraftModel::embed_rows
    Dev<float> dE(E), dOut(R * H);
    Dev<int32_t> dTok(tok);
    ok(embed_gather(nullptr, dTok.p, R, dE.p, H, dOut.p), "embed_gather");
    Diff d;
    d.add(dOut.get().data(), want.data(), R * H);
    out.push_back(d.done("embed.gather", 0));
  }
  {
    const int64_t n = 100'000;
    const AdamWParams p{1e-3, 0.9, 0.95, 1e-8, 0.01};
    Vec w = randn(n, seed, 9), m(n, 0.0f), v(n, 0.0f);
    Dev<float> dW(w), dM(n), dV(n), dG(n);
    Dev<double> dSs(1);
    Diff dn, du;
    for (int64_t t = 1; t <= 3; t++) {
      const Vec g = randn(n, seed, 100 + uint64_t(t), 0.2);
      dG.put(g);
      dSs.put({0.0});
      ok(sum_squares(nullptr, n, dG.p, dSs.p), "sum_squares");
      const double ss = dSs.get()[0], ss_cpu = dw::sum_squares(n, g.data());
      dn.add(ss, ss_cpu);
      const float c = clip_coef(std::sqrt(ss_cpu), 1.0);
      dw::adamw_update(n, w.data(), g.data(), m.data(), v.data(), p, t, c);
      ok(adamw_update(nullptr, n, dW.p, dG.p, dM.p, dV.p, adamw_step(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, t, c)), "adamw_update");
    }
    du.add(dW.get().data(), w.data(), n);
    du.add(dM.get().data(), m.data(), n);
    du.add(dV.get().data(), v.data(), n);
    out.push_back(dn.done("grad.sum_squares", 1e-12));
    out.push_back(du.done("adamw.update", kTol));
  }
}

// C = op(A)·op(B) through col_major_gemm and cuBLAS (handle on the default stream).
void device_gemm(const CublasApi& b, void* h, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const ColMajorGemm g = col_major_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  const int r = b.sgemm(h, g.transa == Trans::T ? kOpT : kOpN, g.transb == Trans::T ? kOpT : kOpN, int(g.m), int(g.n), int(g.k),
                        &g.alpha, static_cast<const float*>(g.a), int(g.lda), static_cast<const float*>(g.b), int(g.ldb), &g.beta,
                        static_cast<float*>(g.c), int(g.ldc));
  if (r != 0) throw Failure("cublasSgemm_v2 returned status " + std::to_string(r));
}

void check_gemms(const CublasApi& b, void* h, uint64_t seed, std::vector<BodyCheck>& out) {
  const int64_t M = 257, N = 129, K = 65;
  for (const GemmKind& kind : kGemmKinds) {
    const GemmCase c(kind.ta, kind.tb, M, N, K, seed);
    Dev<float> dA(c.A), dB(c.B), dC(c.C0);
    device_gemm(b, h, c.ta, c.tb, M, N, K, c.alpha, dA.p, c.lda, dB.p, c.ldb, c.beta, dC.p, c.ldc);
    Diff d;
    d.add(dC.get().data(), c.want.data(), M * c.ldc);
    out.push_back(d.done(std::string("cublas.gemm_") + kind.suffix, kTol));
  }
  // bf16 inputs, fp32 accumulation and output (cublasGemmEx), against fp32 GEMM of the same
  // bf16-rounded values: the products are exact in fp32, so only the summation order differs.
  const Vec A = randn(M * K, seed, 43), B = randn(N * K, seed, 44);
  std::vector<uint16_t> a16(A.size()), b16(B.size());
  dw::f32_to_bf16(A.data(), a16.data(), int64_t(A.size()));
  dw::f32_to_bf16(B.data(), b16.data(), int64_t(B.size()));
  Vec Aw(A.size()), Bw(B.size()), c(M * N);
  dw::bf16_to_f32(a16.data(), Aw.data(), int64_t(A.size()));
  dw::bf16_to_f32(b16.data(), Bw.data(), int64_t(B.size()));
  dw::gemm_nt(M, N, K, 1.0f, Aw.data(), K, Bw.data(), K, 0.0f, c.data(), N);
  Dev<uint16_t> dA(a16), dB(b16);
  Dev<float> dC(M * N);
  const ColMajorGemm g = col_major_gemm(false, true, M, N, K, 1.0f, dA.p, K, dB.p, K, 0.0f, dC.p, N);
  const int r = b.gemm_ex(h, g.transa == Trans::T ? kOpT : kOpN, g.transb == Trans::T ? kOpT : kOpN, int(g.m), int(g.n), int(g.k), &g.alpha,
                          g.a, kR16BF, int(g.lda), g.b, kR16BF, int(g.ldb), &g.beta, g.c, kR32F, int(g.ldc), kCompute32F, kGemmDefault);
  if (r != 0) throw Failure("cublasGemmEx returned status " + std::to_string(r));
  Diff d;
  d.add(dC.get().data(), c.data(), M * N);
  out.push_back(d.done("cublas.gemm_ex_bf16", 1e-5));
}

void check_loss(uint64_t seed, std::vector<BodyCheck>& out) {
  {
    const int64_t n = 8, H = 64, V = 3000, Vd = 500;
    const Vec last = randn(n * H, seed, 10), Wt = randn(V * H, seed, 11, 0.5);
    std::vector<int32_t> d2t(Vd), t2d(V, -1), tgt(n), tgt_dev;
    for (int64_t j = 0; j < Vd; j++) { d2t[j] = int32_t(j * 6 + (j % 5)); t2d[d2t[j]] = int32_t(j); }
    const std::vector<uint8_t> need(n, 1);
    Vec p(n * Vd), z(n * V), scratch;
    dw::target_distribution(n, need.data(), last.data(), H, Wt.data(), V, d2t.data(), t2d.data(), Vd, p.data(), tgt.data(), scratch);
    dw::gemm_nt(n, V, H, 1.0f, last.data(), H, Wt.data(), H, 0.0f, z.data(), V);
    Dev<float> dZ(z), dP(n * Vd);
    Dev<int32_t> dD2t(d2t), dT2d(t2d), dTgt(n);
    ok(target_distribution(nullptr, n, dZ.p, V, dD2t.p, dT2d.p, Vd, dP.p, dTgt.p), "target_distribution");
    Diff d;
    d.add(dP.get().data(), p.data(), n * Vd);
    tgt_dev = dTgt.get();
    for (int64_t r = 0; r < n; r++) if (tgt_dev[r] != tgt[r]) d.add(1.0, 0.0);
    out.push_back(d.done("target.argmax+softmax", kTol));
  }
  {
    const int64_t n = 8, Vd = 3000;
    const Vec logits = randn(n * Vd, seed, 12, 3.0);
    Vec p = randn(2 * Vd, seed, 13);
    for (int64_t r = 0; r < 2; r++) {
      float s = 0;
      for (int64_t j = 0; j < Vd; j++) s += (p[r * Vd + j] = std::exp(p[r * Vd + j]));
      for (int64_t j = 0; j < Vd; j++) p[r * Vd + j] /= s;
    }
    std::vector<int32_t> prow(n), tgt(n);
    Vec w(n);
    for (int64_t r = 0; r < n; r++) { prow[r] = int32_t(r % 2); tgt[r] = int32_t((r * 37) % Vd); w[r] = 0.25f + 0.1f * float(r); }
    Vec grad = logits;
    std::vector<double> ce(n), hit(n);
    dw::soft_cross_entropy(n, Vd, grad.data(), p.data(), prow.data(), w.data(), tgt.data(), 0.7f, ce.data(), hit.data());
    Dev<float> dL(logits), dP(p), dW(w);
    Dev<int32_t> dProw(prow), dTgt(tgt);
    Dev<double> dCe(n), dHit(n);
    ok(soft_cross_entropy(nullptr, n, Vd, dL.p, dP.p, dProw.p, dW.p, dTgt.p, 0.7f, dCe.p, dHit.p), "soft_cross_entropy");
    Diff dl, dg;
    const auto gce = dCe.get(), ghit = dHit.get();
    for (int64_t r = 0; r < n; r++) { dl.add(gce[r], ce[r]); if (ghit[r] != hit[r]) dl.add(1.0, 0.0); }
    dg.add(dL.get().data(), grad.data(), n * Vd);
    out.push_back(dl.done("soft_ce.loss+hit", kTol));
    out.push_back(dg.done("soft_ce.grad", kTol));
  }
}

// One head with TTT extras: scores and products on cuBLAS, the masked softmax and the score
// gradients in the kernels, the extras' few dot products on the host; against kernels/attention.cc.
void check_attention(const CublasApi& b, void* h, uint64_t seed, std::vector<BodyCheck>& out) {
  AttnShape shape;
  shape.Tq = 100; shape.q0 = 20; shape.d = 64; shape.nextra = 2; shape.scale = 1.0f / 8.0f;
  const AttnCase c(shape, seed);
  const AttnShape& sh = c.sh;
  const int64_t T = c.T, d = c.d, ne = c.ne, Tq = c.Tq;
  const Vec &q = c.q, &k = c.k, &v = c.v, &dout = c.dout, &o = c.o, &lse = c.lse, &dq = c.dq;
  const std::vector<Vec> &ek = c.ek, &ev = c.ev;

  Vec E(Tq * ne);
  for (int64_t i = 0; i < Tq; i++)
    for (int64_t j = 0; j < ne; j++) E[i * ne + j] = sh.scale * dot(q.data() + i * d, ek[j].data() + i * d, d);
  Dev<float> dQ(q), dK(k), dV(v), dS(Tq * T), dE(E), dLse(Tq), dO(Tq * d), dDo(dout), dDp(Tq * T), dDq(Tq * d), dDelta(Tq);
  device_gemm(b, h, false, true, Tq, T, d, sh.scale, dQ.p, d, dK.p, d, 0.0f, dS.p, T);  // S = scale·Q·Kᵀ
  ok(attention_softmax(nullptr, Tq, sh.q0, dS.p, T, dE.p, ne, dLse.p), "attention_softmax");
  device_gemm(b, h, false, false, Tq, d, T, 1.0f, dS.p, T, dV.p, d, 0.0f, dO.p, d);     // O = P·V
  Vec go = dO.get();
  const Vec a = dE.get();
  for (int64_t i = 0; i < Tq; i++)
    for (int64_t j = 0; j < ne; j++)
      for (int64_t c = 0; c < d; c++) go[i * d + c] += a[i * ne + j] * ev[j][i * d + c];
  Diff f;
  f.add(go.data(), o.data(), Tq * d);
  f.add(dLse.get().data(), lse.data(), Tq);
  out.push_back(f.done("attention.forward(ttt)", kTol));

  Vec delta(Tq);
  for (int64_t i = 0; i < Tq; i++) delta[i] = dot(dout.data() + i * d, o.data() + i * d, d);
  dDelta.put(delta);
  device_gemm(b, h, false, true, Tq, T, d, 1.0f, dDo.p, d, dV.p, d, 0.0f, dDp.p, T);  // dP = dO·Vᵀ
  ok(attention_dscores(nullptr, Tq, sh.q0, dS.p, dDp.p, T, dDelta.p, sh.scale), "attention_dscores");
  device_gemm(b, h, false, false, Tq, d, T, 1.0f, dDp.p, T, dK.p, d, 0.0f, dDq.p, d);  // dQ = dS·K
  Vec gdq = dDq.get();
  for (int64_t i = 0; i < Tq; i++)
    for (int64_t j = 0; j < ne; j++) {
      const float ds = attn_dscore(a[i * ne + j], dot(dout.data() + i * d, ev[j].data() + i * d, d), delta[i], sh.scale);
      for (int64_t c = 0; c < d; c++) gdq[i * d + c] += ds * ek[j][i * d + c];
    }
  Diff bwd;
  bwd.add(gdq.data(), dq.data(), Tq * d);
  out.push_back(bwd.done("attention.backward(ttt) dq", 1e-4));
}

// Device memory for comm_check (freed with it).
struct DevMem {
  std::vector<void*> blocks;
  DevMem() = default;
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
  ~DevMem() { for (void* p : blocks) cudaFree(p); }
  template <typename T>
  T* alloc(size_t n) {
    void* p = nullptr;
    ok(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)), "cudaMalloc");
    blocks.push_back(p);
    return static_cast<T*>(p);
  }
  template <typename T>
  void put(T* dst, const std::vector<T>& h) { ok(cudaMemcpy(dst, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), "copy to the device"); }
  template <typename T>
  std::vector<T> get(const T* src, size_t n) {
    std::vector<T> h(n);
    ok(cudaMemcpy(h.data(), src, n * sizeof(T), cudaMemcpyDeviceToHost), "copy from the device");
    return h;
  }
};

// Each rank of a ThreadComm world as a thread on GPU 0 with its own stream, running `body`
// with its device communicator; the worst result of each check over the ranks.
template <typename F>
void on_gpu0_ranks(int n, const std::string& name, std::vector<BodyCheck>& out, F body) {
  auto world = makeThreadWorld(n);
  std::vector<std::vector<BodyCheck>> per(static_cast<size_t>(n));
  std::vector<std::thread> ts;
  for (int r = 0; r < n; r++) {
    std::vector<BodyCheck>* slot = &per[size_t(r)];
    std::shared_ptr<Comm> host = world[size_t(r)];
    ts.emplace_back([slot, host, &name, &body] {
      cudaStream_t st = nullptr;
      try {
        ok(cudaSetDevice(0), "cudaSetDevice");
        ok(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "cudaStreamCreate");
        *slot = body(host, static_cast<Stream>(st));
      } catch (const std::exception& e) {
        slot->push_back({name, std::numeric_limits<double>::infinity(), 0, 0, e.what()});
      }
      if (st) cudaStreamDestroy(st);
    });
  }
  for (auto& t : ts) t.join();
  for (const BodyCheck& b : worst_of(per)) out.push_back(b);
}

// NCCL behind the Comm interface on one rank (every collective is then exact), and two ranks
// on the one GPU, for which makeDeviceComm must pick host staging over the host Comm.
void check_device_comms(uint64_t seed, std::vector<BodyCheck>& out) {
  const auto timeout = std::chrono::seconds(60);
  on_gpu0_ranks(1, "nccl(1 rank)", out, [&](std::shared_ptr<Comm> host, Stream st) {
    auto c = makeNcclComm(host, st, timeout);
    DevMem mem;
    return comm_check("nccl(1 rank)", *c, mem, seed, 0);
  });
  on_gpu0_ranks(2, "comm.staged(2 ranks, one GPU)", out, [&](std::shared_ptr<Comm> host, Stream st) {
    DeviceCommKind kind = DeviceCommKind::Nccl;
    auto c = makeDeviceComm(host, st, timeout, &kind);
    DevMem mem;
    std::vector<BodyCheck> r = comm_check("comm.staged(2 ranks, one GPU)", *c, mem, seed, 0);
    const bool staged = kind == DeviceCommKind::Staged;
    r.push_back({"comm.pick(2 ranks, one GPU: staged)", staged ? 0.0 : std::numeric_limits<double>::infinity(), 0, 1, staged ? "" : "picked NCCL for two ranks of one GPU"});
    return r;
  });
}

}  // namespace

std::vector<BodyCheck> device_check(uint64_t seed, std::string* error) {
  const DeviceInfo info = device_info();
  if (info.gpus.empty()) { *error = info.error; return {}; }
  std::string why;
  const CublasApi* b = cublas(&why);
  if (!b) { *error = why; return {}; }
  std::vector<BodyCheck> out;
  void* h = nullptr;
  try {
    ok(cudaSetDevice(0), "cudaSetDevice");
    if (b->create(&h) != 0) throw Failure("cublasCreate_v2 failed");
    check_norm_rope_swiglu(seed, out);
    check_convert_embed_adamw(seed, out);
    check_gemms(*b, h, seed, out);
    check_loss(seed, out);
    check_attention(*b, h, seed, out);
    check_device_comms(seed, out);
    check_resident_step(seed, out);
  } catch (const std::exception& e) {
    *error = e.what();
  }
  if (h) b->destroy(h);
  return out;
}

}  // namespace dw::cuda
