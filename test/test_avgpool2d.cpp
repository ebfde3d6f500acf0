// Average pooling (and max pooling's ceil mode): the reference loops against values worked
// out by hand and checked with PyTorch 1.13's avg_pool2d / max_pool2d, and the fast paths
// against the reference on every ISA at 1 and 2 threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <omp.h>

#include "common/scratch.hpp"
#include "pool/avgpool2d_impl.hpp"
#include "test_util.hpp"

using namespace im2gemm;
using detail::PoolIsa;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();

// The ISAs this CPU runs (the pool kernels' cap takes the library's Isa values).
std::vector<PoolIsa> isas() { return testutil::cpu_isas(); }

struct IsaScope {
  explicit IsaScope(PoolIsa isa) { detail::set_pool_isa_cap(isa); }
  ~IsaScope() {
    detail::set_pool_isa_cap(PoolIsa::avx512);
    set_num_threads(0);
  }
};

AvgPool2dShape avg(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, std::int64_t kh,
                   std::int64_t kw, std::int64_t sh, std::int64_t sw, std::int64_t ph,
                   std::int64_t pw, bool ceil = false, bool include = true) {
  AvgPool2dShape s;
  s.batch = n;
  s.channels = c;
  s.in_height = h;
  s.in_width = w;
  s.kernel_height = kh;
  s.kernel_width = kw;
  s.stride_height = sh;
  s.stride_width = sw;
  s.pad_height = ph;
  s.pad_width = pw;
  s.ceil_mode = ceil;
  s.count_include_pad = include;
  return s;
}

std::string describe(const AvgPool2dShape& s) {
  std::ostringstream o;
  o << "N" << s.batch << " C" << s.channels << " " << s.in_height << "x" << s.in_width << " k"
    << s.kernel_height << "x" << s.kernel_width << " s" << s.stride_height << "x" << s.stride_width
    << " p" << s.pad_height << "x" << s.pad_width << (s.ceil_mode ? " ceil" : " floor")
    << (s.count_include_pad ? " incl" : " excl");
  return o.str();
}

std::vector<float> ref_forward(const AvgPool2dShape& s, const std::vector<float>& x) {
  std::vector<float> y(static_cast<std::size_t>(s.y_size()), kNaN);
  reference::avgpool2d_forward(s, x, y);
  return y;
}
std::vector<float> ref_backward(const AvgPool2dShape& s, const std::vector<float>& dy) {
  std::vector<float> dx(static_cast<std::size_t>(s.x_size()), kNaN);
  reference::avgpool2d_backward(s, dy, dx);
  return dx;
}
std::vector<float> fast_forward(const AvgPool2dShape& s, const std::vector<float>& x) {
  std::vector<float> y(static_cast<std::size_t>(s.y_size()), kNaN);
  avgpool2d_forward(s, x, y);
  return y;
}
std::vector<float> fast_backward(const AvgPool2dShape& s, const std::vector<float>& dy) {
  std::vector<float> dx(static_cast<std::size_t>(s.x_size()), kNaN);
  avgpool2d_backward(s, dy, dx);
  return dx;
}

detail::AvgKernel kernel_of(const AvgPool2dShape& s) {
  return detail::choose_avg_kernel(
      detail::AvgGeom{s.in_height, s.in_width, s.out_height(), s.out_width(), s.kernel_height,
                      s.kernel_width, s.stride_height, s.stride_width, s.pad_height, s.pad_width,
                      s.count_include_pad, nullptr, nullptr, nullptr});
}

// The divisor of every output of one plane: PyTorch's rule, written out again here
// independently of the library.
std::vector<std::int64_t> divisors(const AvgPool2dShape& s) {
  std::vector<std::int64_t> d;
  for (std::int64_t oh = 0; oh < s.out_height(); ++oh) {
    for (std::int64_t ow = 0; ow < s.out_width(); ++ow) {
      std::int64_t r0 = oh * s.stride_height - s.pad_height, c0 = ow * s.stride_width - s.pad_width;
      std::int64_t r1 = std::min(r0 + s.kernel_height, s.in_height + s.pad_height);
      std::int64_t c1 = std::min(c0 + s.kernel_width, s.in_width + s.pad_width);
      if (s.count_include_pad) {
        d.push_back((r1 - r0) * (c1 - c0));
      } else {
        d.push_back((std::min(r1, s.in_height) - std::max<std::int64_t>(r0, 0)) *
                    (std::min(c1, s.in_width) - std::max<std::int64_t>(c0, 0)));
      }
    }
  }
  return d;
}

