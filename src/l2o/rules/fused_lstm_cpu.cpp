// Fused, column-tiled sonnet-1 LSTM step for the CPU (l2o.rules.fused_lstm).
//
// Layout: x [K, N], h, c [H, N], wt [4H, K + H] (gate order i, j, f, o; forget bias folded into
// b; j's rows pre-scaled by 2 so that tanh(j) = 2 sigmoid(2 j) - 1), b [4H], all contiguous.
// The N columns are processed in tiles that stay in the L2 cache: the gate pre-activations of a
// tile are one GEMM (ATen/BLAS), their activations and the state update one pass over the tile.
// The backward recomputes the tile's gates instead of reading stored ones.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
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
  at::Tensor z = at::empty({4 * H, std::min(tile, N)}, h.options());
  for (int64_t c0 = 0; c0 < N; c0 += tile) {
    const int64_t len = std::min(tile, N - c0);
    at::Tensor zt = gates_pre(wx, wh, b, x, h, c0, len, z);
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "l2o_lstm_fwd", [&] {
      pointwise_fwd<scalar_t>(zt.data_ptr<scalar_t>(), zt.stride(0),
                              c.data_ptr<scalar_t>() + c0, hn.data_ptr<scalar_t>() + c0,
                              cn.data_ptr<scalar_t>() + c0, N, H, len);
    });
  }
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
  at::Tensor dwt = at::zeros_like(wt), db = at::zeros_like(b);
  at::Tensor dwx = dwt.narrow(1, 0, K), dwh = dwt.narrow(1, K, H);
  at::Tensor z = at::empty({4 * H, std::min(tile, N)}, h.options());
  at::Tensor dzb = at::empty_like(z);
  for (int64_t c0 = 0; c0 < N; c0 += tile) {
    const int64_t len = std::min(tile, N - c0);
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
    dwx.addmm_(dzt, xt.t());
    dwh.addmm_(dzt, ht.t());
    db.add_(dzt.sum(1));
  }
  return {dx, dhp, dcp, dwt, db};
}

// ---------------------------------------------------------------------------------------------
// L2O-DM's whole step without gradients (evaluation): LogAndSign, both LSTM layers and the
// readout for a tile of TW columns at a time, so that the features, both layers' gates and the
// first layer's output never leave the L1/L2 cache. The gates are a register-blocked product
// written here (4 rows x TW columns per pass; the shapes, 80 x 22 and 80 x 40, are too small for
// BLAS to pay off per tile), the pointwise part is the same as pointwise_fwd's. Tiles are
// independent, so they are spread over PyTorch's intra-op threads.

constexpr int64_t TW = 64;

// z[M, TW] = bias + W[M, K] @ in[K, TW] (W row-major with leading dimension ldw).
template <typename T>
inline void gemm_tile(const T* __restrict W, int64_t ldw, const T* __restrict bias, int64_t M,
                      int64_t K, const T* __restrict in, T* __restrict z) {
  int64_t r = 0;
  for (; r + 4 <= M; r += 4) {
    T a0[TW], a1[TW], a2[TW], a3[TW];
    for (int64_t j = 0; j < TW; ++j) {
      a0[j] = bias[r];
      a1[j] = bias[r + 1];
      a2[j] = bias[r + 2];
      a3[j] = bias[r + 3];
    }
    const T* w0 = W + r * ldw;
    const T* w1 = w0 + ldw;
    const T* w2 = w1 + ldw;
    const T* w3 = w2 + ldw;
    for (int64_t k = 0; k < K; ++k) {
      const T* x = in + k * TW;
      const T v0 = w0[k], v1 = w1[k], v2 = w2[k], v3 = w3[k];
      for (int64_t j = 0; j < TW; ++j) {
        a0[j] += v0 * x[j];
        a1[j] += v1 * x[j];
        a2[j] += v2 * x[j];
        a3[j] += v3 * x[j];
      }
    }
    for (int64_t j = 0; j < TW; ++j) {
      z[r * TW + j] = a0[j];
      z[(r + 1) * TW + j] = a1[j];
      z[(r + 2) * TW + j] = a2[j];
      z[(r + 3) * TW + j] = a3[j];
    }
  }
  for (; r < M; ++r) {
    T a0[TW];
    for (int64_t j = 0; j < TW; ++j) a0[j] = bias[r];
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < TW; ++j) a0[j] += W[r * ldw + k] * in[k * TW + j];
    for (int64_t j = 0; j < TW; ++j) z[r * TW + j] = a0[j];
  }
}

