// A test-only, literal port of the seed tutorial's algorithms, independent of lib/reference:
// forward pads the input into a real array and correlates patches; backward data expands the
// sensitivity map to stride 1, pads it and runs a 'full' correlation with the 180-degree
// rotated (and explicitly dilated) filters, then crops the padding; backward weights
// correlates the padded input with the expanded map. Groups are handled by slicing channels.
// Double precision throughout. Slow and obvious on purpose.
#pragma once

#include <cstdint>
#include <vector>

#include <im2gemm/im2gemm.hpp>

namespace seed {

using im2gemm::Conv2dShape;
using Vec = std::vector<double>;

struct Dims {
  std::int64_t N, C, H, W, F, KH, KW, SH, SW, PH, PW, DH, DW, G, Cg, Fg, OH, OW, Hp, Wp, EKH, EKW,
      EH, EW;
};

inline Dims dims(const Conv2dShape& s) {
  Dims d{};
  d.N = s.batch;
  d.C = s.in_channels;
  d.H = s.in_height;
  d.W = s.in_width;
  d.F = s.out_channels;
  d.KH = s.kernel_height;
  d.KW = s.kernel_width;
  d.SH = s.stride_height;
  d.SW = s.stride_width;
  d.PH = s.pad_height;
  d.PW = s.pad_width;
  d.DH = s.dilation_height;
  d.DW = s.dilation_width;
  d.G = s.groups;
  d.Cg = d.C / d.G;
  d.Fg = d.F / d.G;
  d.Hp = d.H + 2 * d.PH;
  d.Wp = d.W + 2 * d.PW;
  d.EKH = (d.KH - 1) * d.DH + 1;
  d.EKW = (d.KW - 1) * d.DW + 1;  // dilated kernel extent
  d.OH = (d.Hp - d.EKH) / d.SH + 1;
  d.OW = (d.Wp - d.EKW) / d.SW + 1;
  d.EH = d.Hp - d.EKH + 1;
  d.EW = d.Wp - d.EKW + 1;  // stride-1 output size
  return d;
}

// The seed's padding(): a zero border of PH rows / PW columns around every plane.
inline Vec padded_input(const Dims& d, const std::vector<float>& x, std::int64_t n) {
  Vec p(static_cast<std::size_t>(d.C * d.Hp * d.Wp), 0.0);
  for (std::int64_t c = 0; c < d.C; ++c)
    for (std::int64_t i = 0; i < d.H; ++i)
      for (std::int64_t j = 0; j < d.W; ++j)
        p[(c * d.Hp + i + d.PH) * d.Wp + j + d.PW] = x[((n * d.C + c) * d.H + i) * d.W + j];
  return p;
}

// The filter with zeros inserted between taps (dilation), as a dense EKH x EKW kernel.
inline Vec dilated_kernel(const Dims& d, const std::vector<float>& w, std::int64_t f,
                          std::int64_t c) {
  Vec k(static_cast<std::size_t>(d.EKH * d.EKW), 0.0);
  for (std::int64_t a = 0; a < d.KH; ++a)
    for (std::int64_t b = 0; b < d.KW; ++b)
      k[(a * d.DH) * d.EKW + b * d.DW] = w[((f * d.Cg + c) * d.KH + a) * d.KW + b];
  return k;
}

inline double act(im2gemm::Activation a, double u) {
  switch (a) {
    case im2gemm::Activation::relu: return u > 0 ? u : 0;
    case im2gemm::Activation::sigmoid: return 1 / (1 + std::exp(-u));
    case im2gemm::Activation::tanh: return std::tanh(u);
    default: return u;
  }
}

inline double act_derivative_from_output(im2gemm::Activation a, double y) {
  switch (a) {
    case im2gemm::Activation::relu: return y > 0 ? 1 : 0;
    case im2gemm::Activation::sigmoid: return y * (1 - y);
    case im2gemm::Activation::tanh: return 1 - y * y;
    default: return 1;
  }
}

inline Vec forward(const Conv2dShape& s, const std::vector<float>& x, const std::vector<float>& w,
                   const std::vector<float>& bias, im2gemm::Activation a) {
  const Dims d = dims(s);
  Vec y(static_cast<std::size_t>(d.N * d.F * d.OH * d.OW));
  for (std::int64_t n = 0; n < d.N; ++n) {
    const Vec p = padded_input(d, x, n);
    for (std::int64_t f = 0; f < d.F; ++f) {
      const std::int64_t g = f / d.Fg;
      for (std::int64_t i = 0; i < d.OH; ++i)
        for (std::int64_t j = 0; j < d.OW; ++j) {
          double sum = bias.empty() ? 0.0 : bias[f];
          for (std::int64_t c = 0; c < d.Cg; ++c) {
            const Vec k = dilated_kernel(d, w, f, c);
            for (std::int64_t a2 = 0; a2 < d.EKH; ++a2)
              for (std::int64_t b = 0; b < d.EKW; ++b)
                sum += p[((g * d.Cg + c) * d.Hp + i * d.SH + a2) * d.Wp + j * d.SW + b] *
                       k[a2 * d.EKW + b];
          }
          y[((n * d.F + f) * d.OH + i) * d.OW + j] = act(a, sum);
        }
    }
  }
  return y;
}

// expand_sensitivity_map: dy placed at (i*SH, j*SW) of a stride-1 sized map.
inline Vec expanded(const Dims& d, const std::vector<float>& dy, std::int64_t n, std::int64_t f) {
  Vec e(static_cast<std::size_t>(d.EH * d.EW), 0.0);
  for (std::int64_t i = 0; i < d.OH; ++i)
    for (std::int64_t j = 0; j < d.OW; ++j)
      e[(i * d.SH) * d.EW + j * d.SW] = dy[((n * d.F + f) * d.OH + i) * d.OW + j];
  return e;
}

// bp_sensitivity_map: for every filter, a 'full' correlation of the expanded map with the
// filter rotated by 180 degrees gives the gradient of the padded input; the padding cells are
// dropped, and the result is multiplied by the previous layer's activation derivative.
inline Vec backward_data(const Conv2dShape& s, const std::vector<float>& dy,
                         const std::vector<float>& w, im2gemm::Activation input_act,
                         const std::vector<float>& x) {
  const Dims d = dims(s);
  Vec dx(static_cast<std::size_t>(d.N * d.C * d.H * d.W), 0.0);
  for (std::int64_t n = 0; n < d.N; ++n) {
    for (std::int64_t f = 0; f < d.F; ++f) {
      const std::int64_t g = f / d.Fg;
      const Vec e = expanded(d, dy, n, f);
      // 'full' zero padding of the expanded map: EKH-1 rows above and enough below to reach
      // the padded input size (asymmetric when the stride does not divide evenly).
      const std::int64_t zt = d.EKH - 1, zl = d.EKW - 1;
      for (std::int64_t c = 0; c < d.Cg; ++c) {
        const Vec k = dilated_kernel(d, w, f, c);
        for (std::int64_t i = 0; i < d.Hp; ++i)
          for (std::int64_t j = 0; j < d.Wp; ++j) {
            if (i < d.PH || i >= d.PH + d.H || j < d.PW || j >= d.PW + d.W) continue;  // dropped
            double sum = 0.0;
            for (std::int64_t a2 = 0; a2 < d.EKH; ++a2)
              for (std::int64_t b = 0; b < d.EKW; ++b) {
                const std::int64_t ei = i + a2 - zt, ej = j + b - zl;  // padded map coords
                if (ei < 0 || ei >= d.EH || ej < 0 || ej >= d.EW) continue;
                const double rot = k[(d.EKH - 1 - a2) * d.EKW + (d.EKW - 1 - b)];  // rot180
                sum += e[ei * d.EW + ej] * rot;
              }
            dx[((n * d.C + g * d.Cg + c) * d.H + i - d.PH) * d.W + j - d.PW] += sum;
          }
      }
    }
  }
  if (input_act != im2gemm::Activation::identity)
    for (std::size_t i = 0; i < dx.size(); ++i)
      dx[i] *= act_derivative_from_output(input_act, x[i]);
  return dx;
}

// Weight gradient: the padded input correlated with the expanded map (then the dilated taps
// are read back); bias gradient: the sum of the sensitivity map.
inline void backward_weights(const Conv2dShape& s, const std::vector<float>& x,
                             const std::vector<float>& dy, Vec& dw, Vec& db) {
  const Dims d = dims(s);
  dw.assign(static_cast<std::size_t>(d.F * d.Cg * d.KH * d.KW), 0.0);
  db.assign(static_cast<std::size_t>(d.F), 0.0);
  for (std::int64_t n = 0; n < d.N; ++n) {
    const Vec p = padded_input(d, x, n);
    for (std::int64_t f = 0; f < d.F; ++f) {
      const std::int64_t g = f / d.Fg;
      const Vec e = expanded(d, dy, n, f);
      for (std::int64_t c = 0; c < d.Cg; ++c)
        for (std::int64_t a2 = 0; a2 < d.KH; ++a2)
          for (std::int64_t b = 0; b < d.KW; ++b) {
            double sum = 0.0;
            for (std::int64_t i = 0; i < d.EH; ++i)
              for (std::int64_t j = 0; j < d.EW; ++j)
                sum += p[((g * d.Cg + c) * d.Hp + i + a2 * d.DH) * d.Wp + j + b * d.DW] *
                       e[i * d.EW + j];
            dw[((f * d.Cg + c) * d.KH + a2) * d.KW + b] += sum;
          }
      for (double v : e) db[f] += v;
    }
  }
}

}  // namespace seed
