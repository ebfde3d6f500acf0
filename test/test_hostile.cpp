// Hostile input and many-core machines (issue 14): extreme shapes, every thread count the
// planner can be asked for, non-finite values facing the padding, unreadable parameter files.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <sstream>
#include <thread>

#include <unistd.h>

#include <im2gemm/layers.hpp>

#include "common/isa.hpp"
#include "conv/engine.hpp"
#include "conv/packed_conv.hpp"
#include "conv/plan.hpp"
#include "test_util.hpp"

using namespace im2gemm;
using detail::ConvPass;
using std::int64_t;

namespace {

constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr std::size_t kGuard = 64;  // floats of sentinel on each side of every output

// An output buffer with a sentinel-filled guard zone on each side: span() is what the call
// sees, guards_intact() says whether anything was written outside it.
struct Guarded {
  std::vector<float> all;
  std::size_t n;
  explicit Guarded(std::size_t size) : all(size + 2 * kGuard, testutil::kSentinel), n(size) {}
  std::span<float> span() { return {all.data() + kGuard, n}; }
  std::vector<float> inside() const {
    return {all.begin() + kGuard, all.begin() + static_cast<std::ptrdiff_t>(kGuard + n)};
  }
  bool guards_intact() const {
    for (std::size_t i = 0; i < kGuard; ++i) {
      if (!(all[i] == testutil::kSentinel) || !(all[kGuard + n + i] == testutil::kSentinel)) {
        return false;
      }
    }
    return true;
  }
  bool untouched() const {
    for (float v : all)
      if (!(v == testutil::kSentinel)) return false;
    return true;
  }
};

template <class F>
std::string invalid_message(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

// All three passes, fast and reference, on guarded outputs: equal results (NaN matches NaN),
// no write outside the spans. Small-integer data: exact.
void check_conv_like_reference(const Conv2dShape& s) {
  INFO(testutil::describe(s));
  const auto x = testutil::random_ints(s.x_size(), 1);
  const auto w = testutil::random_ints(s.w_size(), 2);
  const auto b = testutil::random_ints(s.out_channels, 3);
  const auto dy = testutil::random_ints(s.y_size(), 4);
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    Guarded y(s.y_size()), y_ref(s.y_size());
    conv2d_forward(s, x, w, b, y.span());
    reference::conv2d_forward(s, x, w, b, y_ref.span());
    CHECK(y.guards_intact());
    CHECK_CLOSE_SPANS(y.inside(), y_ref.inside(), 0.0f, 0.0f);
    Guarded dx(s.x_size()), dx_ref(s.x_size());
    conv2d_backward_data(s, dy, w, dx.span());
    reference::conv2d_backward_data(s, dy, w, dx_ref.span());
    CHECK(dx.guards_intact());
    CHECK_CLOSE_SPANS(dx.inside(), dx_ref.inside(), 0.0f, 0.0f);
    Guarded dw(s.w_size()), dw_ref(s.w_size()), db(s.out_channels), db_ref(s.out_channels);
    conv2d_backward_weights(s, x, dy, dw.span(), db.span());
    reference::conv2d_backward_weights(s, x, dy, dw_ref.span(), db_ref.span());
    CHECK(dw.guards_intact());
    CHECK(db.guards_intact());
    CHECK_CLOSE_SPANS(dw.inside(), dw_ref.inside(), 0.0f, 0.0f);
    CHECK_CLOSE_SPANS(db.inside(), db_ref.inside(), 0.0f, 0.0f);
  }
  set_num_threads(0);
}

// Every pass of both implementations throws std::invalid_argument naming `needle` and writes
// nothing.
void check_conv_rejected(const Conv2dShape& s, const std::string& needle) {
  INFO(testutil::describe(s));
  CHECK(invalid_message([&] { s.validate(); }).find(needle) != std::string::npos);
  // Spans of the sizes the shape's formulas give (when small), so that a call that misses the
  // shape check runs into the arithmetic; and of one output too.
  const std::vector<float> x(static_cast<std::size_t>(s.x_size()), 1.0f);
  const std::vector<float> w(static_cast<std::size_t>(s.w_size()), 1.0f);
  const std::vector<float> dy(4096, 1.0f);
  const int64_t formula_ny = s.y_size();
  for (std::size_t ny :
       {std::size_t{1}, formula_ny >= 1 && formula_ny <= 4096 ? static_cast<std::size_t>(formula_ny)
                                                              : std::size_t{2}}) {
    Guarded y(ny), dx(x.size()), dw(w.size());
    const std::span<const float> dys(dy.data(), ny);
    for (bool ref : {false, true}) {
      CAPTURE(ref);
      auto fwd = ref ? &reference::conv2d_forward : &im2gemm::conv2d_forward;
      auto bd = ref ? &reference::conv2d_backward_data : &im2gemm::conv2d_backward_data;
      auto bw = ref ? &reference::conv2d_backward_weights : &im2gemm::conv2d_backward_weights;
      CHECK(invalid_message([&] {
              fwd(s, x, w, {}, y.span(), Activation::identity);
            }).find(needle) != std::string::npos);
      CHECK(invalid_message([&] {
              bd(s, dys, w, dx.span(), Activation::identity, {});
            }).find(needle) != std::string::npos);
      CHECK(invalid_message([&] { bw(s, x, dys, dw.span(), {}); }).find(needle) !=
            std::string::npos);
      CHECK(y.untouched());
      CHECK(dx.untouched());
      CHECK(dw.untouched());
    }
  }
}

}  // namespace