// dy = small integer times the window's divisor: dy / divisor is an integer, so every dx sum
// is exact and any order of adding gives the same bits.
std::vector<float> exact_dy(const AvgPool2dShape& s, std::uint32_t seed) {
  auto v = testutil::random_ints(static_cast<std::size_t>(s.y_size()), seed, -4, 4);
  const auto d = divisors(s);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] *= static_cast<float>(d[i % d.size()]);
  return v;
}

// Fast against reference: bit for bit on integer data everywhere and on float data except
// the global forward, which sums in another order (compared within float rounding).
void check_against_reference(const AvgPool2dShape& s, std::uint32_t seed) {
  const bool global = kernel_of(s) == detail::AvgKernel::global;
  const auto xi = testutil::random_ints(static_cast<std::size_t>(s.x_size()), seed, -5, 5);
  CHECK(testutil::bitwise_equal(fast_forward(s, xi), ref_forward(s, xi)));
  const auto xf = testutil::random_floats(static_cast<std::size_t>(s.x_size()), seed + 1);
  if (global) {
    const auto got = fast_forward(s, xf), want = ref_forward(s, xf);
    const float atol = 1e-6f * std::sqrt(static_cast<float>(s.in_height * s.in_width));
    CHECK_CLOSE_SPANS(std::span<const float>(got), std::span<const float>(want), atol, 1e-5f);
  } else {
    CHECK(testutil::bitwise_equal(fast_forward(s, xf), ref_forward(s, xf)));
  }
  const auto dyi = exact_dy(s, seed + 2);
  CHECK(testutil::bitwise_equal(fast_backward(s, dyi), ref_backward(s, dyi)));
  const auto dyf = testutil::random_floats(static_cast<std::size_t>(s.y_size()), seed + 3);
  CHECK(testutil::bitwise_equal(fast_backward(s, dyf), ref_backward(s, dyf)));
}

// Random valid shapes: kernels 1-6, strides 1-4, pads up to kernel/2, both modes, odd sizes
// from 1 to 70, batch 1-3; a few global ones.
std::vector<AvgPool2dShape> random_shapes(int count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<AvgPool2dShape> out;
  while (static_cast<int>(out.size()) < count) {
    AvgPool2dShape s;
    s.batch = uni(1, 3);
    s.channels = uni(1, 4);
    s.in_height = uni(1, uni(0, 3) == 0 ? 70 : 20);
    s.in_width = uni(1, uni(0, 2) == 0 ? 70 : 24);
    if (uni(0, 9) == 0) {
      s.kernel_height = s.in_height;
      s.kernel_width = s.in_width;
      s.stride_height = uni(1, 3);
      s.stride_width = uni(1, 3);
    } else {
      s.kernel_height = uni(1, 6);
      s.kernel_width = uni(1, 6);
      s.stride_height = uni(1, 4);
      s.stride_width = uni(1, 4);
      s.pad_height = uni(0, static_cast<int>(s.kernel_height) / 2);
      s.pad_width = uni(0, static_cast<int>(s.kernel_width) / 2);
    }
    s.ceil_mode = uni(0, 1) == 1;
    s.count_include_pad = uni(0, 1) == 1;
    try {
      s.validate();
    } catch (const std::invalid_argument&) {
      continue;
    }
    out.push_back(s);
  }
  return out;
}

bool all_equal(const std::vector<float>& v, float want) {
  return std::all_of(v.begin(), v.end(),
                     [&](float f) { return std::isnan(want) ? std::isnan(f) : f == want; });
}

}  // namespace

// ------------------------------------------------------------------ shapes and validation

TEST_CASE("output size: PyTorch's ceil rule (checked with torch 1.13)") {
  // (H, k, s, p) -> ceil-mode output size, from torch.nn.functional.avg_pool2d/max_pool2d
  struct Row {
    std::int64_t h, k, s, p, floor_out, ceil_out;
  };
  const Row rows[] = {
      {1, 2, 2, 0, 0, 1},  // floor: no window fits; ceil: one, over the single real row
      {5, 2, 2, 0, 2, 3}, {6, 3, 2, 1, 3, 4},
      {7, 3, 2, 1, 4, 4},  // (7 + 2 - 3) / 2 is exact: ceil = floor
      {5, 3, 3, 1, 2, 2},  // the third window would start at 6 >= 5 + 1: dropped
      {2, 3, 2, 1, 1, 2}, {1, 3, 2, 1, 1, 1},
  };
  for (const Row& r : rows) {
    CAPTURE(r.h);
    CAPTURE(r.k);
    CAPTURE(r.s);
    CAPTURE(r.p);
    for (bool ceil : {false, true}) {
      const std::int64_t want = ceil ? r.ceil_out : r.floor_out;
      auto a = avg(1, 1, r.h, r.h, r.k, r.k, r.s, r.s, r.p, r.p, ceil);
      MaxPool2dShape m;
      m.in_height = m.in_width = r.h;
      m.kernel_height = m.kernel_width = r.k;
      m.stride_height = m.stride_width = r.s;
      m.pad_height = m.pad_width = r.p;
      m.ceil_mode = ceil;
      if (want == 0) {
        CHECK_THROWS_AS(a.validate(), std::invalid_argument);
        CHECK_THROWS_AS(m.validate(), std::invalid_argument);
        continue;
      }
      CHECK_NOTHROW(a.validate());
      CHECK(a.out_height() == want);
      CHECK(a.out_width() == want);
      CHECK_NOTHROW(m.validate());
      CHECK(m.out_height() == want);
    }
  }
}

