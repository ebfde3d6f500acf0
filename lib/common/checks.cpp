#include "checks.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <sstream>

namespace im2gemm::detail {

void fail(const std::string& message) { throw std::invalid_argument("im2gemm: " + message); }

void fail_overflow(const char* what, std::int64_t a, char op, std::int64_t b) {
  fail(std::string(what) + " overflows 64 bits (" + std::to_string(a) + " " + op + " " +
       std::to_string(b) + ")");
}

void check_activation(Activation act, const char* what) {
  const auto v = static_cast<int>(act);
  if (v < static_cast<int>(Activation::identity) || v > static_cast<int>(Activation::tanh)) {
    fail(std::string(what) + " is not a valid Activation (value " + std::to_string(v) + ")");
  }
}

void check_size(const char* func, const char* name, std::size_t got, std::int64_t want) {
  if (static_cast<std::uint64_t>(want) != got) {
    fail(std::string(func) + ": " + name + " has " + std::to_string(got) +
         " elements, the shape needs " + std::to_string(want));
  }
}

void check_optional_size(const char* func, const char* name, std::size_t got, std::int64_t want) {
  if (got != 0 && static_cast<std::uint64_t>(want) != got) {
    fail(std::string(func) + ": " + name + " has " + std::to_string(got) +
         " elements, the shape needs 0 (none) or " + std::to_string(want));
  }
}

void check_no_overlap(const char* func, const char* out_name, const void* out,
                      std::size_t out_bytes, const char* in_name, const void* in,
                      std::size_t in_bytes) {
  if (out_bytes == 0 || in_bytes == 0) return;
  const auto o = reinterpret_cast<std::uintptr_t>(out);
  const auto i = reinterpret_cast<std::uintptr_t>(in);
  if (o < i + in_bytes && i < o + out_bytes) {
    fail(std::string(func) + ": output " + out_name + " overlaps input " + in_name);
  }
}

namespace {

[[noreturn]] void fail_below(const char* shape, const char* field, std::int64_t v,
                             std::int64_t lo) {
  fail(std::string(shape) + "." + field + " must be >= " + std::to_string(lo) + ", got " +
       std::to_string(v));
}
inline void require_at_least(const char* shape, const char* field, std::int64_t v,
                             std::int64_t lo) {
  if (v < lo) [[unlikely]]
    fail_below(shape, field, v, lo);
}

[[noreturn]] void fail_above(const char* shape, const char* field, std::int64_t v) {
  fail(std::string(shape) + "." + field + " must be <= " + std::to_string(kMaxStridePadDilation) +
       " (2^31 - 1), got " + std::to_string(v));
}
// Strides, pads and dilations: at most kMaxStridePadDilation, which keeps every window index
// the passes compute (and every intermediate of it) far inside 64 bits.
inline void require_window_param(const char* shape, const char* field, std::int64_t v) {
  if (v > kMaxStridePadDilation) [[unlikely]]
    fail_above(shape, field, v);
}

// The fields every pooling shape has, in the order their errors are reported: counts and
// kernel >= 1, strides >= 1, pads >= 0, strides and pads <= kMaxStridePadDilation.
template <class PoolShape>
void require_pool_fields(const char* S, const PoolShape& p) {
  require_at_least(S, "batch", p.batch, 1);
  require_at_least(S, "channels", p.channels, 1);
  require_at_least(S, "in_height", p.in_height, 1);
  require_at_least(S, "in_width", p.in_width, 1);
  require_at_least(S, "kernel_height", p.kernel_height, 1);
  require_at_least(S, "kernel_width", p.kernel_width, 1);
  require_at_least(S, "stride_height", p.stride_height, 1);
  require_at_least(S, "stride_width", p.stride_width, 1);
  require_at_least(S, "pad_height", p.pad_height, 0);
  require_at_least(S, "pad_width", p.pad_width, 0);
  require_window_param(S, "stride_height", p.stride_height);
  require_window_param(S, "stride_width", p.stride_width);
  require_window_param(S, "pad_height", p.pad_height);
  require_window_param(S, "pad_width", p.pad_width);
}

// Largest element count of one tensor: its bytes must stay below 2^62.
constexpr std::int64_t kMaxElements = std::int64_t{1} << 60;

std::int64_t tensor_elements(std::initializer_list<std::int64_t> dims, const char* what) {
  std::int64_t n = 1;
  for (auto d : dims) n = checked_mul(n, d, what);
  if (n > kMaxElements) {
    fail(std::string(what) + " has " + std::to_string(n) + " elements, more than 2^60");
  }
  return n;
}

// Output length of a sliding window; the caller has checked every operand is sane.
std::int64_t window_out(const char* shape, const char* dim, std::int64_t in, std::int64_t pad,
                        std::int64_t kernel, std::int64_t dilation, std::int64_t stride) {
  const std::int64_t padded = checked_add(in, checked_mul(2, pad, dim), dim);
  const std::int64_t extent =
      checked_add(checked_mul(kernel - 1, dilation, dim), 1, dim);  // dilated kernel
  if (extent > padded) {
    fail(std::string(shape) + ": the " + dim + " kernel extent " + std::to_string(extent) +
         " (kernel " + std::to_string(kernel) + ", dilation " + std::to_string(dilation) +
         ") is larger than the padded input " + std::to_string(padded) + " (" + std::to_string(in) +
         " + 2*" + std::to_string(pad) + ")");
  }
  return (padded - extent) / stride + 1;
}

}  // namespace

}  // namespace im2gemm::detail