// Finding 1: a stride of INT64_MAX made the lowering's valid-column arithmetic overflow; the
// fast passes read before x and wrote before dx (heap corruption).
TEST_CASE("hostile conv: strides, pads and dilations too large to describe a layer are rejected") {
  Conv2dShape s;
  s.in_height = 5;
  s.in_width = 5;
  s.kernel_height = 3;
  s.kernel_width = 3;
  s.pad_width = 3;
  for (int64_t stride : {kI64Max, kI64Max - 1, int64_t{1} << 40, kMaxStridePadDilation + 1}) {
    CAPTURE(stride);
    Conv2dShape a = s;
    a.stride_width = stride;
    check_conv_rejected(a, "stride_width");
    Conv2dShape b = s;
    b.stride_height = stride;
    b.pad_height = 3;
    check_conv_rejected(b, "stride_height");
  }
  for (int64_t big : {kI64Max / 4, int64_t{1} << 59, kMaxStridePadDilation + 1}) {
    CAPTURE(big);
    Conv2dShape a = s;
    a.pad_width = big;
    a.stride_width = kMaxStridePadDilation;
    a.pad_height = 0;
    check_conv_rejected(a, "pad_width");
    Conv2dShape b = s;
    b.pad_height = big;
    b.stride_height = kMaxStridePadDilation;
    check_conv_rejected(b, "pad_height");
    Conv2dShape c = s;
    c.kernel_width = 1;
    c.dilation_width = big;
    check_conv_rejected(c, "dilation_width");
    Conv2dShape d = s;
    d.kernel_height = 1;
    d.dilation_height = big;
    check_conv_rejected(d, "dilation_height");
  }
  // The message names the field and both values.
  s.stride_width = kI64Max;
  const std::string msg = invalid_message([&] { s.validate(); });
  CHECK(msg.find("Conv2dShape.stride_width") != std::string::npos);
  CHECK(msg.find(std::to_string(kI64Max)) != std::string::npos);
  CHECK(msg.find(std::to_string(kMaxStridePadDilation)) != std::string::npos);
}

// Extreme shapes that validate() accepts compute the reference's result and write nothing
// outside their spans (the sanitizer builds run this too: no overflow anywhere).
TEST_CASE("hostile conv: extreme valid strides, pads and dilations give the reference's result") {
  std::vector<Conv2dShape> shapes;
  auto add = [&](auto&& edit) {
    Conv2dShape s;
    s.batch = 2;
    s.in_channels = 2;
    s.in_height = 5;
    s.in_width = 6;
    s.out_channels = 3;
    s.kernel_height = 3;
    s.kernel_width = 3;
    s.pad_height = 1;
    s.pad_width = 1;
    edit(s);
    shapes.push_back(s);
  };
  const int64_t M = kMaxStridePadDilation;
  add([&](Conv2dShape& s) {
    s.stride_width = M;
    s.pad_width = 3;
  });  // the shape, at the bound
  add([&](Conv2dShape& s) {
    s.stride_height = M;
    s.pad_height = 2;
  });
  add([&](Conv2dShape& s) {
    s.stride_height = M;
    s.stride_width = M;
  });
  add([&](Conv2dShape& s) {
    s.stride_width = M - 1;
    s.pad_width = 2;
    s.batch = 1;
    s.in_channels = 1;
    s.out_channels = 1;
  });
  // Pads at the bound: three output columns, all but the middle one pure padding.
  add([&](Conv2dShape& s) {
    s.pad_width = M;
    s.stride_width = M;
  });
  add([&](Conv2dShape& s) {
    s.pad_height = M;
    s.stride_height = M;
    s.pad_width = M;
    s.stride_width = M;
  });
  // Dilation at the bound: the two taps of a kernel are a whole padded input apart.
  add([&](Conv2dShape& s) {
    s.kernel_width = 2;
    s.dilation_width = M;
    s.pad_width = M / 2 + 1;
    s.stride_width = M;
  });
  add([&](Conv2dShape& s) {
    s.kernel_height = 1;
    s.dilation_height = M;
    s.stride_height = M;
  });
  for (const auto& s : shapes) {
    REQUIRE_NOTHROW(s.validate());
    check_conv_like_reference(s);
  }
}