TEST_CASE("bad shapes and spans are rejected before anything is written") {
  const auto good = avg(2, 3, 9, 11, 3, 3, 2, 2, 1, 1);
  const auto x = testutil::random_floats(static_cast<std::size_t>(good.x_size()), 1u);
  auto bad_shape = [&](auto mutate) {
    AvgPool2dShape s = good;
    mutate(s);
    CHECK_THROWS_AS(s.validate(), std::invalid_argument);
    std::vector<float> y(static_cast<std::size_t>(good.y_size()), testutil::kSentinel);
    std::vector<float> dx(x.size(), testutil::kSentinel);
    CHECK_THROWS_AS(avgpool2d_forward(s, x, y), std::invalid_argument);
    CHECK_THROWS_AS(reference::avgpool2d_forward(s, x, y), std::invalid_argument);
    CHECK_THROWS_AS(avgpool2d_backward(s, y, dx), std::invalid_argument);
    CHECK_THROWS_AS(reference::avgpool2d_backward(s, y, dx), std::invalid_argument);
    CHECK(all_equal(y, testutil::kSentinel));
    CHECK(all_equal(dx, testutil::kSentinel));
  };
  bad_shape([](AvgPool2dShape& s) { s.kernel_height = 0; });
  bad_shape([](AvgPool2dShape& s) { s.kernel_width = -1; });
  bad_shape([](AvgPool2dShape& s) { s.stride_height = 0; });
  bad_shape([](AvgPool2dShape& s) { s.stride_width = -2; });
  bad_shape([](AvgPool2dShape& s) { s.pad_height = 2; });  // > 3 / 2
  bad_shape([](AvgPool2dShape& s) { s.pad_width = -1; });
  bad_shape([](AvgPool2dShape& s) { s.channels = 0; });
  bad_shape([](AvgPool2dShape& s) { s.in_width = 0; });
  bad_shape([](AvgPool2dShape& s) {
    s.kernel_height = 12;
    s.pad_height = 0;
  });                                // > 9
  bad_shape([](AvgPool2dShape& s) {  // element count overflows
    s.batch = std::int64_t{1} << 40;
    s.channels = std::int64_t{1} << 30;
  });
  bad_shape([](AvgPool2dShape& s) {  // in + 2*pad overflows
    s.in_height = std::numeric_limits<std::int64_t>::max() - 1;
    s.kernel_height = 4;
    s.pad_height = 2;
  });
  bad_shape([](AvgPool2dShape& s) {  // ceil: span + stride - 1 overflows
    s.ceil_mode = true;
    s.stride_height = std::numeric_limits<std::int64_t>::max();
    s.in_height = 100;
  });
}

TEST_CASE("pad = kernel / 2 is the largest valid pad") {
  // A kernel 2 with pad 1 is exactly half: valid (PyTorch accepts it); kernel 1 takes none.
  CHECK_NOTHROW(avg(1, 1, 4, 4, 2, 2, 2, 2, 1, 1).validate());
  CHECK_THROWS_AS(avg(1, 1, 4, 4, 1, 1, 1, 1, 1, 1).validate(), std::invalid_argument);
}

