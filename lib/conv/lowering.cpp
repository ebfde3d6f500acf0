#include "conv/lowering.hpp"

#include <algorithm>

#include "common/activation_impl.hpp"

// Runtime dispatch: GCC emits one body per target and an ifunc resolver that picks the best
// one for the CPU at load time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define IM2GEMM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define IM2GEMM_CLONES
#endif

namespace im2gemm::detail {

namespace {

using i64 = std::int64_t;

// Output columns ow with 0 <= ow*SW + off < W form [lo, hi).
struct ValidCols {
  i64 lo, hi;
};
inline ValidCols valid_cols(i64 off, i64 SW, i64 W, i64 OW) {
  const i64 lo = off >= 0 ? 0 : (-off + SW - 1) / SW;
  const i64 last = W - 1 - off;  // ow*SW <= last
  const i64 hi = last < 0 ? 0 : std::min(OW, last / SW + 1);
  return {std::min(lo, OW), std::max(std::min(lo, OW), hi)};
}

}  // namespace

IM2GEMM_CLONES
void im2col_block(const ConvGeom& g, const float* x, i64 nch, i64 q0, i64 q1, float* col,
                  i64 ldcol) {
  const i64 oh_first = q0 / g.OW, oh_last = (q1 - 1) / g.OW;
  for (i64 c = 0; c < nch; ++c) {
    const float* xc = x + c * g.H * g.W;
    for (i64 kh = 0; kh < g.KH; ++kh) {
      for (i64 kw = 0; kw < g.KW; ++kw) {
        float* __restrict row = col + ((c * g.KH + kh) * g.KW + kw) * ldcol;
        const i64 off_w = kw * g.DW - g.PW;
        const ValidCols v = valid_cols(off_w, g.SW, g.W, g.OW);
        i64 j = 0;
        for (i64 oh = oh_first; oh <= oh_last; ++oh) {
          const i64 a = oh == oh_first ? q0 - oh * g.OW : 0;
          const i64 b = oh == oh_last ? q1 - oh * g.OW : g.OW;
          float* __restrict dst = row + j - a;  // dst[ow] for ow in [a, b)
          j += b - a;
          const i64 ih = oh * g.SH - g.PH + kh * g.DH;
          if (ih < 0 || ih >= g.H) {
            for (i64 ow = a; ow < b; ++ow) dst[ow] = 0.0f;
            continue;
          }
          const i64 lo = std::clamp(v.lo, a, b), hi = std::clamp(v.hi, lo, b);
          for (i64 ow = a; ow < lo; ++ow) dst[ow] = 0.0f;
          if (hi > lo) {
            const float* __restrict src = xc + ih * g.W + lo * g.SW + off_w;
            float* __restrict d = dst + lo;
            const i64 n = hi - lo;
            if (g.SW == 1) {
              for (i64 i = 0; i < n; ++i) d[i] = src[i];
            } else if (g.SW == 2) {
              for (i64 i = 0; i < n; ++i) d[i] = src[2 * i];
            } else {
              const i64 sw = g.SW;
              for (i64 i = 0; i < n; ++i) d[i] = src[i * sw];
            }
          }
          for (i64 ow = hi; ow < b; ++ow) dst[ow] = 0.0f;
        }
      }
    }
  }
}

IM2GEMM_CLONES
void col2im_add_block(const ConvGeom& g, const float* col, i64 ldcol, i64 nch, i64 q0, i64 q1,
                      float* dx) {
  const i64 oh_first = q0 / g.OW, oh_last = (q1 - 1) / g.OW;
  for (i64 c = 0; c < nch; ++c) {
    float* xc = dx + c * g.H * g.W;
    for (i64 kh = 0; kh < g.KH; ++kh) {
      for (i64 kw = 0; kw < g.KW; ++kw) {
        const float* __restrict row = col + ((c * g.KH + kh) * g.KW + kw) * ldcol;
        const i64 off_w = kw * g.DW - g.PW;
        const ValidCols v = valid_cols(off_w, g.SW, g.W, g.OW);
        i64 j = 0;
        for (i64 oh = oh_first; oh <= oh_last; ++oh) {
          const i64 a = oh == oh_first ? q0 - oh * g.OW : 0;
          const i64 b = oh == oh_last ? q1 - oh * g.OW : g.OW;
          const float* __restrict srcrow = row + j - a;  // srcrow[ow] for ow in [a, b)
          j += b - a;
          const i64 ih = oh * g.SH - g.PH + kh * g.DH;
          if (ih < 0 || ih >= g.H) continue;
          const i64 lo = std::clamp(v.lo, a, b), hi = std::clamp(v.hi, lo, b);
          if (hi <= lo) continue;
          float* __restrict d = xc + ih * g.W + lo * g.SW + off_w;
          const float* __restrict s = srcrow + lo;
          const i64 n = hi - lo;
          if (g.SW == 1) {
            for (i64 i = 0; i < n; ++i) d[i] += s[i];
          } else if (g.SW == 2) {
            for (i64 i = 0; i < n; ++i) d[2 * i] += s[i];
          } else {
            const i64 sw = g.SW;
            for (i64 i = 0; i < n; ++i) d[i * sw] += s[i];
          }
        }
      }
    }
  }
}

IM2GEMM_CLONES
void bias_act_copy(float* __restrict dst, const float* __restrict src, i64 n, float b,
                   Activation act) {
  switch (act) {
    case Activation::identity:
      for (i64 i = 0; i < n; ++i) dst[i] = src[i] + b;
      return;
    case Activation::relu:
      for (i64 i = 0; i < n; ++i) {
        const float t = src[i] + b;
        dst[i] = t > 0.0f ? t : 0.0f;
      }
      return;
    case Activation::sigmoid:
    case Activation::tanh:
      for (i64 i = 0; i < n; ++i) dst[i] = src[i] + b;
      activation_forward_unchecked(act, dst, n);
      return;
  }
}

IM2GEMM_CLONES
static void bias_act_inplace(float* __restrict v, i64 n, float b, Activation act) {
  switch (act) {
    case Activation::identity:
      if (b != 0.0f) {
        for (i64 i = 0; i < n; ++i) v[i] += b;
      }
      return;
    case Activation::relu:
      for (i64 i = 0; i < n; ++i) {
        const float t = v[i] + b;
        v[i] = t > 0.0f ? t : 0.0f;
      }
      return;
    case Activation::sigmoid:
    case Activation::tanh:
      for (i64 i = 0; i < n; ++i) v[i] += b;
      activation_forward_unchecked(act, v, n);
      return;
  }
}

void bias_act_rows(float* y, i64 ldy, i64 rows, i64 cols, const float* bias, Activation act) {
  if (bias == nullptr && act == Activation::identity) return;
  for (i64 r = 0; r < rows; ++r) {
    bias_act_inplace(y + r * ldy, cols, bias ? bias[r] : 0.0f, act);
  }
}

IM2GEMM_CLONES
void act_backward(Activation act, const float* __restrict y, float* __restrict d, i64 n) {
  switch (act) {
    case Activation::identity:
      return;
    case Activation::relu:
      for (i64 i = 0; i < n; ++i) d[i] = y[i] > 0.0f ? d[i] : 0.0f;
      return;
    case Activation::sigmoid:
      for (i64 i = 0; i < n; ++i) d[i] *= y[i] * (1.0f - y[i]);
      return;
    case Activation::tanh:
      for (i64 i = 0; i < n; ++i) d[i] *= 1.0f - y[i] * y[i];
      return;
  }
}

IM2GEMM_CLONES
float sum_floats(const float* __restrict v, i64 n) {
  constexpr int L = 16;
  float acc[L] = {};
  i64 i = 0;
  for (; i + L <= n; i += L) {
    for (int l = 0; l < L; ++l) acc[l] += v[i + l];
  }
  for (int l = 0; i < n; ++i, ++l) acc[l] += v[i];
  for (int w = L / 2; w > 0; w /= 2) {
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  }
  return acc[0];
}

IM2GEMM_CLONES
void copy_floats(float* __restrict dst, const float* __restrict src, i64 n) {
  for (i64 i = 0; i < n; ++i) dst[i] = src[i];
}

IM2GEMM_CLONES
void add_floats(float* __restrict d, const float* __restrict s, i64 n) {
  for (i64 i = 0; i < n; ++i) d[i] += s[i];
}

}  // namespace im2gemm::detail