// Finding 2: pooling's first valid output column (PW + SW - 1) / SW overflowed to -1 and every
// ISA wrote y[-1] and argmax[-1].
TEST_CASE(
    "hostile avg pool: strides and pads too large to describe a layer are rejected, nothing written") {
  im2gemm::AvgPool2dShape s;
  s.in_height = 3;
  s.in_width = 4;
  s.kernel_height = 3;
  s.kernel_width = 3;
  s.pad_width = 1;
  for (int64_t stride : {kI64Max, kI64Max - 1, int64_t{1} << 62, kMaxStridePadDilation + 1}) {
    for (bool height : {false, true}) {
      im2gemm::AvgPool2dShape a = s;
      (height ? a.stride_height : a.stride_width) = stride;
      const char* field = height ? "stride_height" : "stride_width";
      CHECK(invalid_message([&] { a.validate(); }).find(field) != std::string::npos);
      const std::vector<float> x(12, 1.0f);
      Guarded y(2);
      CHECK(invalid_message([&] { im2gemm::avgpool2d_forward(a, x, y.span()); }).find(field) !=
            std::string::npos);
      CHECK(y.guards_intact());
      CHECK(y.untouched());
    }
  }
  im2gemm::AvgPool2dShape p = s;
  p.kernel_width = int64_t{1} << 40;  // pad <= kernel / 2 alone would allow a huge pad
  p.pad_width = kMaxStridePadDilation + 1;
  CHECK(invalid_message([&] { p.validate(); }).find("pad_width") != std::string::npos);
}

TEST_CASE(
    "hostile pool: strides too large to describe a layer are rejected, extreme valid ones are right") {
  MaxPool2dShape s;
  s.in_height = 3;
  s.in_width = 4;
  s.kernel_height = 3;
  s.kernel_width = 3;
  s.pad_width = 2;
  s.stride_height = 1;
  for (int64_t stride : {kI64Max, kI64Max - 1, int64_t{1} << 62, kMaxStridePadDilation + 1}) {
    for (bool height : {false, true}) {
      MaxPool2dShape a = s;
      (height ? a.stride_height : a.stride_width) = stride;
      if (height) a.pad_height = 2;
      INFO(testutil::describe(a));
      const char* field = height ? "stride_height" : "stride_width";
      CHECK(invalid_message([&] { a.validate(); }).find(field) != std::string::npos);
      // Spans of the sizes the shape's formulas give: a call that misses the shape check runs.
      const std::vector<float> x(12, 1.0f);
      const auto ny = static_cast<std::size_t>(a.out_height() * a.out_width());
      REQUIRE(ny >= 1);
      REQUIRE(ny <= 3);
      for (bool ref : {false, true}) {
        Guarded y(ny);
        std::vector<std::int32_t> argmax(ny + 2, 77);
        auto fwd = ref ? &reference::maxpool2d_forward : &im2gemm::maxpool2d_forward;
        CHECK(invalid_message([&] {
                fwd(a, x, y.span(), std::span<std::int32_t>(argmax.data() + 1, ny));
              }).find(field) != std::string::npos);
        CHECK(y.guards_intact());  // y[-1] was written
        CHECK(y.untouched());
        CHECK(argmax == std::vector<std::int32_t>(ny + 2, 77));
        Guarded dx(12);
        const std::vector<float> dy(ny, 1.0f);
        const std::vector<std::int32_t> am(ny, 0);
        auto bwd = ref ? &reference::maxpool2d_backward : &im2gemm::maxpool2d_backward;
        CHECK(invalid_message([&] { bwd(a, dy, am, dx.span()); }).find(field) != std::string::npos);
        CHECK(dx.untouched());
      }
    }
  }
  // At the bound: the reference's result, nothing written outside y, argmax and dx.
  for (int64_t stride : {kMaxStridePadDilation, kMaxStridePadDilation - 1}) {
    for (int64_t pad : {0, 1, 2}) {
      MaxPool2dShape a = s;
      a.batch = 2;
      a.channels = 3;
      a.stride_width = stride;
      a.pad_width = pad;
      a.stride_height = stride;
      a.pad_height = pad;
      INFO(testutil::describe(a));
      REQUIRE_NOTHROW(a.validate());
      const auto x = testutil::random_floats(a.x_size(), 5);
      const auto n = static_cast<std::size_t>(a.y_size());
      Guarded y(n), y_ref(n);
      std::vector<std::int32_t> am(n + 2, -7), am_ref(n + 2, -7);
      maxpool2d_forward(a, x, y.span(), std::span<std::int32_t>(am.data() + 1, n));
      reference::maxpool2d_forward(a, x, y_ref.span(),
                                   std::span<std::int32_t>(am_ref.data() + 1, n));
      CHECK(y.guards_intact());
      CHECK(testutil::bitwise_equal(y.inside(), y_ref.inside()));
      CHECK(am == am_ref);
      CHECK(am.front() == -7);
      CHECK(am.back() == -7);
      const auto dy = testutil::random_floats(n, 6);
      Guarded dx(a.x_size()), dx_ref(a.x_size());
      maxpool2d_backward(a, dy, std::span<const std::int32_t>(am.data() + 1, n), dx.span());
      reference::maxpool2d_backward(a, dy, std::span<const std::int32_t>(am.data() + 1, n),
                                    dx_ref.span());
      CHECK(dx.guards_intact());
      CHECK(testutil::bitwise_equal(dx.inside(), dx_ref.inside()));
    }
  }
}