TEST_CASE("wrong spans and overlapping outputs are rejected, outputs untouched") {
  const auto s = avg(2, 3, 9, 11, 3, 3, 2, 2, 1, 1);
  const auto x = testutil::random_floats(static_cast<std::size_t>(s.x_size()), 2u);
  const auto dy = testutil::random_floats(static_cast<std::size_t>(s.y_size()), 3u);
  using Fwd = void (*)(const AvgPool2dShape&, std::span<const float>, std::span<float>);
  using Bwd = void (*)(const AvgPool2dShape&, std::span<const float>, std::span<float>);
  const Fwd fwds[] = {&avgpool2d_forward, &reference::avgpool2d_forward};
  const Bwd bwds[] = {&avgpool2d_backward, &reference::avgpool2d_backward};
  for (int f = 0; f < 2; ++f) {
    CAPTURE(f);
    std::vector<float> y_short(dy.size() - 1, testutil::kSentinel);
    CHECK_THROWS_AS(fwds[f](s, x, y_short), std::invalid_argument);
    CHECK(all_equal(y_short, testutil::kSentinel));
    std::vector<float> y(dy.size(), testutil::kSentinel);
    std::vector<float> x_long(x.size() + 1, 0.5f);
    CHECK_THROWS_AS(fwds[f](s, x_long, y), std::invalid_argument);
    CHECK(all_equal(y, testutil::kSentinel));
    std::vector<float> dx_long(x.size() + 1, testutil::kSentinel);
    CHECK_THROWS_AS(bwds[f](s, dy, dx_long), std::invalid_argument);
    CHECK(all_equal(dx_long, testutil::kSentinel));
    std::vector<float> dx(x.size(), testutil::kSentinel);
    CHECK_THROWS_AS(bwds[f](s, std::span<const float>(dy).first(dy.size() - 1), dx),
                    std::invalid_argument);
    CHECK(all_equal(dx, testutil::kSentinel));
    // y inside x's buffer; dy inside dx's buffer
    std::vector<float> both(x.size() + dy.size(), 1.0f);
    const auto before = both;
    CHECK_THROWS_AS(fwds[f](s, std::span<const float>(both).first(x.size()),
                            std::span<float>(both).subspan(x.size() - 1, dy.size())),
                    std::invalid_argument);
    CHECK(both == before);
    CHECK_THROWS_AS(bwds[f](s, std::span<const float>(both).subspan(5, dy.size()),
                            std::span<float>(both).first(x.size())),
                    std::invalid_argument);
    CHECK(both == before);
  }
}

// ------------------------------------------------------------- semantics, worked by hand

TEST_CASE("count_include_pad both ways at a corner (values from torch 1.13)") {
  // 4x4 input 1..16, kernel 3, stride 2, pad 1: the top-left window holds 1, 2, 5, 6 and five
  // padded cells. Including them: 14 / 9; excluding: 14 / 4 = 3.5. The bottom-right one holds
  // 6, 7, 8, 10, 11, 12, 14, 15, 16 (sum 99): 99 / 9 = 11 both ways.
  std::vector<float> x(16);
  for (int i = 0; i < 16; ++i) x[i] = static_cast<float>(i + 1);
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    CAPTURE(detail::pool_isa_name(isa));
    const auto incl = avg(1, 1, 4, 4, 3, 3, 2, 2, 1, 1, false, true);
    const auto excl = avg(1, 1, 4, 4, 3, 3, 2, 2, 1, 1, false, false);
    // torch: [[1.55555558, 3.33333325], [6.33333349, 11.]] and [[3.5, 5.], [9.5, 11.]]
    const std::vector<float> want_incl{14.0f / 9.0f, 30.0f / 9.0f, 57.0f / 9.0f, 11.0f};
    const std::vector<float> want_excl{3.5f, 5.0f, 9.5f, 11.0f};
    CHECK(ref_forward(incl, x) == want_incl);
    CHECK(ref_forward(excl, x) == want_excl);
    CHECK(fast_forward(incl, x) == want_incl);
    CHECK(fast_forward(excl, x) == want_excl);
    CHECK(want_incl[0] == 1.55555558f);
    CHECK(want_incl[2] == 6.33333349f);
  }
}

