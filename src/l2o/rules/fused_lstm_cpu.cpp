// Fused, column-tiled sonnet-1 LSTM step for the CPU (l2o.rules.fused_lstm).
//
// Layout: x [K, N], h, c [H, N], wt [4H, K + H] (gate order i, j, f, o; forget bias folded into
// b; j's rows pre-scaled by 2 so that tanh(j) = 2 sigmoid(2 j) - 1), b [4H], all contiguous.
// The N columns are processed in tiles that stay in the L2 cache: the gate pre-activations of a
// tile are one GEMM (ATen/BLAS), their activations and the state update one pass over the tile.
// The backward recomputes the tile's gates instead of reading stored ones. Tiles are shared out
// among PyTorch's intra-op threads (at::parallel_for); with one thread they run in order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>
#include <cmath>
#include <cstdint>
#include <limits>
#include <algorithm>
#include <tuple>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) && \
    !defined(__FAST_MATH__)
extern "C" {
float expf(float) noexcept __attribute__((simd("notinbranch")));
double exp(double) noexcept __attribute__((simd("notinbranch")));
float logf(float) noexcept __attribute__((simd("notinbranch")));
double log(double) noexcept __attribute__((simd("notinbranch")));
}
#endif

// The op namespace: l2o_fused_lstm, or another one (-DL2O_LSTM_NS=...) so that a build with other
// flags can be loaded beside it (benchmarks/fused_kernel_flags.py).
#ifndef L2O_LSTM_NS
#define L2O_LSTM_NS l2o_fused_lstm
#endif
#define L2O_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define L2O_LIBRARY_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)