// Finding 5: the padding is zeros that multiply (PyTorch's semantics): an infinite weight
// facing the padding gives 0 * inf = NaN, in the reference as in the fast path.
TEST_CASE(
    "hostile conv: an infinite weight or dy facing zero padding gives NaN, fast and reference alike") {
  Conv2dShape s;
  s.in_height = 4;
  s.in_width = 4;
  s.kernel_height = 3;
  s.kernel_width = 3;
  s.pad_height = 1;
  s.pad_width = 1;  // 4x4 output; the border outputs see the padding
  const std::vector<float> x(16, 1.0f);
  std::vector<float> w(9, 1.0f);
  w[0] = kInf;  // top-left tap: in the padding for output row 0 and output column 0
  for (bool ref : {false, true}) {
    CAPTURE(ref);
    std::vector<float> y(16, 0.0f);
    (ref ? reference::conv2d_forward : im2gemm::conv2d_forward)(s, x, w, {}, y,
                                                                Activation::identity);
    for (int oh = 0; oh < 4; ++oh) {
      for (int ow = 0; ow < 4; ++ow) {
        CAPTURE(oh);
        CAPTURE(ow);
        const float v = y[oh * 4 + ow];
        if (oh == 0 || ow == 0) {
          CHECK(std::isnan(v));  // inf * padding zero
        } else {
          CHECK(v == kInf);  // inf * 1 + finite
        }
      }
    }
  }
  // Backward weights: dw[kh][kw] = sum of x_padded * dy; an infinite dy at a border output
  // meets the padding through the taps that look outside the input.
  std::vector<float> dy(16, 0.0f);
  dy[0] = kInf;  // output (0, 0): taps of row 0 and column 0 lie in the padding
  for (bool ref : {false, true}) {
    CAPTURE(ref);
    std::vector<float> dw(9, 0.0f), db(1, 0.0f);
    (ref ? reference::conv2d_backward_weights : im2gemm::conv2d_backward_weights)(s, x, dy, dw, db);
    for (int kh = 0; kh < 3; ++kh) {
      for (int kw = 0; kw < 3; ++kw) {
        CAPTURE(kh);
        CAPTURE(kw);
        if (kh == 0 || kw == 0) {
          CHECK(std::isnan(dw[kh * 3 + kw]));
        } else {
          CHECK(dw[kh * 3 + kw] == kInf);
        }
      }
    }
    CHECK(db[0] == kInf);
  }
  // Backward data scatters into dx only: the padding receives nothing, so an infinite weight
  // facing it gives no NaN (x-cells it reaches get inf * dy).
  const std::vector<float> ones(16, 1.0f);
  std::vector<float> dx(16), dx_ref(16);
  conv2d_backward_data(s, ones, w, dx);
  reference::conv2d_backward_data(s, ones, w, dx_ref);
  CHECK_CLOSE_SPANS(dx, dx_ref, 0.0f, 0.0f);
  // Random shapes with non-finite values sprinkled in: the fast path equals the reference.
  std::mt19937 rng(14);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int i = 0; i < 40; ++i) {
    Conv2dShape r;
    r.batch = pick(1, 2);
    r.in_channels = pick(1, 3);
    r.out_channels = pick(1, 3);
    r.in_height = pick(1, 7);
    r.in_width = pick(1, 7);
    r.kernel_height = pick(1, 3);
    r.kernel_width = pick(1, 3);
    r.pad_height = pick(0, 2);
    r.pad_width = pick(0, 2);
    r.stride_height = pick(1, 2);
    r.stride_width = pick(1, 2);
    if (r.in_height + 2 * r.pad_height < r.kernel_height ||
        r.in_width + 2 * r.pad_width < r.kernel_width) {
      continue;
    }
    INFO(testutil::describe(r));
    auto xs = testutil::random_ints(r.x_size(), 10 + i);
    auto ws = testutil::random_ints(r.w_size(), 20 + i);
    auto dys = testutil::random_ints(r.y_size(), 30 + i);
    ws[pick(0, static_cast<int>(ws.size()) - 1)] = pick(0, 1) ? kInf : -kInf;
    dys[pick(0, static_cast<int>(dys.size()) - 1)] = kInf;
    std::vector<float> y(r.y_size()), y_ref(r.y_size());
    conv2d_forward(r, xs, ws, {}, y);
    reference::conv2d_forward(r, xs, ws, {}, y_ref);
    CHECK_CLOSE_SPANS(y, y_ref, 0.0f, 0.0f);
    std::vector<float> g(r.w_size()), g_ref(r.w_size());
    conv2d_backward_weights(r, xs, dys, g, {});
    reference::conv2d_backward_weights(r, xs, dys, g_ref, {});
    CHECK_CLOSE_SPANS(g, g_ref, 0.0f, 0.0f);
    std::vector<float> d(r.x_size()), d_ref(r.x_size());
    conv2d_backward_data(r, dys, ws, d);
    reference::conv2d_backward_data(r, dys, ws, d_ref);
    CHECK_CLOSE_SPANS(d, d_ref, 0.0f, 0.0f);
  }
}