TEST_CASE("ceil mode: the divisor of a window that runs past the padding (torch 1.13)") {
  // 6x6 input 0..35, kernel 3, stride 2, pad 1, ceil mode: 4x4 outputs (floor: 3x3). The last
  // window row starts at 3*2 - 1 = 5 and would span rows 5, 6, 7; the padded input ends at
  // row 6 (5 + pad), so with count_include_pad its divisor counts 2 rows (row 5 and the
  // padded row 6), not 3. Output (3, 3) holds only x[5][5] = 35: 35 / (2*2) = 8.75 including
  // the padding, 35 / 1 excluding it. Output (3, 0): rows 5-6 x columns -1..1 -> 30 + 31 =
  // 61 over 2*3 = 6 cells -> 10.1666670; over 2 real cells -> 30.5.
  std::vector<float> x(36);
  for (int i = 0; i < 36; ++i) x[i] = static_cast<float>(i);
  const std::vector<float> torch_incl{1.55555558f,  3.33333325f, 4.66666651f, 2.66666675f,
                                      8.33333302f,  14.0f,       16.0f,       8.5f,
                                      16.33333397f, 26.0f,       28.0f,       14.5f,
                                      10.16666698f, 16.0f,       17.0f,       8.75f};
  const std::vector<float> torch_excl{3.5f,  5.0f,  7.0f,  8.0f,  12.5f, 14.0f, 16.0f, 17.0f,
                                      24.5f, 26.0f, 28.0f, 29.0f, 30.5f, 32.0f, 34.0f, 35.0f};
  const auto incl = avg(1, 1, 6, 6, 3, 3, 2, 2, 1, 1, true, true);
  const auto excl = avg(1, 1, 6, 6, 3, 3, 2, 2, 1, 1, true, false);
  REQUIRE(incl.out_height() == 4);
  CHECK(torch_incl[15] == 35.0f / 4.0f);
  CHECK(torch_incl[12] == 61.0f / 6.0f);
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    CAPTURE(detail::pool_isa_name(isa));
    CHECK(ref_forward(incl, x) == torch_incl);
    CHECK(ref_forward(excl, x) == torch_excl);
    CHECK(fast_forward(incl, x) == torch_incl);
    CHECK(fast_forward(excl, x) == torch_excl);
    // Backward with dy = 12 everywhere (torch's x.grad): the corner cell x[5][5] is in
    // windows (2,2), (2,3), (3,2), (3,3). Including the padding their divisors are 9, 6, 6, 4:
    // 12/9 + 12/6 + 12/6 + 12/4 = 8.33333397 (float sums in output order). Excluding it they
    // hold 9, 3, 3 and 1 real cells: 12/9 + 12/3 + 12/3 + 12/1 = 21.33333397. x[0][0] is
    // only in window (0,0): 12/9 = 1.33333337, or 12/4 = 3.
    const std::vector<float> dy(16, 12.0f);
    for (bool include : {true, false}) {
      const auto& s = include ? incl : excl;
      const auto dx_ref = ref_backward(s, dy), dx_fast = fast_backward(s, dy);
      CHECK(dx_ref[35] == (include ? 8.33333397f : 21.33333397f));
      CHECK(dx_ref[0] == (include ? 1.33333337f : 3.0f));
      CHECK(testutil::bitwise_equal(dx_fast, dx_ref));
    }
  }
}

TEST_CASE("global pooling, -0 and the other PyTorch details") {
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    CAPTURE(detail::pool_isa_name(isa));
    // kernel = input: one mean per plane; backward spreads dy / (H*W) over the plane.
    const auto s = avg(2, 3, 7, 5, 7, 5, 1, 1, 0, 0);
    CHECK(kernel_of(s) == detail::AvgKernel::global);
    std::vector<float> x(static_cast<std::size_t>(s.x_size()));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 35) * 2.0f;
    const auto y = fast_forward(s, x);
    CHECK(y == std::vector<float>(6, 34.0f));  // mean of 0, 2, ..., 68
    const std::vector<float> dy{35, -70, 3.5f, 0, 7, 1};
    const auto dx = fast_backward(s, dy);
    CHECK(dx[0] == 1.0f);
    CHECK(dx[34] == 1.0f);
    CHECK(dx[35] == -2.0f);
    CHECK(dx[70] == 0.1f);
    CHECK(testutil::bitwise_equal(dx, ref_backward(s, dy)));
    // torch: a mean that underflows to -0 is +0 (the quotient is added to a zeroed output);
    // a window of -0 sums to +0. Gradients: -0 / 2 gives +0 cells.
    const auto pair = avg(1, 1, 1, 2, 1, 2, 1, 2, 0, 0);
    const float tiny = -std::numeric_limits<float>::denorm_min();
    for (const auto& xs : {std::vector<float>{tiny, 0.0f}, std::vector<float>{-0.0f, -0.0f}}) {
      for (const auto& yy : {ref_forward(pair, xs), fast_forward(pair, xs)}) {
        CHECK(yy[0] == 0.0f);
        CHECK(!std::signbit(yy[0]));
      }
    }
    for (const auto& dd : {ref_backward(pair, {-0.0f}), fast_backward(pair, {-0.0f})}) {
      CHECK(!std::signbit(dd[0]));
      CHECK(!std::signbit(dd[1]));
    }
  }
}