namespace im2gemm {

using detail::checked_mul;
using detail::fail;

// ---------------------------------------------------------------- Conv2dShape

std::int64_t Conv2dShape::out_height() const {
  return (in_height + 2 * pad_height - ((kernel_height - 1) * dilation_height + 1)) /
             stride_height +
         1;
}
std::int64_t Conv2dShape::out_width() const {
  return (in_width + 2 * pad_width - ((kernel_width - 1) * dilation_width + 1)) / stride_width + 1;
}

void Conv2dShape::validate() const {
  const char* S = "Conv2dShape";
  detail::require_at_least(S, "batch", batch, 1);
  detail::require_at_least(S, "in_channels", in_channels, 1);
  detail::require_at_least(S, "in_height", in_height, 1);
  detail::require_at_least(S, "in_width", in_width, 1);
  detail::require_at_least(S, "out_channels", out_channels, 1);
  detail::require_at_least(S, "kernel_height", kernel_height, 1);
  detail::require_at_least(S, "kernel_width", kernel_width, 1);
  detail::require_at_least(S, "stride_height", stride_height, 1);
  detail::require_at_least(S, "stride_width", stride_width, 1);
  detail::require_at_least(S, "pad_height", pad_height, 0);
  detail::require_at_least(S, "pad_width", pad_width, 0);
  detail::require_at_least(S, "dilation_height", dilation_height, 1);
  detail::require_at_least(S, "dilation_width", dilation_width, 1);
  detail::require_at_least(S, "groups", groups, 1);
  detail::require_window_param(S, "stride_height", stride_height);
  detail::require_window_param(S, "stride_width", stride_width);
  detail::require_window_param(S, "pad_height", pad_height);
  detail::require_window_param(S, "pad_width", pad_width);
  detail::require_window_param(S, "dilation_height", dilation_height);
  detail::require_window_param(S, "dilation_width", dilation_width);
  if (in_channels % groups != 0) {
    fail("Conv2dShape.in_channels " + std::to_string(in_channels) + " is not divisible by groups " +
         std::to_string(groups));
  }
  if (out_channels % groups != 0) {
    fail("Conv2dShape.out_channels " + std::to_string(out_channels) +
         " is not divisible by groups " + std::to_string(groups));
  }
  const auto oh = detail::window_out(S, "height", in_height, pad_height, kernel_height,
                                     dilation_height, stride_height);
  const auto ow = detail::window_out(S, "width", in_width, pad_width, kernel_width, dilation_width,
                                     stride_width);
  detail::tensor_elements({batch, in_channels, in_height, in_width}, "Conv2dShape input x");
  detail::tensor_elements({out_channels, in_channels / groups, kernel_height, kernel_width},
                          "Conv2dShape weights w");
  detail::tensor_elements({batch, out_channels, oh, ow}, "Conv2dShape output y");
  // The lowered GEMM's inner dimension and the column block's rows.
  detail::tensor_elements({in_channels / groups, kernel_height, kernel_width, oh, ow},
                          "Conv2dShape column matrix of one image");
  detail::tensor_elements({batch, out_channels, oh, ow, in_channels / groups, kernel_height,
                           kernel_width},
                          "Conv2dShape multiply-accumulate count");
}

std::int64_t Conv2dShape::x_size() const { return batch * in_channels * in_height * in_width; }
std::int64_t Conv2dShape::w_size() const {
  return out_channels * (in_channels / groups) * kernel_height * kernel_width;
}
std::int64_t Conv2dShape::y_size() const {
  return batch * out_channels * out_height() * out_width();
}
std::int64_t Conv2dShape::macs() const {
  return y_size() * (in_channels / groups) * kernel_height * kernel_width;
}

// ------------------------------------------------------------- MaxPool2dShape

std::int64_t MaxPool2dShape::out_height() const {
  return detail::pool_out_length(in_height, pad_height, kernel_height, stride_height, ceil_mode);
}
std::int64_t MaxPool2dShape::out_width() const {
  return detail::pool_out_length(in_width, pad_width, kernel_width, stride_width, ceil_mode);
}

void MaxPool2dShape::validate() const {
  const char* S = "MaxPool2dShape";
  detail::require_pool_fields(S, *this);
  if (pad_height >= kernel_height) {
    fail("MaxPool2dShape.pad_height " + std::to_string(pad_height) +
         " must be smaller than kernel_height " + std::to_string(kernel_height));
  }
  if (pad_width >= kernel_width) {
    fail("MaxPool2dShape.pad_width " + std::to_string(pad_width) +
         " must be smaller than kernel_width " + std::to_string(kernel_width));
  }
  const auto oh = ceil_mode ? detail::pool_out_length_checked(S, "height", in_height, pad_height,
                                                              kernel_height, stride_height, true)
                            : detail::window_out(S, "height", in_height, pad_height, kernel_height,
                                                 1, stride_height);
  const auto ow = ceil_mode ? detail::pool_out_length_checked(S, "width", in_width, pad_width,
                                                              kernel_width, stride_width, true)
                            : detail::window_out(S, "width", in_width, pad_width, kernel_width, 1,
                                                 stride_width);
  const auto plane = checked_mul(in_height, in_width, "MaxPool2dShape input plane");
  if (plane > std::numeric_limits<std::int32_t>::max()) {
    fail("MaxPool2dShape: an input plane of " + std::to_string(in_height) + "x" +
         std::to_string(in_width) + " = " + std::to_string(plane) +
         " cells is too large for an int32_t argmax index");
  }
  detail::tensor_elements({batch, channels, in_height, in_width}, "MaxPool2dShape input x");
  detail::tensor_elements({batch, channels, oh, ow}, "MaxPool2dShape output y");
}

std::int64_t MaxPool2dShape::x_size() const { return batch * channels * in_height * in_width; }
std::int64_t MaxPool2dShape::y_size() const {
  return batch * channels * out_height() * out_width();
}

}  // namespace im2gemm

