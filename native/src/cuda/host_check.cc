#include "cuda/host_check.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <thread>
#include <vector>

#include "collectives/comm_staged.h"
#include "collectives/comm_thread.h"
#include "cuda/comm_check.h"

#include "cuda/bodies.h"
#include "cuda/check_util.h"
#include "cuda/gemm_map.h"
#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/blas.h"
#include "kernels/convert.h"
#include "kernels/loss.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "step/host_ops.h"
#include "step/step_check.h"

namespace dw::cuda {
namespace {

void check_rmsnorm(uint64_t seed, std::vector<BodyCheck>& out) {
  const int64_t R = 9, H = 80;
  const double eps = 1e-6;
  const Vec x = randn(R * H, seed, 1), w = randn(H, seed, 2, 0.3, 1.0), dy = randn(R * H, seed, 3);
  Vec y_cpu(R * H), rs_cpu(R), dx_cpu(R * H), dw_cpu(H, 0.0f);
  rmsnorm_forward(R, H, x.data(), H, w.data(), eps, y_cpu.data(), H, rs_cpu.data());
  rmsnorm_backward(R, H, x.data(), H, w.data(), rs_cpu.data(), dy.data(), H, dx_cpu.data(), H, false, dw_cpu.data());
  Vec y(R * H), rs(R), dx(R * H), dwv(H, 0.0f);
  for (int64_t r = 0; r < R; r++) {
    const float* xr = x.data() + r * H;
    const float* dyr = dy.data() + r * H;
    double ss = 0;
    float wdyx = 0;
    for (int64_t i = 0; i < H; i++) ss += double(xr[i]) * double(xr[i]);
    rs[r] = rmsnorm_rstd(ss, H, eps);
    for (int64_t i = 0; i < H; i++) {
      y[r * H + i] = rmsnorm_fwd(xr[i], w[i], rs[r]);
      wdyx += w[i] * dyr[i] * xr[i];
      dwv[i] += rmsnorm_bwd_dw(xr[i], dyr[i], rs[r]);
    }
    const float c = rmsnorm_bwd_coef(wdyx, rs[r], H);
    for (int64_t i = 0; i < H; i++) dx[r * H + i] = rmsnorm_bwd_dx(xr[i], w[i], dyr[i], rs[r], c);
  }
  Diff f, b;
  f.add(y.data(), y_cpu.data(), R * H);
  f.add(rs.data(), rs_cpu.data(), R);
  b.add(dx.data(), dx_cpu.data(), R * H);
  b.add(dwv.data(), dw_cpu.data(), H);
  out.push_back(f.done("rmsnorm.forward", kTol));
  out.push_back(b.done("rmsnorm.backward", kTol));
}

void check_rope(uint64_t seed, std::vector<BodyCheck>& out) {
  const int64_t R = 6, nh = 3, d = 16, half = d / 2, ld = nh * d;
  RopeTable table;
  table.ensure(64, d, 10000.0);
  std::vector<int32_t> pos(R);
  SplitMix64 g(seed);
  for (auto& p : pos) p = int32_t(g.next() % 64);
  const Vec x = randn(R * ld, seed, 4);
  for (const bool inverse : {false, true}) {
    Vec cpu = x, body(R * ld);
    rope_apply(R, pos.data(), cpu.data(), ld, nh, d, table, inverse);
    for (int64_t r = 0; r < R; r++)
      for (int64_t h = 0; h < nh; h++)
        for (int64_t i = 0; i < half; i++) {
          const int64_t o = r * ld + h * d + i;
          rope_pair(x[o], x[o + half], table.cos_row(pos[r])[i], table.sin_row(pos[r])[i], inverse, &body[o], &body[o + half]);
        }
    Diff df;
    df.add(body.data(), cpu.data(), R * ld);
    out.push_back(df.done(inverse ? "rope.inverse" : "rope.forward", kTol));
  }
}

void check_swiglu(uint64_t seed, std::vector<BodyCheck>& out) {
  const int64_t R = 5, I = 40;
  const Vec gu = randn(R * 2 * I, seed, 5, 2.0), da = randn(R * I, seed, 6);
  Vec act_cpu(R * I), dgu_cpu(R * 2 * I), act(R * I), dgu(R * 2 * I);
  swiglu_forward(R, I, gu.data(), 2 * I, act_cpu.data(), I);
  swiglu_backward(R, I, gu.data(), 2 * I, da.data(), I, dgu_cpu.data(), 2 * I);
  for (int64_t r = 0; r < R; r++)
    for (int64_t i = 0; i < I; i++) {
      const float gv = gu[r * 2 * I + i], uv = gu[r * 2 * I + I + i];
      act[r * I + i] = swiglu_fwd(gv, uv);
      swiglu_bwd(gv, uv, da[r * I + i], &dgu[r * 2 * I + i], &dgu[r * 2 * I + I + i]);
    }
  Diff f, b;
  f.add(act.data(), act_cpu.data(), R * I);
  b.add(dgu.data(), dgu_cpu.data(), R * 2 * I);
  out.push_back(f.done("swiglu.forward", kTol));
  out.push_back(b.done("swiglu.backward", kTol));
}

// Bit-exact: every bf16 pattern widened, and rounding of random values and the special cases.
void check_bf16(uint64_t seed, std::vector<BodyCheck>& out) {
  const std::vector<uint16_t> all = every_bf16();
  Vec wide(all.size()), body(all.size());
  dw::bf16_to_f32(all.data(), wide.data(), int64_t(all.size()));
  for (size_t i = 0; i < all.size(); i++) body[i] = bf16_to_f32(all[i]);
  out.push_back(bits_check("bf16.to_f32", body.data(), wide.data(), int64_t(all.size())));
  const Vec f = bf16_rounding_inputs(seed, 4096);
  std::vector<uint16_t> cpu(f.size()), narrow(f.size());
  dw::f32_to_bf16(f.data(), cpu.data(), int64_t(f.size()));
  for (size_t i = 0; i < f.size(); i++) narrow[i] = f32_to_bf16(f[i]);
  out.push_back(bits_check("bf16.from_f32", narrow.data(), cpu.data(), int64_t(f.size())));
}

void check_adamw(uint64_t seed, std::vector<BodyCheck>& out) {
  const int64_t n = 1000;
  const AdamWParams p{1e-3, 0.9, 0.95, 1e-8, 0.01};
  const double clip = 1.0;
  Vec w_cpu = randn(n, seed, 8), m_cpu(n, 0.0f), v_cpu(n, 0.0f);
  Vec w = w_cpu, m = m_cpu, v = v_cpu;
  Diff d;
  for (int64_t t = 1; t <= 3; t++) {
    const Vec g = randn(n, seed, 100 + uint64_t(t), 0.2);
    const double norm = grad_norm(n, g.data());
    const float c_cpu = float(std::min(1.0, clip / (norm + 1e-6)));  // as DraftModel::apply_update
    const float c = clip_coef(norm, clip);
    d.add(c, c_cpu);
    adamw_update(n, w_cpu.data(), g.data(), m_cpu.data(), v_cpu.data(), p, t, c_cpu);
    const AdamWStep s = adamw_step(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, t, c);
    for (int64_t i = 0; i < n; i++) adamw_elem(&w[i], g[i], &m[i], &v[i], s);
  }
  d.add(w.data(), w_cpu.data(), n);
  d.add(m.data(), m_cpu.data(), n);
  d.add(v.data(), v_cpu.data(), n);
  out.push_back(d.done("adamw.update+clip", kTol));
}

int64_t body_argmax(const float* z, int64_t n) {
  float best = -std::numeric_limits<float>::infinity();
  int64_t bi = -1;
  for (int64_t i = 0; i < n; i++)
    if (argmax_better(z[i], i, best, bi)) { best = z[i]; bi = i; }
  return bi;
}

void check_target(uint64_t seed, std::vector<BodyCheck>& out) {
  const int64_t N = 6, H = 24, V = 50, Vd = 20;
  const std::vector<uint8_t> need{1, 0, 1, 1, 0, 1};
  const Vec last = randn(N * H, seed, 9), Wt = randn(V * H, seed, 10, 0.5);
  std::vector<int32_t> d2t(Vd), t2d(V, -1);
  for (int64_t j = 0; j < Vd; j++) { d2t[j] = int32_t(j * 2 + (j % 3 == 0)); t2d[d2t[j]] = int32_t(j); }
  Vec p_cpu(N * Vd, 0.0f), p(N * Vd, 0.0f), z(V), scratch;
  std::vector<int32_t> tgt_cpu(N), tgt(N, -1);
  target_distribution(N, need.data(), last.data(), H, Wt.data(), V, d2t.data(), t2d.data(), Vd, p_cpu.data(), tgt_cpu.data(), scratch);
  Diff d;
  for (int64_t r = 0; r < N; r++) {
    if (!need[r]) { d.add(tgt[r], tgt_cpu[r]); continue; }
    gemm_nt(1, V, H, 1.0f, last.data() + r * H, H, Wt.data(), H, 0.0f, z.data(), V);
    const int64_t y = body_argmax(z.data(), V);
    tgt[r] = y >= 0 ? t2d[y] : -1;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < Vd; j++) m = std::max(m, z[d2t[j]]);
    float s = 0;
    for (int64_t j = 0; j < Vd; j++) s += softmax_term(z[d2t[j]], m);
    for (int64_t j = 0; j < Vd; j++) p[r * Vd + j] = softmax_term(z[d2t[j]], m) / s;
    d.add(p.data() + r * Vd, p_cpu.data() + r * Vd, Vd);
    if (tgt[r] != tgt_cpu[r]) d.add(1.0, 0.0);  // a wrong target class fails the check outright
  }
  out.push_back(d.done("target.argmax+softmax", kTol));
}

void check_soft_ce(uint64_t seed, std::vector<BodyCheck>& out) {
  const int64_t n = 5, Vd = 30;
  const float scale = 0.7f;
  const Vec logits = randn(n * Vd, seed, 11, 3.0);
  Vec p = randn(3 * Vd, seed, 12);
  for (int64_t r = 0; r < 3; r++) {  // three distributions, each summing to 1
    float s = 0;
    for (int64_t j = 0; j < Vd; j++) s += (p[r * Vd + j] = std::exp(p[r * Vd + j]));
    for (int64_t j = 0; j < Vd; j++) p[r * Vd + j] /= s;
  }
  const std::vector<int32_t> prow{0, 2, 1, 1, 0};
  const Vec w{1.0f, 0.5f, 0.25f, 1.0f, 0.75f};
  std::vector<int32_t> tgt(n);
  for (int64_t r = 0; r < n; r++) tgt[r] = int32_t(body_argmax(logits.data() + r * Vd, Vd) + (r % 2));  // some hit, some miss
  Vec grad_cpu = logits;
  std::vector<double> ce_cpu(n), hit_cpu(n);
  soft_cross_entropy(n, Vd, grad_cpu.data(), p.data(), prow.data(), w.data(), tgt.data(), scale, ce_cpu.data(), hit_cpu.data());
  Diff dce, dg;
  for (int64_t r = 0; r < n; r++) {
    const float* z = logits.data() + r * Vd;
    const float* pr = p.data() + prow[r] * Vd;
    const int64_t am = body_argmax(z, Vd);
    float m = -std::numeric_limits<float>::infinity(), s = 0;
    double sp = 0, spz = 0;
    for (int64_t j = 0; j < Vd; j++) m = std::max(m, z[j]);
    for (int64_t j = 0; j < Vd; j++) { s += softmax_term(z[j], m); sp += pr[j]; spz += double(pr[j]) * z[j]; }
    dce.add(soft_ce(m, s, sp, spz, w[r]), ce_cpu[r]);
    if ((am == tgt[r] ? double(w[r]) : 0.0) != hit_cpu[r]) dce.add(1.0, 0.0);
    for (int64_t j = 0; j < Vd; j++) dg.add(soft_ce_grad(z[j], m, s, float(sp), pr[j], w[r], scale), grad_cpu[r * Vd + j]);
  }
  out.push_back(dce.done("soft_ce.loss+hit", kTol));
  out.push_back(dg.done("soft_ce.grad", kTol));
}

// One head with TTT extras: the bodies run as plain loops (every score, no tiles) against
// kernels/attention.cc's tiled GEMMs.
void check_attention(uint64_t seed, std::vector<BodyCheck>& out) {
  AttnShape shape;
  shape.Tq = 10; shape.q0 = 3; shape.d = 8; shape.nextra = 2; shape.scale = 1.0f / std::sqrt(8.0f);
  const AttnCase c(shape, seed);
  const AttnShape& sh = c.sh;
  const int64_t T = c.T, d = c.d, ne = c.ne, Tq = c.Tq;
  const Vec &q = c.q, &k = c.k, &v = c.v, &dout = c.dout;
  const std::vector<Vec> &ek = c.ek, &ev = c.ev;

  Vec o(Tq * d, 0.0f), lse(Tq), dq(Tq * d, 0.0f), dk(T * d, 0.0f), dv(T * d, 0.0f);
  std::vector<Vec> dek(ne, Vec(Tq * d, 0.0f)), dev(ne, Vec(Tq * d, 0.0f));
  for (int64_t i = 0; i < Tq; i++) {
    const int64_t qp = sh.q0 + i;
    const float* qi = q.data() + i * d;
    const float* doi = dout.data() + i * d;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t s = 0; s < T; s++) if (attn_visible(s, qp)) m = std::max(m, sh.scale * dot(qi, k.data() + s * d, d));
    for (int64_t j = 0; j < ne; j++) m = std::max(m, sh.scale * dot(qi, ek[j].data() + i * d, d));
    float sum = 0;
    for (int64_t s = 0; s < T; s++) if (attn_visible(s, qp)) sum += softmax_term(sh.scale * dot(qi, k.data() + s * d, d), m);
    for (int64_t j = 0; j < ne; j++) sum += softmax_term(sh.scale * dot(qi, ek[j].data() + i * d, d), m);
    lse[i] = m + std::log(sum);
    float* oi = o.data() + i * d;
    for (int64_t s = 0; s < T; s++) {
      if (!attn_visible(s, qp)) continue;
      const float a = attn_prob(dot(qi, k.data() + s * d, d), sh.scale, lse[i]);
      for (int64_t c = 0; c < d; c++) oi[c] += a * v[s * d + c];
    }
    for (int64_t j = 0; j < ne; j++) {
      const float a = attn_prob(dot(qi, ek[j].data() + i * d, d), sh.scale, lse[i]);
      for (int64_t c = 0; c < d; c++) oi[c] += a * ev[j][i * d + c];
    }
    const float delta = dot(doi, oi, d);
    // A key's gradients: ds = a·(dp − δ)·scale; dq += ds·key, dkey += ds·q, dvalue += a·dout.
    auto route = [&](const float* key, const float* val, float* dkey, float* dval) {
      const float a = attn_prob(dot(qi, key, d), sh.scale, lse[i]);
      const float ds = attn_dscore(a, dot(doi, val, d), delta, sh.scale);
      for (int64_t c = 0; c < d; c++) { dq[i * d + c] += ds * key[c]; dkey[c] += ds * qi[c]; dval[c] += a * doi[c]; }
    };
    for (int64_t s = 0; s < T; s++) if (attn_visible(s, qp)) route(k.data() + s * d, v.data() + s * d, dk.data() + s * d, dv.data() + s * d);
    for (int64_t j = 0; j < ne; j++) route(ek[j].data() + i * d, ev[j].data() + i * d, dek[j].data() + i * d, dev[j].data() + i * d);
  }
  Diff f, b;
  f.add(o.data(), c.o.data(), Tq * d);
  f.add(lse.data(), c.lse.data(), Tq);
  b.add(dq.data(), c.dq.data(), Tq * d);
  b.add(dk.data(), c.dk.data(), T * d);
  b.add(dv.data(), c.dv.data(), T * d);
  for (int64_t j = 0; j < ne; j++) { b.add(dek[j].data(), c.dek[j].data(), Tq * d); b.add(dev[j].data(), c.dev[j].data(), Tq * d); }
  out.push_back(f.done("attention.forward(ttt)", kTol));
  out.push_back(b.done("attention.backward(ttt)", kTol));
}