TEST_CASE("backward: overlapping windows add up; stride > kernel leaves zeros") {
  // 1x5 row, kernel 1x3, stride 1: cell 2 is in all three windows.
  const auto s = avg(1, 1, 1, 5, 1, 3, 1, 1, 0, 0);
  const std::vector<float> dy{3, 6, 9};
  const std::vector<float> want{1, 3, 6, 5, 3};
  // stride 3, kernel 2: cells 2 and 5 are in no window
  const auto gap = avg(1, 1, 1, 7, 1, 2, 1, 3, 0, 0);
  const std::vector<float> dy2{2, 4};
  const std::vector<float> want2{1, 1, 0, 2, 2, 0, 0};
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    CAPTURE(detail::pool_isa_name(isa));
    CHECK(ref_backward(s, dy) == want);
    CHECK(fast_backward(s, dy) == want);
    CHECK(ref_backward(gap, dy2) == want2);
    CHECK(fast_backward(gap, dy2) == want2);
  }
}

TEST_CASE("finite differences: the backward is the forward's gradient") {
  // E = sum_o r_o y_o is linear in x, so (E(x + e_i) - E(x - e_i)) / 2 equals dE/dx_i up to
  // the rounding of the two forwards (sums in double of float outputs).
  const std::vector<AvgPool2dShape> shapes{
      avg(1, 2, 7, 6, 3, 3, 2, 2, 1, 1, true, true),
      avg(1, 2, 7, 6, 3, 3, 2, 2, 1, 1, true, false),
      avg(2, 1, 5, 8, 2, 4, 1, 3, 1, 2, false, false),
      avg(1, 1, 4, 6, 4, 6, 1, 1, 0, 0),
  };
  for (const auto& s : shapes) {
    CAPTURE(describe(s));
    const auto x = testutil::random_floats(static_cast<std::size_t>(s.x_size()), 9u);
    const auto r = testutil::random_floats(static_cast<std::size_t>(s.y_size()), 10u);
    const auto dx = fast_backward(s, r);
    auto energy = [&](const std::vector<float>& xv) {
      const auto y = fast_forward(s, xv);
      double e = 0;
      for (std::size_t i = 0; i < y.size(); ++i) e += static_cast<double>(r[i]) * y[i];
      return e;
    };
    double worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      auto xp = x, xm = x;
      const float h = 0.25f;
      xp[i] += h;
      xm[i] -= h;
      const double num = (energy(xp) - energy(xm)) / (static_cast<double>(xp[i]) - xm[i]);
      worst = std::max(worst, std::fabs(num - dx[i]));
    }
    CHECK(worst < 1e-5);
  }
}

// ------------------------------------------------------------------- fast against reference

TEST_CASE("kernel choice is named by the exact shape") {
  using K = detail::AvgKernel;
  CHECK(kernel_of(avg(1, 1, 9, 9, 2, 2, 2, 2, 0, 0)) == K::k2x2_s2_p0);
  CHECK(kernel_of(avg(1, 1, 9, 9, 2, 2, 2, 2, 1, 1)) == K::general);
  CHECK(kernel_of(avg(1, 1, 9, 9, 3, 3, 2, 2, 1, 1)) == K::k3x3_s2);
  CHECK(kernel_of(avg(1, 1, 9, 9, 3, 3, 2, 2, 0, 0)) == K::k3x3_s2);
  CHECK(kernel_of(avg(1, 1, 9, 9, 3, 3, 2, 2, 1, 0)) == K::general);
  CHECK(kernel_of(avg(1, 1, 9, 9, 3, 3, 1, 1, 1, 1)) == K::general);
  CHECK(kernel_of(avg(1, 1, 9, 9, 9, 9, 1, 1, 0, 0)) == K::global);
  CHECK(kernel_of(avg(1, 1, 9, 9, 9, 9, 1, 1, 1, 1)) == K::general);  // padded: 9 outputs
  CHECK(kernel_of(avg(1, 1, 2, 2, 2, 2, 2, 2, 0, 0)) == K::global);   // 2x2 on 2x2 is global
}

TEST_CASE("random shapes match the reference on every ISA, 1 and 2 threads") {
  const auto shapes = random_shapes(300, 20261202u);
  int checked = 0;
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        if ((i + static_cast<std::size_t>(threads)) % 2 != 0) continue;  // half at each count
        CAPTURE(detail::pool_isa_name(isa));
        CAPTURE(threads);
        CAPTURE(describe(shapes[i]));
        check_against_reference(shapes[i], static_cast<std::uint32_t>(100 + i));
        ++checked;
      }
    }
  }
  MESSAGE(checked << " shape x ISA cases");
}