namespace im2gemm::detail {

void check_conv2d_forward(const Conv2dShape& s, std::span<const float> x, std::span<const float> w,
                          std::span<const float> bias, std::span<float> y, Activation act) {
  const char* F = "conv2d_forward";
  s.validate();
  check_activation(act, "conv2d_forward: act");
  check_size(F, "x", x.size(), s.x_size());
  check_size(F, "w", w.size(), s.w_size());
  check_optional_size(F, "bias", bias.size(), s.out_channels);
  check_size(F, "y", y.size(), s.y_size());
  check_no_overlap(F, "y", y, "x", x);
  check_no_overlap(F, "y", y, "w", w);
  check_no_overlap(F, "y", y, "bias", bias);
}

void check_conv2d_backward_data(const Conv2dShape& s, std::span<const float> dy,
                                std::span<const float> w, std::span<float> dx,
                                Activation input_activation, std::span<const float> x) {
  const char* F = "conv2d_backward_data";
  s.validate();
  check_activation(input_activation, "conv2d_backward_data: input_activation");
  check_size(F, "dy", dy.size(), s.y_size());
  check_size(F, "w", w.size(), s.w_size());
  check_size(F, "dx", dx.size(), s.x_size());
  if (input_activation == Activation::identity) {
    check_optional_size(F, "x", x.size(), s.x_size());
  } else if (x.size() != static_cast<std::uint64_t>(s.x_size())) {
    fail(std::string(F) + ": x has " + std::to_string(x.size()) +
         " elements; a non-identity input_activation (value " +
         std::to_string(static_cast<int>(input_activation)) + ") needs the layer input x of " +
         std::to_string(s.x_size()));
  }
  check_no_overlap(F, "dx", dx, "dy", dy);
  check_no_overlap(F, "dx", dx, "w", w);
  check_no_overlap(F, "dx", dx, "x", x);
}

void check_conv2d_backward_weights(const Conv2dShape& s, std::span<const float> x,
                                   std::span<const float> dy, std::span<float> dw,
                                   std::span<float> db) {
  const char* F = "conv2d_backward_weights";
  s.validate();
  check_size(F, "x", x.size(), s.x_size());
  check_size(F, "dy", dy.size(), s.y_size());
  check_size(F, "dw", dw.size(), s.w_size());
  check_optional_size(F, "db", db.size(), s.out_channels);
  check_no_overlap(F, "dw", dw, "x", x);
  check_no_overlap(F, "dw", dw, "dy", dy);
  check_no_overlap(F, "db", db, "x", x);
  check_no_overlap(F, "db", db, "dy", dy);
  check_no_overlap(F, "db", db, "dw", std::span<const float>(dw));
}

void check_maxpool2d_forward(const MaxPool2dShape& s, std::span<const float> x, std::span<float> y,
                             std::span<std::int32_t> argmax) {
  const char* F = "maxpool2d_forward";
  s.validate();
  check_size(F, "x", x.size(), s.x_size());
  check_size(F, "y", y.size(), s.y_size());
  check_size(F, "argmax", argmax.size(), s.y_size());
  check_no_overlap(F, "y", y, "x", x);
  check_no_overlap(F, "argmax", argmax, "x", x);
  check_no_overlap(F, "argmax", argmax, "y", std::span<const float>(y));
}

void check_maxpool2d_backward(const MaxPool2dShape& s, std::span<const float> dy,
                              std::span<const std::int32_t> argmax, std::span<float> dx) {
  const char* F = "maxpool2d_backward";
  s.validate();
  check_size(F, "dy", dy.size(), s.y_size());
  check_size(F, "argmax", argmax.size(), s.y_size());
  check_size(F, "dx", dx.size(), s.x_size());
  check_no_overlap(F, "dx", dx, "dy", dy);
  check_no_overlap(F, "dx", dx, "argmax", argmax);
  const std::int64_t plane = s.in_height * s.in_width;
  const std::int64_t n = static_cast<std::int64_t>(argmax.size());
  // Chunks are scanned without early exit (an unsigned compare catches negatives too), so the
  // scan vectorises and runs at memory speed on every thread; only the first chunk holding a
  // bad entry is scanned again to name the first bad index.
  const auto limit = static_cast<std::uint32_t>(plane);  // validate(): plane <= INT32_MAX
  const std::int32_t* a = argmax.data();
  constexpr std::int64_t kChunk = std::int64_t{1} << 14;
  const std::int64_t chunks = (n + kChunk - 1) / kChunk;
  std::int64_t first_bad = chunks;
  const int threads = chunks >= 8 ? num_threads() : 1;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4) reduction(min : first_bad)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t end = std::min(n, (c + 1) * kChunk);
    unsigned bad = 0;
    for (std::int64_t i = c * kChunk; i < end; ++i) {
      bad |= static_cast<unsigned>(static_cast<std::uint32_t>(a[i]) >= limit);
    }
    if (bad != 0 && c < first_bad) first_bad = c;
  }
  for (std::int64_t i = first_bad * kChunk; i < n; ++i) {
    if (a[i] < 0 || a[i] >= plane) {
      fail(std::string(F) + ": argmax[" + std::to_string(i) + "] = " + std::to_string(a[i]) +
           " is outside its input plane [0, " + std::to_string(plane) + ")");
    }
  }
}

}  // namespace im2gemm::detail