// One LSTM layer on a tile: inputs in[K + H, TW] (x rows then h rows), gates z[4H, TW];
// writes h' into hn (leading dimension ldh) and c' into cn (leading dimension ld); c has ld.
template <typename T>
inline void layer_tile(const T* W, const T* b, int64_t K, int64_t H, const T* in, T* z,
                       const T* c, T* hn, int64_t ldh, T* cn, int64_t ld, int64_t len) {
  gemm_tile<T>(W, K + H, b, 4 * H, K + H, in, z);
  for (int64_t r = 0; r < H; ++r) {
    const T* __restrict zi = z + r * TW;
    const T* __restrict zj = z + (H + r) * TW;
    const T* __restrict zf = z + (2 * H + r) * TW;
    const T* __restrict zo = z + (3 * H + r) * TW;
    const T* __restrict cr = c + r * ld;
    T* __restrict hr = hn + r * ldh;
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
void dm_tiles(int64_t t0, int64_t t1, int64_t N, const T* g, const T* h1, const T* c1,
              const T* h2, const T* c2, const T* w1, const T* b1, const T* w2, const T* b2,
              const T* wo, T bo, T k, T ek, T scale, T eps, T* delta, T* h1n, T* c1n, T* h2n, T* c2n,
              int64_t H1, int64_t H2) {
  std::vector<T> in1((2 + H1) * TW), in2((H1 + H2) * TW), z(4 * std::max(H1, H2) * TW),
      hbuf(H2 * TW);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t c0 = t * TW, len = std::min(TW, N - c0);
    // Unused columns of a partial tile are zeros (finite; their results are not written).
    if (len < TW) {
      std::fill(in1.begin(), in1.end(), T(0));
      std::fill(in2.begin(), in2.end(), T(0));
    }
    // LogAndSign: [max(log(|g| + eps) / k, -1), clip(g e^k, -1, 1)]; NaN stays NaN.
    for (int64_t j = 0; j < len; ++j) {
      const T v = g[c0 + j];
      const T lg = std::log(std::abs(v) + eps) / k;
      const T sg = v * ek;
      in1[j] = lg < T(-1) ? T(-1) : lg;
      in1[TW + j] = sg < T(-1) ? T(-1) : (sg > T(1) ? T(1) : sg);
    }
    for (int64_t r = 0; r < H1; ++r)
      std::copy(h1 + r * N + c0, h1 + r * N + c0 + len, in1.data() + (2 + r) * TW);
    for (int64_t r = 0; r < H2; ++r)
      std::copy(h2 + r * N + c0, h2 + r * N + c0 + len, in2.data() + (H1 + r) * TW);
    // Layer 1 writes h1' straight into the second layer's input rows.
    layer_tile<T>(w1, b1, 2, H1, in1.data(), z.data(), c1 + c0, in2.data(), TW, c1n + c0, N, len);
    for (int64_t r = 0; r < H1; ++r)
      std::copy(in2.data() + r * TW, in2.data() + r * TW + len, h1n + r * N + c0);
    layer_tile<T>(w2, b2, H1, H2, in2.data(), z.data(), c2 + c0, hbuf.data(), TW, c2n + c0, N,
                  len);
    T out[TW];
    for (int64_t j = 0; j < TW; ++j) out[j] = bo;
    for (int64_t r = 0; r < H2; ++r) {
      const T w = wo[r];
      const T* hr = hbuf.data() + r * TW;
      for (int64_t j = 0; j < TW; ++j) out[j] += w * hr[j];
      std::copy(hr, hr + len, h2n + r * N + c0);
    }
    for (int64_t j = 0; j < len; ++j) delta[c0 + j] = scale * out[j];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dm_step(
    const at::Tensor& g, const at::Tensor& h1, const at::Tensor& c1, const at::Tensor& h2,
    const at::Tensor& c2, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
    const at::Tensor& b2, const at::Tensor& wo, const at::Tensor& bo, double k, double scale, double eps) {
  const int64_t N = g.numel(), H1 = h1.size(0), H2 = h2.size(0);
  TORCH_CHECK(w1.size(0) == 4 * H1 && w1.size(1) == 2 + H1, "dm_step: w1 must be [4H1, 2 + H1]");
  TORCH_CHECK(w2.size(0) == 4 * H2 && w2.size(1) == H1 + H2, "dm_step: w2 must be [4H2, H1+H2]");
  at::Tensor delta = at::empty({N}, g.options());
  at::Tensor h1n = at::empty_like(h1), c1n = at::empty_like(c1);
  at::Tensor h2n = at::empty_like(h2), c2n = at::empty_like(c2);
  const int64_t tiles = (N + TW - 1) / TW;
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "l2o_dm_step", [&] {
    at::parallel_for(0, tiles, 16, [&](int64_t t0, int64_t t1) {
      dm_tiles<scalar_t>(t0, t1, N, g.data_ptr<scalar_t>(), h1.data_ptr<scalar_t>(),
                         c1.data_ptr<scalar_t>(), h2.data_ptr<scalar_t>(),
                         c2.data_ptr<scalar_t>(), w1.data_ptr<scalar_t>(),
                         b1.data_ptr<scalar_t>(), w2.data_ptr<scalar_t>(),
                         b2.data_ptr<scalar_t>(), wo.data_ptr<scalar_t>(), bo.data_ptr<scalar_t>()[0],
                         scalar_t(k), scalar_t(std::exp(k)), scalar_t(scale), scalar_t(eps),
                         delta.data_ptr<scalar_t>(), h1n.data_ptr<scalar_t>(),
                         c1n.data_ptr<scalar_t>(), h2n.data_ptr<scalar_t>(),
                         c2n.data_ptr<scalar_t>(), H1, H2);
    });
  });
  return {delta, h1n, c1n, h2n, c2n};
}

}  // namespace

L2O_LIBRARY(L2O_LSTM_NS, m) {
  m.def("fwd(Tensor x, Tensor h, Tensor c, Tensor wt, Tensor b, int tile) -> (Tensor, Tensor)");
  m.def(
      "bwd(Tensor x, Tensor h, Tensor c, Tensor cn, Tensor wt, Tensor b, Tensor dh, Tensor dc, "
      "int tile) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "dm_step(Tensor g, Tensor h1, Tensor c1, Tensor h2, Tensor c2, Tensor w1, Tensor b1, "
      "Tensor w2, Tensor b2, Tensor wo, Tensor bo, float k, float scale, float eps) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
}

L2O_LIBRARY_IMPL(L2O_LSTM_NS, CPU, m) {
  m.impl("fwd", &lstm_fwd);
  m.impl("bwd", &lstm_bwd);
  m.impl("dm_step", &dm_step);
}