TEST_CASE("dedicated paths on odd sizes cover their tails, both modes") {
  const std::vector<std::int64_t> widths{2,  3,  4,  5,  7,  15, 16, 17, 18, 31,  32, 33,
                                         34, 35, 47, 63, 64, 65, 66, 67, 97, 112, 113};
  const std::vector<std::int64_t> heights{2, 3, 4, 5, 9};
  struct Win {
    std::int64_t k, s, p;
  };
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (const Win win : {Win{2, 2, 0}, Win{3, 2, 1}, Win{3, 2, 0}, Win{2, 2, 1}}) {
      for (std::int64_t h : heights) {
        for (std::int64_t w : widths) {
          for (int mode = 0; mode < 4; ++mode) {
            const auto s = avg(1, 2, h, w, win.k, win.k, win.s, win.s, win.p, win.p,
                               (mode & 1) != 0, (mode & 2) != 0);
            try {
              s.validate();
            } catch (const std::invalid_argument&) {
              continue;
            }
            CAPTURE(detail::pool_isa_name(isa));
            CAPTURE(describe(s));
            check_against_reference(s, static_cast<std::uint32_t>(h * 131 + w + mode));
          }
        }
      }
    }
  }
}

TEST_CASE("2x2 quads: rows of 4 to 32 outputs, odd quad counts, row blocks, both modes") {
  // avg_2x2_quads (AVX2) takes rows of whole quads up to 32 outputs (odd quad counts end in an
  // overlapping vector); batch 1 cuts planes into row blocks; ceil mode's partial last window
  // (odd sizes) keeps its rows on the row loops.
  const std::vector<std::int64_t> widths{8, 9, 16, 24, 25, 40, 41, 56, 64, 65, 66};
  const std::vector<std::int64_t> heights{2, 3, 6, 7, 25, 64};
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      for (std::int64_t n : {1, 3}) {
        for (std::int64_t h : heights) {
          for (std::int64_t w : widths) {
            for (int mode = 0; mode < 4; ++mode) {
              const auto s = avg(n, 2, h, w, 2, 2, 2, 2, 0, 0, (mode & 1) != 0, (mode & 2) != 0);
              CAPTURE(detail::pool_isa_name(isa));
              CAPTURE(threads);
              CAPTURE(describe(s));
              check_against_reference(s, static_cast<std::uint32_t>(h * 977 + w + n + mode));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("the suite's pools and global shapes match the reference; threads agree bitwise") {
  const std::vector<AvgPool2dShape> shapes{
      avg(2, 3, 24, 24, 2, 2, 2, 2, 0, 0),                 // lenet_pool
      avg(1, 2, 224, 224, 2, 2, 2, 2, 0, 0),               // vgg_pool1
      avg(1, 2, 112, 112, 3, 3, 2, 2, 1, 1),               // resnet_pool
      avg(1, 3, 55, 55, 3, 3, 2, 2, 0, 0),                 // alexnet_pool1
      avg(4, 64, 7, 7, 7, 7, 1, 1, 0, 0),                  // a ResNet head
      avg(2, 5, 56, 57, 56, 57, 1, 1, 0, 0),               // a large global plane
      avg(1, 1, 401, 399, 3, 3, 2, 2, 1, 1, true, false),  // one plane, row blocks
      avg(3, 40, 61, 59, 5, 3, 1, 2, 2, 1, true, true),    // > 512 KiB: two threads
  };
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (const auto& s : shapes) {
      CAPTURE(detail::pool_isa_name(isa));
      CAPTURE(describe(s));
      check_against_reference(s, 11u);
      const auto x = testutil::random_floats(static_cast<std::size_t>(s.x_size()), 5u);
      const auto dy = testutil::random_floats(static_cast<std::size_t>(s.y_size()), 6u);
      set_num_threads(1);
      const auto y1 = fast_forward(s, x), dx1 = fast_backward(s, dy);
      set_num_threads(2);
      const auto y2 = fast_forward(s, x), dx2 = fast_backward(s, dy);
      CHECK(testutil::bitwise_equal(y1, y2));
      CHECK(testutil::bitwise_equal(dx1, dx2));
      CHECK(testutil::bitwise_equal(fast_forward(s, x), y2));  // same count, same bits
    }
  }
}

TEST_CASE("backward: no scratch for a thread means std::bad_alloc and nothing written") {
  struct Unfail {
    ~Unfail() { detail::set_fail_scratch_thread(-1); }
  } unfail;
  const int dynamic = omp_get_dynamic();
  omp_set_dynamic(0);
  const auto s = avg(3, 40, 61, 59, 3, 3, 2, 2, 1, 1);  // 1.7 MB: two threads
  const auto dy = testutil::random_floats(static_cast<std::size_t>(s.y_size()), 6u);
  const int team_max = std::min(2, omp_get_thread_limit());
  for (int threads = 1; threads <= team_max; ++threads) {
    set_num_threads(threads);
    for (int failing = 0; failing < threads; ++failing) {
      CAPTURE(threads);
      CAPTURE(failing);
      detail::set_fail_scratch_thread(failing);
      std::vector<float> dx(static_cast<std::size_t>(s.x_size()), kNaN);
      CHECK_THROWS_AS(avgpool2d_backward(s, dy, dx), std::bad_alloc);
      CHECK(all_equal(dx, kNaN));
    }
  }
  detail::set_fail_scratch_thread(-1);
  omp_set_dynamic(dynamic);
  set_num_threads(0);
  CHECK(testutil::bitwise_equal(fast_backward(s, dy), ref_backward(s, dy)));
}

// --------------------------------------------------------------------- max pooling, ceil mode

TEST_CASE("max pooling ceil mode: values and indices from torch 1.13, every ISA") {
  // 5x5 input 0..24, kernel 2, stride 2, ceil mode: 3x3 outputs; the last row and column of
  // windows hold a single real row / column.
  MaxPool2dShape s;
  s.in_height = s.in_width = 5;
  s.ceil_mode = true;
  REQUIRE(s.out_height() == 3);
  std::vector<float> x(25);
  for (int i = 0; i < 25; ++i) x[i] = static_cast<float>(i);
  const std::vector<float> want_y{6, 8, 9, 16, 18, 19, 21, 23, 24};
  const std::vector<std::int32_t> want_a{6, 8, 9, 16, 18, 19, 21, 23, 24};
  const std::vector<float> dy{1, 2, 3, 4, 5, 6, 7, 8, 9};
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    CAPTURE(detail::pool_isa_name(isa));
    for (int fast = 0; fast < 2; ++fast) {
      std::vector<float> y(9, kNaN), dx(25, kNaN);
      std::vector<std::int32_t> a(9, -1);
      if (fast) {
        maxpool2d_forward(s, x, y, a);
        maxpool2d_backward(s, dy, a, dx);
      } else {
        reference::maxpool2d_forward(s, x, y, a);
        reference::maxpool2d_backward(s, dy, a, dx);
      }
      CHECK(y == want_y);
      CHECK(a == want_a);
      std::vector<float> want_dx(25, 0.0f);
      for (int o = 0; o < 9; ++o) want_dx[want_a[o]] = dy[o];
      CHECK(dx == want_dx);
    }
  }
}

TEST_CASE("max pooling ceil mode: random shapes match the reference on every ISA") {
  std::mt19937 rng(77u);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<MaxPool2dShape> shapes;
  while (shapes.size() < 150) {
    MaxPool2dShape s;
    s.batch = uni(1, 3);
    s.channels = uni(1, 3);
    s.in_height = uni(1, 40);
    s.in_width = uni(1, uni(0, 1) ? 70 : 20);
    const bool k2 = uni(0, 2) == 0;  // the 2x2 stride-2 path and its one-pass backward
    s.kernel_height = k2 ? 2 : uni(1, 5);
    s.kernel_width = k2 ? 2 : uni(1, 5);
    s.stride_height = k2 ? 2 : uni(1, 4);
    s.stride_width = k2 ? 2 : uni(1, 4);
    s.pad_height = k2 ? 0 : uni(0, static_cast<int>(s.kernel_height) - 1);
    s.pad_width = k2 ? 0 : uni(0, static_cast<int>(s.kernel_width) - 1);
    s.ceil_mode = true;
    try {
      s.validate();
    } catch (const std::invalid_argument&) {
      continue;
    }
    shapes.push_back(s);
  }
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        const auto& s = shapes[i];
        CAPTURE(detail::pool_isa_name(isa));
        CAPTURE(testutil::describe(s));
        const auto x = testutil::random_ints(static_cast<std::size_t>(s.x_size()),
                                             static_cast<std::uint32_t>(i), -3, 3);
        const auto dy = testutil::random_floats(static_cast<std::size_t>(s.y_size()),
                                                static_cast<std::uint32_t>(i + 1));
        std::vector<float> y1(dy.size(), kNaN), y2(dy.size(), kNaN);
        std::vector<std::int32_t> a1(dy.size(), -1), a2(dy.size(), -1);
        std::vector<float> dx1(x.size(), kNaN), dx2(x.size(), kNaN);
        maxpool2d_forward(s, x, y1, a1);
        reference::maxpool2d_forward(s, x, y2, a2);
        CHECK(testutil::bitwise_equal(y1, y2));
        CHECK(a1 == a2);
        maxpool2d_backward(s, dy, a2, dx1);
        reference::maxpool2d_backward(s, dy, a2, dx2);
        CHECK(testutil::bitwise_equal(dx1, dx2));
      }
    }
  }
}