// Every backend on every ISA this CPU has: the packed engine computes backward data as a
// 'full' correlation of dy, whose zero border meets every weight; an infinite weight made
// cells NaN there that the reference (and the col2im path) leave finite.
TEST_CASE("hostile conv: non-finite values give the reference's result on every backend and ISA") {
  using detail::ConvOptions;
  using detail::GemmBackend;
  using detail::Isa;
  std::vector<Isa> isas;
  for (Isa i : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (static_cast<int>(i) <= static_cast<int>(detail::isa_supported())) isas.push_back(i);
  }
  std::mt19937 rng(1401);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<Conv2dShape> shapes;
  {
    // dx[c][0] = sum_f dy[f] * w[f][c][0][0] is finite; w[.][.][0][1] is infinite.
    Conv2dShape s;
    s.in_channels = 16;
    s.in_height = 1;
    s.in_width = 2;
    s.kernel_width = 2;
    shapes.push_back(s);
  }
  while (shapes.size() < 30) {
    Conv2dShape r;
    r.batch = pick(1, 2);
    r.in_channels = pick(1, 2) == 1 ? pick(1, 3) : pick(14, 20);
    r.out_channels = pick(1, 5);
    r.in_height = pick(1, 7);
    r.in_width = pick(1, 7);
    r.kernel_height = pick(1, 3);
    r.kernel_width = pick(1, 3);
    r.pad_height = pick(0, 2);
    r.pad_width = pick(0, 2);
    r.stride_height = r.stride_width = pick(1, 3) == 1 ? 2 : 1;
    if (r.in_height + 2 * r.pad_height >= r.kernel_height &&
        r.in_width + 2 * r.pad_width >= r.kernel_width) {
      shapes.push_back(r);
    }
  }
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const Conv2dShape& r = shapes[i];
    INFO(testutil::describe(r));
    auto xs = testutil::random_ints(r.x_size(), 40 + i);
    auto ws = testutil::random_ints(r.w_size(), 50 + i);
    auto dys = testutil::random_ints(r.y_size(), 60 + i);
    if (i == 0) {
      for (int64_t c = 0; c < r.in_channels; ++c) ws[c * 2 + 1] = kInf;
    } else {
      ws[pick(0, static_cast<int>(ws.size()) - 1)] = pick(0, 1) ? kInf : -kInf;
      dys[pick(0, static_cast<int>(dys.size()) - 1)] = kInf;
    }
    std::vector<float> y_ref(r.y_size()), d_ref(r.x_size()), g_ref(r.w_size());
    reference::conv2d_forward(r, xs, ws, {}, y_ref);
    reference::conv2d_backward_data(r, dys, ws, d_ref);
    reference::conv2d_backward_weights(r, xs, dys, g_ref, {});
    if (i == 0) {
      for (int64_t c = 0; c < r.in_channels; ++c) CHECK(std::isfinite(d_ref[c * 2]));
    }
    for (GemmBackend b : {GemmBackend::automatic, GemmBackend::packed, GemmBackend::openblas}) {
      for (Isa isa : isas) {
        for (int threads : {1, 2}) {
          INFO("backend " << std::string(detail::gemm_backend_name(b)) << " isa "
                          << std::string(detail::isa_name(isa)) << " threads " << threads);
          const ConvOptions o{b, isa, threads};
          std::vector<float> y(r.y_size()), d(r.x_size()), g(r.w_size());
          detail::conv2d_forward_with(o, r, xs, ws, {}, y, Activation::identity);
          CHECK_CLOSE_SPANS(y, y_ref, 0.0f, 0.0f);
          detail::conv2d_backward_data_with(o, r, dys, ws, d, Activation::identity, {});
          CHECK_CLOSE_SPANS(d, d_ref, 0.0f, 0.0f);
          detail::conv2d_backward_weights_with(o, r, xs, dys, g, {});
          CHECK_CLOSE_SPANS(g, g_ref, 0.0f, 0.0f);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------ the planner

namespace {

// Ends the process with a message if plan_conv does not return within the time limit: a
// planner that loops forever is a failure, not a hung test run.
class Watchdog {
 public:
  explicit Watchdog(std::chrono::seconds limit)
      : thread_([this, limit] {
          std::unique_lock lock(mutex_);
          if (!cv_.wait_for(lock, limit, [this] { return done_; })) {
            std::fprintf(stderr, "planner property test: no return within %lld s; last plan: %s\n",
                         static_cast<long long>(limit.count()), current_.c_str());
            std::fflush(stderr);
            std::_Exit(3);
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  void note(const std::string& what) {
    std::lock_guard lock(mutex_);
    current_ = what;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::string current_;
  std::thread thread_;
};

struct NamedShape {
  std::string name;
  Conv2dShape shape;
};

// ../shared/suite/layers.txt, embedded so that the test needs no file.
std::vector<NamedShape> suite_layers() {
  const char* table =
      "tutorial      1   3    5    5    2   3  3  2  2  1  1\n"
      "lenet_conv1   64  1    28   28   20  5  5  1  1  0  0\n"
      "lenet_conv2   64  20   12   12   50  5  5  1  1  0  0\n"
      "alexnet_conv1 8   3    227  227  96  11 11 4  4  0  0\n"
      "vgg_conv1_2   1   64   224  224  64  3  3  1  1  1  1\n"
      "vgg_conv3_2   8   256  56   56   256 3  3  1  1  1  1\n"
      "resnet_conv1  8   3    224  224  64  7  7  2  2  3  3\n"
      "resnet_1x1    8   64   56   56   256 1  1  1  1  0  0\n"
      "resnet_3x3s2  8   128  56   56   128 3  3  2  2  1  1\n"
      "resnet_l4_b8  8   512  7    7    512 3  3  1  1  1  1\n"
      "resnet_l4_b1  1   512  7    7    512 3  3  1  1  1  1\n"
      "vgg_conv3_b1  1   256  56   56   256 3  3  1  1  1  1\n";
  std::vector<NamedShape> out;
  std::istringstream in(table);
  NamedShape l;
  Conv2dShape& s = l.shape;
  while (in >> l.name >> s.batch >> s.in_channels >> s.in_height >> s.in_width >> s.out_channels >>
         s.kernel_height >> s.kernel_width >> s.stride_height >> s.stride_width >> s.pad_height >>
         s.pad_width) {
    out.push_back(l);
  }
  return out;
}

// What every plan must satisfy, whatever the shape and thread count.
void check_plan(const detail::ConvPlan& p, const Conv2dShape& s, ConvPass pass, int threads) {
  const int64_t Cg = s.in_channels / s.groups, Fg = s.out_channels / s.groups;
  const int64_t P = s.out_height() * s.out_width();
  REQUIRE(p.pass == pass);
  REQUIRE(p.threads >= 1);
  REQUIRE(p.threads <= threads);
  REQUIRE(p.P == P);
  REQUIRE(p.K == Cg * s.kernel_height * s.kernel_width);
  // Pixel blocks tile an image: none empty, together at least P.
  REQUIRE(p.block_pixels >= 1);
  REQUIRE(p.pixel_blocks >= 1);
  REQUIRE(p.block_pixels <= P);
  REQUIRE(p.pixel_blocks * p.block_pixels >= P);
  REQUIRE((p.pixel_blocks - 1) * p.block_pixels < P);
  REQUIRE(p.images_per_block >= 1);
  REQUIRE(p.images_per_block <= s.batch);
  if (p.images_per_block > 1) REQUIRE(p.pixel_blocks == 1);
  REQUIRE(p.image_runs >= 1);
  REQUIRE(p.filter_blocks >= 1);
  REQUIRE(p.filter_blocks <= Fg);
  REQUIRE(p.channel_blocks >= 1);
  REQUIRE(p.channel_blocks <= Cg);
  REQUIRE(p.k_chunks >= 1);
  REQUIRE(p.k_chunks <= Cg);
  REQUIRE(p.image_runs * p.images_per_block >= s.batch);
  REQUIRE(p.image_run(0).begin == 0);
  REQUIRE(p.image_run(p.image_runs - 1).end == s.batch);
  // The scratch holds one column block: rows x (images x pixels).
  const int64_t cols = p.images_per_block * p.block_pixels;
  if (!p.skips_im2col()) REQUIRE(p.col_floats >= cols);
  REQUIRE(p.col_floats >= 0);
  REQUIRE(p.tmp_floats >= 0);
  REQUIRE(p.partial_floats >= 0);
}

// Valid shapes of every kind the planner distinguishes: batch 1 and large batches, tiny and
// large planes, 1x1 and long K, groups.
Conv2dShape random_plan_shape(std::mt19937& rng) {
  auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  for (;;) {
    Conv2dShape s;
    s.groups = pick(1, 5) == 1 ? pick(2, 8) : 1;
    s.batch = pick(1, 3) == 1 ? pick(1, 300) : pick(1, 4);
    s.in_channels = s.groups * (pick(1, 2) == 1 ? pick(1, 8) : pick(1, 600));
    s.out_channels = s.groups * (pick(1, 2) == 1 ? pick(1, 8) : pick(1, 600));
    s.in_height = pick(1, 3) == 1 ? pick(1, 16) : pick(1, 300);
    s.in_width = pick(1, 3) == 1 ? pick(1, 16) : pick(1, 300);
    s.kernel_height = pick(1, 7);
    s.kernel_width = pick(1, 7);
    s.stride_height = pick(1, 4);
    s.stride_width = pick(1, 4);
    s.pad_height = pick(0, 3);
    s.pad_width = pick(0, 3);
    s.dilation_height = pick(1, 4) == 1 ? 2 : 1;
    s.dilation_width = pick(1, 4) == 1 ? 2 : 1;
    if (pick(1, 6) == 1) {
      s.kernel_height = s.kernel_width = 1;
      s.stride_height = s.stride_width = 1;
      s.pad_height = s.pad_width = 0;
      s.dilation_height = s.dilation_width = 1;
    }
    try {
      s.validate();
      return s;
    } catch (const std::invalid_argument&) {
    }
  }
}

}  // namespace

// Finding 3: the forward planner looped forever from 66 threads on (asking for one more pixel
// block gave the same count after rounding). Planning only: no arithmetic is run.
TEST_CASE("hostile planner: every pass terminates with a sane plan at every thread count 1..1024") {
  Watchdog dog(std::chrono::seconds(240));
  std::vector<NamedShape> layers = suite_layers();
  // The shape, then random ones.
  {
    Conv2dShape s;
    s.in_channels = 3;
    s.in_height = 65;
    s.in_width = 65;
    s.out_channels = 64;
    s.kernel_height = 3;
    s.kernel_width = 3;
    s.pad_height = 1;
    s.pad_width = 1;
    layers.push_back({"issue14_65x65", s});
  }
  std::mt19937 rng(1414);
  for (int i = 0; i < 60; ++i)
    layers.push_back({"random " + std::to_string(i), random_plan_shape(rng)});
  int64_t plans = 0;
  for (const auto& layer : layers) {
    const std::string& name = layer.name;  // no structured binding: clang 14 cannot capture one
    const Conv2dShape& s = layer.shape;
    for (int threads = 1; threads <= 1024; ++threads) {
      for (ConvPass pass :
           {ConvPass::forward, ConvPass::backward_data, ConvPass::backward_weights}) {
        // Only the watchdog's message needs the description; building it for every plan would
        // cost more than the plan.
        if (threads % 64 == 1 || name.rfind("random", 0) != 0) {
          dog.note(name + " " + testutil::describe(s) + " threads " + std::to_string(threads) +
                   " pass " + std::to_string(static_cast<int>(pass)));
        }
        const auto p = detail::plan_conv(s, pass, threads);
        INFO(name << " " << testutil::describe(s) << " threads " << threads << " pass "
                  << static_cast<int>(pass));
        check_plan(p, s, pass, threads);
        ++plans;
      }
    }
  }
  // The packed engine's planner, forward and (stride 1) backward data, on the CPU's best ISA
  // (test_conv2d_engines plans the suite at 1..256 threads on every ISA): thread counts 1..64
  // and every 13th above for the suite and the shape, 1..32 and every 61st for the
  // random shapes. One such plan can take 20 ms (it weighs many blockings): not every count.
  const std::vector<detail::Isa> isas{detail::isa_supported()};
  int64_t packed_plans = 0;
  for (const auto& layer : layers) {
    const Conv2dShape& s = layer.shape;
    std::vector<detail::PackedConv> problems{detail::packed_forward_problem(s)};
    if (s.stride_height == 1 && s.stride_width == 1) {
      problems.push_back(detail::packed_backward_data_problem(s));
    }
    for (std::size_t k = 0; k < problems.size(); ++k) {
      for (detail::Isa isa : isas) {
        dog.note("packed " + layer.name + " " + testutil::describe(s) + " problem " +
                 std::to_string(k) + " isa " + detail::isa_name(isa));
        const bool random = layer.name.rfind("random", 0) == 0;
        const int dense = random ? 32 : 64, step = random ? 61 : 13;
        for (int threads = 1; threads <= 1024; threads += threads < dense ? 1 : step) {
          const auto p = detail::plan_packed(problems[k], isa, threads);
          INFO("packed " << layer.name << " " << testutil::describe(s) << " problem " << k
                         << " threads " << threads);
          REQUIRE(p.threads >= 1);
          REQUIRE(p.threads <= threads);
          REQUIRE(p.items(problems[k]) >= 1);
          REQUIRE(p.nc >= 1);
          REQUIRE(p.col_blocks >= 1);
          REQUIRE(p.filter_blocks >= 1);
          REQUIRE(p.kc >= 1);
          REQUIRE(p.k_blocks >= 1);
          ++packed_plans;
        }
      }
    }
  }
  MESSAGE(packed_plans << " packed plans checked");
  // The public entry that plans all three passes, at the thread counts.
  for (int threads : {66, 71, 72, 225, 256}) {
    dog.note("conv2d_scratch_bytes threads " + std::to_string(threads));
    CHECK(conv2d_scratch_bytes(layers[12].shape, threads) > 0);
    CHECK(conv2d_scratch_bytes(layers[4].shape, threads) <= detail::kMaxScratchBytesPerThread);
  }
  MESSAGE(plans << " plans checked");
}

// ------------------------------------------------------------------ parameter files

namespace {

Sequential tiny_net() {
  Sequential net(Shape3{1, 6, 6});
  net.add_conv2d(2, 3, Activation::relu);
  net.add_dense(3, Activation::identity);
  net.init(7);
  return net;
}

std::vector<float> values_of(Sequential& net) {
  std::vector<float> v;
  for (const auto& p : net.parameters()) v.insert(v.end(), p.value.begin(), p.value.end());
  return v;
}

}  // namespace

// Finding 5: a directory gave std::ios_base::failure, and /dev/zero was read until memory ran
// out: now std::invalid_argument, and never more than the network's file size is read.
TEST_CASE(
    "hostile files: a directory, a device or an oversized file is rejected with std::invalid_argument") {
  Sequential net = tiny_net();
  const auto before = values_of(net);
  const auto dir = std::filesystem::temp_directory_path() /
                   ("im2gemm_hostile_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string d = invalid_message([&] { net.load(dir.string()); });
  CHECK(d.find("is a directory") != std::string::npos);
  if (std::filesystem::exists("/dev/zero")) {
    const std::string z = invalid_message([&] { net.load("/dev/zero"); });
    INFO(z);
    CHECK(z.find("wrong magic") != std::string::npos);
  }
  // A good file with a large tail: rejected as too long, without reading the tail.
  const auto good = net.save_bytes();
  const auto big = dir / "big.bin";
  {
    std::ofstream f(big, std::ios::binary);
    f.write(reinterpret_cast<const char*>(good.data()), static_cast<std::streamsize>(good.size()));
    const std::vector<char> tail(1 << 16, 0);
    f.write(tail.data(), static_cast<std::streamsize>(tail.size()));
  }
  const std::string b = invalid_message([&] { net.load(big.string()); });
  INFO(b);
  CHECK(b.find("larger than") != std::string::npos);
  CHECK(values_of(net) == before);
  // And the same bytes without the tail load.
  const auto ok = dir / "ok.bin";
  net.save(ok.string());
  CHECK_NOTHROW(net.load(ok.string()));
  CHECK(values_of(net) == before);
  std::filesystem::remove_all(dir);
}
