// The depthwise kernels in portable C++ (one lane): the fallback on any CPU, and what
// IM2GEMM_ISA=scalar runs. Also the kernels' reference twins.
#include <algorithm>
#include <cstdint>
#include <utility>

#include "conv/depthwise.hpp"

namespace im2gemm::detail {
namespace {

struct Scalar {
  static constexpr int N = 1;
  static constexpr int kRows = 2, kVecs = 4, kFlatVecs = 4;
  using F = float;
  using M = bool;
  static F zero() { return 0.0f; }
  static F iota() { return 0.0f; }
  static F set1(float v) { return v; }
  static F loadu(const float* p) { return *p; }
  static F load_n(const float* p, int) { return *p; }
  static F load_range(const float* p, int lo, int hi) { return lo <= 0 && hi >= 1 ? *p : 0.0f; }
  static F even(const float* p) { return *p; }
  static void stream(float* p, F v) { *p = v; }
  static F relu(F v) { return v > 0.0f ? v : 0.0f; }  // activation_forward: NaN -> 0
  static void storeu(float* p, F v) { *p = v; }
  static void store_n(float* p, F v, int) { *p = v; }
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static M ge(F a, F b) { return a >= b; }
  static F mask_and(M m, F v) { return m ? v : 0.0f; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static F mul(F a, F b) { return a * b; }
  static void interleave(F e, F o, F& lo, F& hi) { lo = e, hi = o; }
  static float hsum(F v) { return v; }
};

#include "conv/depthwise_kernels.inc"

// The lanes kernels' type: 8 floats in an array, one lane at a time.
struct Lanes8 {
  struct F {
    float v[8];
  };
  static F zero() { return F{}; }
  static F loadu(const float* p) {
    F r;
    for (int l = 0; l < 8; ++l) r.v[l] = p[l];
    return r;
  }
  static F load_n(const float* p, int n) {
    F r{};
    for (int l = 0; l < n; ++l) r.v[l] = p[l];
    return r;
  }
  static void storeu(float* p, const F& v) {
    for (int l = 0; l < 8; ++l) p[l] = v.v[l];
  }
  static void store_n(float* p, const F& v, int n) {
    for (int l = 0; l < n; ++l) p[l] = v.v[l];
  }
  static F add(const F& a, const F& b) {
    F r;
    for (int l = 0; l < 8; ++l) r.v[l] = a.v[l] + b.v[l];
    return r;
  }
  static F fma(const F& a, const F& b, const F& c) {
    F r;
    for (int l = 0; l < 8; ++l) r.v[l] = a.v[l] * b.v[l] + c.v[l];
    return r;
  }
  static F relu(const F& a) {  // activation_forward: NaN -> 0
    F r;
    for (int l = 0; l < 8; ++l) r.v[l] = a.v[l] > 0.0f ? a.v[l] : 0.0f;
    return r;
  }
  static void transpose8(F* v) {
    for (int i = 0; i < 8; ++i) {
      for (int j = i + 1; j < 8; ++j) std::swap(v[i].v[j], v[j].v[i]);
    }
  }
};

#include "conv/depthwise_lanes.inc"

void plane_scalar(const DwPlane& a) { plane<Scalar>(a); }
void dots_scalar(const DwDots& a) { dots<Scalar>(a); }
void copy_scalar(float* d, const float* src, i64 n, i64 stride) {
  copy_row<Scalar>(d, src, n, stride);
}
void flat_scalar(const DwFlat& a) { flat<Scalar>(a); }
void flat_dots_scalar(const DwFlatDots& a) { flat_dots<Scalar>(a); }
void lanes_in_scalar(const DwLanesIn& a) { lanes_in<Lanes8>(a); }
void lanes_out_scalar(const DwLanesOut& a) { lanes_out<Lanes8>(a); }
void lanes_conv_scalar(const DwLanesConv& a) { lanes_conv<Lanes8>(a); }
void lanes_dots_scalar(const DwLanesDots& a) { lanes_dots<Lanes8>(a); }
void stride2_data_scalar(const DwStride2Data& a) { stride2_data<Scalar>(a); }

}  // namespace

const DwKernels& dw_kernels_scalar() {
  static const DwKernels k{&plane_scalar,
                           &dots_scalar,
                           &copy_scalar,
                           &flat_scalar,
                           &flat_dots_scalar,
                           &lanes_in_scalar,
                           &lanes_out_scalar,
                           &lanes_conv_scalar,
                           &lanes_dots_scalar,
                           nullptr,
                           nullptr,
                           &stride2_data_scalar,
                           "scalar"};
  return k;
}

void dw_plane_twin(const DwPlane& a) {
  for (i64 oh = 0; oh < a.OH; ++oh) {
    for (i64 i = 0; i < a.OW; ++i) {
      float acc = a.accumulate ? a.out[oh * a.ld_out + i] : a.init;
      for (int kh = 0; kh < a.KH; ++kh) {
        for (int kw = 0; kw < a.KW; ++kw) {
          acc += a.w[kh * a.KW + kw] * a.src[(oh * a.SH + kh * a.DH) * a.ld + a.off[kw] + i];
        }
      }
      a.out[oh * a.ld_out + i] = acc;
    }
  }
}

void dw_dots_twin(const DwDots& a) {
  for (int kh = 0; kh < a.KH; ++kh) {
    for (int kw = 0; kw < a.KW; ++kw) {
      double acc = 0.0;
      for (i64 oh = 0; oh < a.OH; ++oh) {
        const float* r = a.src + (oh * a.SH + kh * a.DH) * a.ld + a.off[kw];
        for (i64 ow = 0; ow < a.OW; ++ow) acc += double(a.dy[oh * a.OW + ow]) * double(r[ow]);
      }
      a.vacc[16 * (kh * a.KW + kw)] += static_cast<float>(acc);
    }
  }
  double b = 0.0;
  for (i64 i = 0; i < a.OH * a.OW; ++i) b += a.dy[i];
  a.vacc[16 * a.KH * a.KW] += static_cast<float>(b);
}

void dw_flat_twin(const DwFlat& a) {
  for (i64 i = 0; i < a.n; ++i) {
    float acc = a.accumulate ? a.out[i] : a.init;
    const i64 c = i % a.W;
    for (int kh = 0; kh < a.KH; ++kh) {
      for (int kw = 0; kw < a.KW; ++kw) {
        const bool in = c + a.col[kw] >= 0 && c + a.col[kw] < a.W;
        acc += a.w[kh * a.KW + kw] * (in ? a.src[i + a.row_off[kh] + a.col[kw]] : 0.0f);
      }
    }
    a.out[i] = acc;
  }
}

void dw_flat_dots_twin(const DwFlatDots& a) {
  for (int kh = 0; kh < a.KH; ++kh) {
    for (int kw = 0; kw < a.KW; ++kw) {
      double acc = 0.0;
      for (i64 i = 0; i < a.n; ++i) {
        const i64 c = i % a.W;
        const bool in = c + a.col[kw] >= 0 && c + a.col[kw] < a.W;
        acc += double(a.dy[i]) * (in ? double(a.src[i + a.row_off[kh] + a.col[kw]]) : 0.0);
      }
      a.vacc[16 * (kh * a.KW + kw)] += static_cast<float>(acc);
    }
  }
  double b = 0.0;
  for (i64 i = 0; i < a.n; ++i) b += a.dy[i];
  a.vacc[16 * a.KH * a.KW] += static_cast<float>(b);
}

void dw_copy_twin(float* d, const float* src, i64 n, i64 stride) {
  for (i64 q = 0; q < n; ++q) d[q] = src[q * stride];
}

}  // namespace im2gemm::detail