// The mapping drives CBLAS's column-major interface; the CPU step's row-major wrappers are
// the reference. Padded leading dimensions and beta != 0 catch a swapped ld or operand.
void check_gemm_map(uint64_t seed, std::vector<BodyCheck>& out) {
  for (const GemmKind& kind : kGemmKinds) {
    const GemmCase c(kind.ta, kind.tb, 7, 5, 6, seed);
    Vec got = c.C0;
    const ColMajorGemm g = col_major_gemm(c.ta, c.tb, c.M, c.N, c.K, c.alpha, c.A.data(), c.lda, c.B.data(), c.ldb, c.beta, got.data(), c.ldc);
    auto tr = [](Trans t) { return t == Trans::T ? CblasTrans : CblasNoTrans; };
    cblas_sgemm(CblasColMajor, tr(g.transa), tr(g.transb), int(g.m), int(g.n), int(g.k), g.alpha, static_cast<const float*>(g.a), int(g.lda),
                static_cast<const float*>(g.b), int(g.ldb), g.beta, static_cast<float*>(g.c), int(g.ldc));
    Diff df;
    df.add(got.data(), c.want.data(), c.M * c.ldc);
    out.push_back(df.done(std::string("gemm_map.") + kind.suffix, kTol));
  }
}

// Host memory as comm_check's "device" memory (the stand-in the staged path is tested with here).
struct HostMem {
  std::deque<std::vector<double>> blocks;  // doubles: aligned for float and double alike
  template <typename T>
  T* alloc(size_t n) {
    blocks.emplace_back((n * sizeof(T) + sizeof(double) - 1) / sizeof(double));
    return reinterpret_cast<T*>(blocks.back().data());
  }
  template <typename T>
  void put(T* dst, const std::vector<T>& h) { std::copy(h.begin(), h.end(), dst); }
  template <typename T>
  std::vector<T> get(const T* src, size_t n) { return std::vector<T>(src, src + n); }
};