namespace {

// NaN and inf must propagate exactly as in the reference cell (meta-training skips a non-finite
// meta-gradient; evaluation flags diverged seeds), so the file is NOT built with -ffast-math
// (whose finite-math-only lets the compiler assume there are none).
//   sig(v) = 1 / (1 + exp(-v)):  NaN -> NaN, +inf -> 1, -inf -> 0, as torch.sigmoid.
// In float32, exp is the inline Cephes expf below (range reduction by ln 2 and a degree-6
// polynomial, under 1 ulp from the correctly rounded value on its range; tested against
// torch.exp): written in plain arithmetic, so gcc vectorises it in the loops without a function
// call (a call to glibc's vector exp spills every vector register at each of the five calls per
// element). In float64, std::exp (glibc's vector exp, declared above).
// Under -ffast-math (kept only for benchmarks/fused_kernel_flags.py, which compares with the
// previous build) the sigmoid is the previous one: argument clamped to +-80, glibc's exp.
inline float fexp(float x) {
  const float hi = 88.72283935546875f, lo = -87.33654022216797f;
  const float xc = x < lo ? lo : (x > hi ? hi : x);
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;  // ln 2 in two parts (Cody-Waite)
  r = r - n * -2.12194440e-4f;
  const float z = r * r;
  float y = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r +
              4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  // 2^n as 2 * 2^(n - 1), so that n = 128 (x near hi) does not overflow the exponent field.
  const float p2 = __builtin_bit_cast(float, (static_cast<int32_t>(n) + 126) << 23);
  float res = y * p2 * 2.0f;
  res = x > hi ? std::numeric_limits<float>::infinity() : res;
  res = x < lo ? 0.0f : res;  // below lo exp(x) < 1.2e-38: 1 + exp(x) == 1 in the sigmoid
  return x != x ? x : res;   // NaN stays NaN
}

inline float exp_(float x) { return fexp(x); }
inline double exp_(double x) { return std::exp(x); }

template <typename T>
inline T sig(T v) {
#ifdef __FAST_MATH__
  v = v < T(-80) ? T(-80) : (v > T(80) ? T(80) : v);
  return T(1) / (T(1) + std::exp(-v));  // the previous build, exactly
#else
  return T(1) / (T(1) + exp_(-v));
#endif
}

at::Tensor gates_pre(const at::Tensor& wx, const at::Tensor& wh, const at::Tensor& b,
                     const at::Tensor& x, const at::Tensor& h, int64_t c0, int64_t len,
                     at::Tensor& z) {
  at::Tensor zt = z.narrow(1, 0, len);
  at::addmm_out(zt, b.unsqueeze(1), wx, x.narrow(1, c0, len));
  zt.addmm_(wh, h.narrow(1, c0, len));
  return zt;
}

template <typename T>
void pointwise_fwd(const T* z, int64_t ldz, const T* c, T* hn, T* cn, int64_t ld, int64_t H,
                   int64_t len) {
  for (int64_t r = 0; r < H; ++r) {
    const T* __restrict zi = z + r * ldz;
    const T* __restrict zj = z + (H + r) * ldz;
    const T* __restrict zf = z + (2 * H + r) * ldz;
    const T* __restrict zo = z + (3 * H + r) * ldz;
    const T* __restrict cr = c + r * ld;
    T* __restrict hr = hn + r * ld;
    T* __restrict cw = cn + r * ld;
#pragma GCC ivdep
    for (int64_t k = 0; k < len; ++k) {
      T i = sig(zi[k]), j2 = sig(zj[k]), f = sig(zf[k]), o = sig(zo[k]);
      T cc = (f * cr[k] - i) + T(2) * i * j2;
      cw[k] = cc;
      hr[k] = o * (T(2) * sig(T(2) * cc) - T(1));
    }
  }
}

template <typename T>
__attribute__((noinline)) void pointwise_bwd(const T* z, T* dz, int64_t ldz, const T* c, const T* cn, const T* dh,
                   const T* dc, T* dcp, int64_t ld, int64_t H, int64_t len) {
  // dz [4H, ldz] from the pre-activations z. Not inlined: inlined into the dispatch lambda, gcc
  // 12 did not vectorise this loop for float (measured 2x slower backward).
  for (int64_t r = 0; r < H; ++r) {
    const T* __restrict zi = z + r * ldz;
    const T* __restrict zj = z + (H + r) * ldz;
    const T* __restrict zf = z + (2 * H + r) * ldz;
    const T* __restrict zo = z + (3 * H + r) * ldz;
    T* __restrict di = dz + r * ldz;
    T* __restrict dj = dz + (H + r) * ldz;
    T* __restrict df = dz + (2 * H + r) * ldz;
    T* __restrict do_ = dz + (3 * H + r) * ldz;
    const T* __restrict cr = c + r * ld;
    const T* __restrict cnr = cn + r * ld;
    const T* __restrict dhr = dh + r * ld;
    const T* __restrict dcr = dc + r * ld;
    T* __restrict dcpr = dcp + r * ld;
#pragma GCC ivdep
    for (int64_t k = 0; k < len; ++k) {
      T i = sig(zi[k]), j2 = sig(zj[k]), f = sig(zf[k]), o = sig(zo[k]);
      T tc = T(2) * sig(T(2) * cnr[k]) - T(1);
      T tj = T(2) * j2 - T(1);
      T dct = dcr[k] + dhr[k] * o * (T(1) - tc * tc);
      di[k] = dct * tj * (i * (T(1) - i));
      dj[k] = T(2) * dct * i * (j2 * (T(1) - j2));
      df[k] = dct * cr[k] * (f * (T(1) - f));
      do_[k] = dhr[k] * tc * (o * (T(1) - o));
      dcpr[k] = dct * f;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> lstm_fwd(const at::Tensor& x, const at::Tensor& h,
                                            const at::Tensor& c, const at::Tensor& wt,
                                            const at::Tensor& b, int64_t tile) {
  const int64_t K = x.size(0), H = h.size(0), N = h.size(1);
  at::Tensor wx = wt.narrow(1, 0, K), wh = wt.narrow(1, K, H);
  at::Tensor hn = at::empty_like(h), cn = at::empty_like(h);
  const int64_t ntiles = (N + tile - 1) / tile;
  // Tiles are independent: the intra-op threads (torch.set_num_threads) share them out, each
  // with its own gate buffer and the calling thread's dispatcher state (the ATen calls must not
  // see autograd). One thread runs them in order, as before.
  const at::ThreadLocalState caller;  // the dispatcher's state here (below autograd)
  at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
    at::ThreadLocalStateGuard same_state(caller);
    at::Tensor z = at::empty({4 * H, std::min(tile, N)}, h.options());
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = t * tile, len = std::min(tile, N - c0);
      at::Tensor zt = gates_pre(wx, wh, b, x, h, c0, len, z);
      AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "l2o_lstm_fwd", [&] {
        pointwise_fwd<scalar_t>(zt.data_ptr<scalar_t>(), zt.stride(0),
                                c.data_ptr<scalar_t>() + c0, hn.data_ptr<scalar_t>() + c0,
                                cn.data_ptr<scalar_t>() + c0, N, H, len);
      });
    }
  });
  return {hn, cn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bwd(
    const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& cn,
    const at::Tensor& wt, const at::Tensor& b, const at::Tensor& dh, const at::Tensor& dc,
    int64_t tile) {
  const int64_t K = x.size(0), H = h.size(0), N = h.size(1);
  at::Tensor wx = wt.narrow(1, 0, K), wh = wt.narrow(1, K, H);
  at::Tensor wxt = wx.t(), wht = wh.t();
  at::Tensor dx = at::empty_like(x), dhp = at::empty_like(h), dcp = at::empty_like(h);
  const int64_t ntiles = (N + tile - 1) / tile;
  if (ntiles == 0) return {dx, dhp, dcp, at::zeros_like(wt), at::zeros_like(b)};
  // Each tile's weight and bias gradients go to their own slot ([4H, K + H] weights, then the
  // bias as the last column) and the slots are summed in tile order afterwards, one add per tile:
  // no two threads write one sum, and the order of the sum is the same whatever the thread count.
  at::Tensor parts = at::empty({ntiles, 4 * H, K + H + 1}, h.options());
  const at::ThreadLocalState caller;
  at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
    at::ThreadLocalStateGuard same_state(caller);
    at::Tensor z = at::empty({4 * H, std::min(tile, N)}, h.options());
    at::Tensor dzb = at::empty_like(z);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = t * tile, len = std::min(tile, N - c0);
      at::Tensor zt = gates_pre(wx, wh, b, x, h, c0, len, z);
      at::Tensor dzt = dzb.narrow(1, 0, len);
      AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "l2o_lstm_bwd", [&] {
        pointwise_bwd<scalar_t>(zt.data_ptr<scalar_t>(), dzt.data_ptr<scalar_t>(), zt.stride(0),
                                c.data_ptr<scalar_t>() + c0, cn.data_ptr<scalar_t>() + c0,
                                dh.data_ptr<scalar_t>() + c0, dc.data_ptr<scalar_t>() + c0,
                                dcp.data_ptr<scalar_t>() + c0, N, H, len);
      });
      at::Tensor xt = x.narrow(1, c0, len), ht = h.narrow(1, c0, len);
      at::Tensor dxt = dx.narrow(1, c0, len), dht = dhp.narrow(1, c0, len);
      at::mm_out(dxt, wxt, dzt);
      at::mm_out(dht, wht, dzt);
      at::Tensor slot = parts.select(0, t);
      at::Tensor dwx_t = slot.narrow(1, 0, K), dwh_t = slot.narrow(1, K, H);
      at::Tensor db_t = slot.select(1, K + H);
      at::mm_out(dwx_t, dzt, xt.t());
      at::mm_out(dwh_t, dzt, ht.t());
      at::sum_out(db_t, dzt, 1);
    }
  });
  at::Tensor total = parts.select(0, 0).clone();
  for (int64_t t = 1; t < ntiles; ++t) total.add_(parts.select(0, t));
  return {dx, dhp, dcp, total.narrow(1, 0, K + H).contiguous(), total.select(1, K + H).contiguous()};
}

}  // namespace

L2O_LIBRARY(L2O_LSTM_NS, m) {
  m.def("fwd(Tensor x, Tensor h, Tensor c, Tensor wt, Tensor b, int tile) -> (Tensor, Tensor)");
  m.def(
      "bwd(Tensor x, Tensor h, Tensor c, Tensor cn, Tensor wt, Tensor b, Tensor dh, Tensor dc, "
      "int tile) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

L2O_LIBRARY_IMPL(L2O_LSTM_NS, CPU, m) {
  m.impl("fwd", &lstm_fwd);
  m.impl("bwd", &lstm_bwd);
}