// ------------------------------------------------------------- pooling windows, AvgPool2dShape

namespace im2gemm::detail {

namespace {
// floor(a / b) for b > 0.
inline std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  const std::int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
}  // namespace

std::int64_t pool_out_length(std::int64_t in, std::int64_t pad, std::int64_t kernel,
                             std::int64_t stride, bool ceil_mode) {
  const std::int64_t span = in + 2 * pad - kernel;  // negative if the kernel overhangs
  std::int64_t out = floor_div(span + (ceil_mode ? stride - 1 : 0), stride) + 1;
  if (ceil_mode && out >= 1 && (out - 1) * stride >= in + pad) --out;
  return out;
}

std::int64_t pool_out_length_checked(const char* shape, const char* dim, std::int64_t in,
                                     std::int64_t pad, std::int64_t kernel, std::int64_t stride,
                                     bool ceil_mode) {
  const std::int64_t padded = checked_add(in, checked_mul(2, pad, dim), dim);
  const std::int64_t span = padded - kernel;  // padded >= 1 and kernel >= 1: no overflow
  const std::int64_t out =
      floor_div(ceil_mode ? checked_add(span, stride - 1, dim) : span, stride) + 1;
  // (out - 1) * stride <= span + stride - 1 < 2^63: the correction below cannot overflow.
  if (out < 1) {
    fail(std::string(shape) + ": no " + dim + " window fits: kernel " + std::to_string(kernel) +
         ", stride " + std::to_string(stride) + (ceil_mode ? " (ceil mode)" : "") +
         ", padded input " + std::to_string(padded) + " (" + std::to_string(in) + " + 2*" +
         std::to_string(pad) + ")");
  }
  return pool_out_length(in, pad, kernel, stride, ceil_mode);
}

}  // namespace im2gemm::detail