// The host-staged collectives (several ranks on one GPU) over a world of 3 ThreadComms, with
// host memory standing in for the device's: the staging, the copies' sizes and directions
// and the subgroups, bit for bit against the sums in rank order.
void check_staged_comm(uint64_t seed, std::vector<BodyCheck>& out) {
  const int n = 3;
  auto world = makeThreadWorld(n);
  std::vector<std::vector<BodyCheck>> per(n);
  std::vector<std::thread> ts;
  for (int r = 0; r < n; r++) {
    ts.emplace_back([&, r] {
      try {
        auto c = makeStagedComm(world[size_t(r)], makeHostCopier());
        HostMem mem;
        per[size_t(r)] = comm_check("comm.staged(3 ranks)", *c, mem, seed, 0);
      } catch (const std::exception& e) {
        per[size_t(r)].push_back({"comm.staged(3 ranks)", std::numeric_limits<double>::infinity(), 0, 0, e.what()});
      }
    });
  }
  for (auto& t : ts) t.join();
  for (const BodyCheck& b : worst_of(per)) out.push_back(b);
}

// Which collectives a device world uses: NCCL only when no two ranks share a GPU.
void check_pick_device_comm(std::vector<BodyCheck>& out) {
  struct Case { std::vector<std::string> gpus; DeviceCommKind want; };
  const Case cases[] = {
      {{"a"}, DeviceCommKind::Nccl},
      {{"a", "b", "c"}, DeviceCommKind::Nccl},
      {{"a", "b", "a"}, DeviceCommKind::Staged},
      {{"a", ""}, DeviceCommKind::Staged},
  };
  int64_t wrong = 0, n = 0;
  for (const Case& c : cases) { n++; if (pickDeviceComm(c.gpus) != c.want) wrong++; }
  out.push_back({"comm.pick(nccl or staged)", wrong ? std::numeric_limits<double>::infinity() : 0.0, 0, n, wrong ? std::to_string(wrong) + " case(s) picked wrong" : ""});
}

}  // namespace

std::vector<BodyCheck> host_check(uint64_t seed) {
  std::vector<BodyCheck> out;
  check_rmsnorm(seed, out);
  check_rope(seed, out);
  check_swiglu(seed, out);
  check_bf16(seed, out);
  check_adamw(seed, out);
  check_target(seed, out);
  check_soft_ce(seed, out);
  check_attention(seed, out);
  check_gemm_map(seed, out);
  {  // the whole step written over StepOps, on its CPU instance, against DraftModel
    step::HostOps ops;
    for (BodyCheck& c : step::resident_step_check(ops, nullptr, step::check_config(), 3, 12, seed, 1e-4)) out.push_back(std::move(c));
    // bf16 products against fp32: with every target token in the draft vocabulary, so that a
    // rounded target logit cannot move a row in or out of the loss (a discontinuity, not an error)
    ops.bf16_matmul = true;
    DraftConfig full = step::check_config();
    full.draft_vocab = full.vocab;
    for (BodyCheck& c : step::resident_step_check(ops, nullptr, full, 3, 12, seed, step::kBf16StepTol)) out.push_back(std::move(c));
  }
  check_staged_comm(seed, out);
  check_pick_device_comm(out);
  return out;
}

}  // namespace dw::cuda