namespace im2gemm {

std::int64_t AvgPool2dShape::out_height() const {
  return detail::pool_out_length(in_height, pad_height, kernel_height, stride_height, ceil_mode);
}
std::int64_t AvgPool2dShape::out_width() const {
  return detail::pool_out_length(in_width, pad_width, kernel_width, stride_width, ceil_mode);
}

void AvgPool2dShape::validate() const {
  const char* S = "AvgPool2dShape";
  detail::require_pool_fields(S, *this);
  if (pad_height > kernel_height / 2) {
    fail("AvgPool2dShape.pad_height " + std::to_string(pad_height) +
         " must be at most half of kernel_height " + std::to_string(kernel_height) + " (" +
         std::to_string(kernel_height / 2) + ")");
  }
  if (pad_width > kernel_width / 2) {
    fail("AvgPool2dShape.pad_width " + std::to_string(pad_width) +
         " must be at most half of kernel_width " + std::to_string(kernel_width) + " (" +
         std::to_string(kernel_width / 2) + ")");
  }
  const auto oh = detail::pool_out_length_checked(S, "height", in_height, pad_height, kernel_height,
                                                  stride_height, ceil_mode);
  const auto ow = detail::pool_out_length_checked(S, "width", in_width, pad_width, kernel_width,
                                                  stride_width, ceil_mode);
  // A divisor is at most kernel_height * kernel_width.
  checked_mul(kernel_height, kernel_width, "AvgPool2dShape kernel area");
  detail::tensor_elements({batch, channels, in_height, in_width}, "AvgPool2dShape input x");
  detail::tensor_elements({batch, channels, oh, ow}, "AvgPool2dShape output y");
}

std::int64_t AvgPool2dShape::x_size() const { return batch * channels * in_height * in_width; }
std::int64_t AvgPool2dShape::y_size() const {
  return batch * channels * out_height() * out_width();
}

}  // namespace im2gemm

namespace im2gemm::detail {

void check_avgpool2d_forward(const AvgPool2dShape& s, std::span<const float> x,
                             std::span<float> y) {
  const char* F = "avgpool2d_forward";
  s.validate();
  check_size(F, "x", x.size(), s.x_size());
  check_size(F, "y", y.size(), s.y_size());
  check_no_overlap(F, "y", y, "x", x);
}

void check_avgpool2d_backward(const AvgPool2dShape& s, std::span<const float> dy,
                              std::span<float> dx) {
  const char* F = "avgpool2d_backward";
  s.validate();
  check_size(F, "dy", dy.size(), s.y_size());
  check_size(F, "dx", dx.size(), s.x_size());
  check_no_overlap(F, "dx", dx, "dy", dy);
}

}  // namespace im2gemm::detail
