// The fast max pooling against the reference loops, bit for bit, on every ISA path.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <omp.h>

#include "common/scratch.hpp"
#include "pool/maxpool2d_impl.hpp"
#include "test_util.hpp"

using namespace im2gemm;
using detail::PoolIsa;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr std::int32_t kIndexSentinel = 0x7eadbeef;

// The ISAs this machine can run, each forced in turn by the tests.
std::vector<PoolIsa> isas() {
  std::vector<PoolIsa> v{PoolIsa::scalar};
  if (detail::pool_isa_supported() >= PoolIsa::avx2) v.push_back(PoolIsa::avx2);
  if (detail::pool_isa_supported() >= PoolIsa::avx512) v.push_back(PoolIsa::avx512);
  return v;
}

// Restores the uncapped ISA and the default thread count at the end of a scope.
struct IsaScope {
  explicit IsaScope(PoolIsa isa) { detail::set_pool_isa_cap(isa); }
  ~IsaScope() {
    detail::set_pool_isa_cap(PoolIsa::avx512);
    set_num_threads(0);
  }
};

enum class Fill { floats, ties, special };

std::vector<float> make_input(std::size_t n, std::uint32_t seed, Fill fill) {
  switch (fill) {
    case Fill::floats: return testutil::random_floats(n, seed);
    case Fill::ties: return testutil::random_ints(n, seed, -2, 2);  // many equal maxima
    case Fill::special: {
      // small integers with NaN and -inf sprinkled in, sometimes in runs
      auto v = testutil::random_ints(n, seed, -2, 2);
      std::mt19937 rng(seed ^ 0x9e3779b9u);
      std::uniform_int_distribution<int> d(0, 99);
      for (std::size_t i = 0; i < n; ++i) {
        const int r = d(rng);
        if (r < 4) v[i] = kNaN;
        else if (r < 30) v[i] = -kInf;
        else if (r < 32) v[i] = kInf;
      }
      return v;
    }
  }
  return {};
}

struct Result {
  std::vector<float> y;
  std::vector<std::int32_t> argmax;
  std::vector<float> dx;
};

// Forward on x, backward with dy; outputs pre-filled with sentinels.
template <class Fwd, class Bwd>
Result run(const MaxPool2dShape& s, const std::vector<float>& x, const std::vector<float>& dy,
           Fwd fwd, Bwd bwd) {
  Result r;
  r.y.assign(static_cast<std::size_t>(s.y_size()), kNaN);
  r.argmax.assign(static_cast<std::size_t>(s.y_size()), kIndexSentinel);
  r.dx.assign(static_cast<std::size_t>(s.x_size()), testutil::kSentinel);
  fwd(s, x, r.y, r.argmax);
  bwd(s, dy, r.argmax, r.dx);
  return r;
}

Result run_fast(const MaxPool2dShape& s, const std::vector<float>& x,
                const std::vector<float>& dy) {
  return run(
      s, x, dy,
      [](const MaxPool2dShape& sh, std::span<const float> a, std::span<float> b,
         std::span<std::int32_t> c) { maxpool2d_forward(sh, a, b, c); },
      [](const MaxPool2dShape& sh, std::span<const float> a, std::span<const std::int32_t> b,
         std::span<float> c) { maxpool2d_backward(sh, a, b, c); });
}

Result run_ref(const MaxPool2dShape& s, const std::vector<float>& x, const std::vector<float>& dy) {
  return run(
      s, x, dy,
      [](const MaxPool2dShape& sh, std::span<const float> a, std::span<float> b,
         std::span<std::int32_t> c) { reference::maxpool2d_forward(sh, a, b, c); },
      [](const MaxPool2dShape& sh, std::span<const float> a, std::span<const std::int32_t> b,
         std::span<float> c) { reference::maxpool2d_backward(sh, a, b, c); });
}

// Compares fast against reference exactly; returns false (after reporting) on a difference.
bool same(const Result& got, const Result& want) {
  const bool y_ok = testutil::bitwise_equal(got.y, want.y);
  const bool a_ok = got.argmax == want.argmax;
  const bool dx_ok = testutil::bitwise_equal(got.dx, want.dx);
  if (!a_ok) {
    for (std::size_t i = 0; i < got.argmax.size(); ++i) {
      if (got.argmax[i] != want.argmax[i]) {
        INFO("first argmax mismatch at " << i << ": got " << got.argmax[i] << " want "
                                         << want.argmax[i]);
        CHECK(a_ok);
        break;
      }
    }
  }
  CHECK(y_ok);
  CHECK(a_ok);
  CHECK(dx_ok);
  return y_ok && a_ok && dx_ok;
}

void check_against_reference(const MaxPool2dShape& s, std::uint32_t seed, Fill fill) {
  const auto x = make_input(static_cast<std::size_t>(s.x_size()), seed, fill);
  const auto dy = testutil::random_floats(static_cast<std::size_t>(s.y_size()), seed + 7);
  const Result want = run_ref(s, x, dy);
  const Result got = run_fast(s, x, dy);
  same(got, want);
}

MaxPool2dShape pool(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, std::int64_t kh,
                    std::int64_t kw, std::int64_t sh, std::int64_t sw, std::int64_t ph,
                    std::int64_t pw) {
  MaxPool2dShape s;
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
  return s;
}

// Random valid shapes: kernels 1-5 (non-square), strides 1-4, pads up to kernel-1, odd sizes
// from 1 to 70 (wide enough for full 16-lane groups and tails), batch 1-4.
std::vector<MaxPool2dShape> random_shapes(int count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<MaxPool2dShape> out;
  while (static_cast<int>(out.size()) < count) {
    MaxPool2dShape s;
    s.batch = uni(1, 4);
    s.channels = uni(1, 5);
    s.kernel_height = uni(1, 5);
    s.kernel_width = uni(1, 5);
    s.stride_height = uni(1, 4);
    s.stride_width = uni(1, 4);
    s.pad_height = uni(0, static_cast<int>(s.kernel_height) - 1);
    s.pad_width = uni(0, static_cast<int>(s.kernel_width) - 1);
    s.in_height = uni(1, uni(0, 3) == 0 ? 70 : 20);
    s.in_width = uni(1, uni(0, 2) == 0 ? 70 : 24);
    if (s.in_height + 2 * s.pad_height < s.kernel_height) continue;
    if (s.in_width + 2 * s.pad_width < s.kernel_width) continue;
    out.push_back(s);
  }
  return out;
}

}  // namespace

TEST_CASE("ISA cap selects each path and never exceeds the CPU") {
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    CHECK(detail::pool_isa_active() == isa);
  }
  detail::set_pool_isa_cap(PoolIsa::avx512);
  CHECK(detail::pool_isa_active() == detail::pool_isa_supported());
  MESSAGE("CPU supports " << std::string(detail::pool_isa_name(detail::pool_isa_supported())));
}

TEST_CASE("kernel choice is named by the exact shape") {
  auto k = [](std::int64_t kh, std::int64_t kw, std::int64_t sh, std::int64_t sw, std::int64_t ph,
              std::int64_t pw) {
    return detail::choose_pool_kernel(detail::PoolGeom{9, 9, 1, 1, kh, kw, sh, sw, ph, pw});
  };
  using detail::PoolKernel;
  CHECK(k(2, 2, 2, 2, 0, 0) == PoolKernel::k2x2_s2_p0);
  CHECK(k(3, 3, 2, 2, 1, 1) == PoolKernel::k3x3_s2_p1);
  CHECK(k(3, 3, 2, 2, 0, 0) == PoolKernel::k3x3_s2_p0);
  CHECK(k(2, 2, 2, 2, 1, 0) == PoolKernel::general);
  CHECK(k(2, 2, 1, 2, 0, 0) == PoolKernel::general);
  CHECK(k(3, 2, 2, 2, 1, 1) == PoolKernel::general);
  CHECK(k(3, 3, 2, 2, 1, 0) == PoolKernel::general);
  CHECK(k(3, 3, 3, 3, 1, 1) == PoolKernel::general);
}

TEST_CASE("random shapes match the reference exactly on every ISA") {
  const auto shapes = random_shapes(320, 20261127u);
  int checked = 0;
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      const auto& s = shapes[i];
      const Fill fill = static_cast<Fill>(i % 3);
      CAPTURE(detail::pool_isa_name(isa));
      CAPTURE(testutil::describe(s));
      CAPTURE(static_cast<int>(fill));
      check_against_reference(s, static_cast<std::uint32_t>(1000 + i), fill);
      ++checked;
    }
  }
  MESSAGE(checked << " shape x ISA cases");
}

TEST_CASE("dedicated paths on odd sizes cover their tails") {
  // Widths around the 8- and 16-lane groups (and twice them for stride 2), odd and even
  // heights, every fill.
  const std::vector<std::int64_t> widths{2,  3,  4,  5,  7,  15, 16, 17, 18, 31, 32,  33,
                                         34, 35, 47, 55, 63, 64, 65, 66, 67, 97, 112, 113};
  const std::vector<std::int64_t> heights{2, 3, 4, 5, 9, 12};
  struct Win {
    std::int64_t k, s, p;
  };
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (const Win win : {Win{2, 2, 0}, Win{3, 2, 1}, Win{3, 2, 0}}) {
      for (std::int64_t h : heights) {
        for (std::int64_t w : widths) {
          const auto s = pool(1, 2, h, w, win.k, win.k, win.s, win.s, win.p, win.p);
          if (h + 2 * win.p < win.k || w + 2 * win.p < win.k) continue;
          CAPTURE(detail::pool_isa_name(isa));
          CAPTURE(testutil::describe(s));
          for (Fill fill : {Fill::floats, Fill::ties, Fill::special}) {
            check_against_reference(s, static_cast<std::uint32_t>(h * 131 + w), fill);
          }
        }
      }
    }
  }
}

TEST_CASE("2x2 quads: rows of 4 to 32 outputs, odd quad counts, row blocks, 1 and 2 threads") {
  // pool_2x2_quads (AVX2) takes rows of whole quads up to 32 outputs; an odd quad count ends
  // in a vector overlapping the one before. Batch 1 with a few channels cuts planes into row
  // blocks (oh_begin > 0); odd widths and heights leave a last column or row no window reads.
  const std::vector<std::int64_t> widths{8, 9, 16, 24, 25, 40, 41, 56, 64, 65, 66};
  const std::vector<std::int64_t> heights{2, 3, 6, 7, 25, 64};
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      for (std::int64_t n : {1, 3}) {
        for (std::int64_t h : heights) {
          for (std::int64_t w : widths) {
            const auto s = pool(n, 2, h, w, 2, 2, 2, 2, 0, 0);
            CAPTURE(detail::pool_isa_name(isa));
            CAPTURE(threads);
            CAPTURE(testutil::describe(s));
            for (Fill fill : {Fill::floats, Fill::ties, Fill::special}) {
              check_against_reference(s, static_cast<std::uint32_t>(h * 977 + w + n), fill);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("general path: stride > kernel, kernel = input, pad = kernel-1, 1x1") {
  const std::vector<MaxPool2dShape> shapes{
      pool(2, 3, 17, 37, 2, 2, 3, 3, 0, 0),  // stride > kernel: skipped cells
      pool(1, 2, 19, 40, 1, 3, 4, 4, 0, 2),  // stride > kernel with padding
      pool(1, 3, 9, 23, 9, 23, 1, 1, 0, 0),  // kernel = input
      pool(2, 2, 7, 35, 5, 5, 1, 1, 4, 4),   // pad = kernel - 1, stride 1
      pool(1, 1, 5, 6, 4, 3, 2, 1, 3, 2),    // pad = kernel - 1, non-square
      pool(1, 2, 27, 37, 1, 1, 1, 1, 0, 0),  // 1x1 stride 1: identity
      pool(1, 2, 27, 37, 1, 1, 2, 2, 0, 0),  // 1x1 stride 2: subsampling
      pool(3, 2, 33, 71, 3, 2, 1, 2, 1, 1),  // stride 2 columns, stride 1 rows
      pool(1, 1, 1, 200, 1, 3, 1, 3, 0, 1),  // one row
      pool(1, 1, 200, 1, 3, 1, 3, 1, 1, 0),  // one column
  };
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (const auto& s : shapes) {
      CAPTURE(detail::pool_isa_name(isa));
      CAPTURE(testutil::describe(s));
      for (Fill fill : {Fill::floats, Fill::ties, Fill::special}) {
        check_against_reference(s, 77u, fill);
      }
    }
  }
}

TEST_CASE("semantics: ties, NaN, -inf, padding") {
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    CAPTURE(detail::pool_isa_name(isa));
    // 2x2 windows over a 2x40 input: 20 outputs (full group + tail on every ISA).
    const auto s = pool(1, 1, 2, 40, 2, 2, 2, 2, 0, 0);
    std::vector<float> x(80, 1.0f);  // all tied: the first cell (row 0, even column) wins
    std::vector<float> y(20);
    std::vector<std::int32_t> a(20);
    // window 1: two NaNs, the first in row-major order is (0, 3)
    x[3] = kNaN;
    x[40 + 2] = kNaN;
    // window 2: NaN after a larger value still wins
    x[4] = 5.0f;
    x[40 + 5] = kNaN;
    // window 3: all -inf gives -inf and the first cell
    x[6] = x[7] = x[46] = x[47] = -kInf;
    // window 4: tie between (0,9) and (1,8): row-major first is (0,9)
    x[9] = 3.0f;
    x[48] = 3.0f;
    // window 5: -inf then a larger finite value
    x[10] = -kInf;
    x[11] = -kInf;
    x[50] = -kInf;
    x[51] = -7.0f;
    // window 6: +inf beats everything, NaN beats +inf
    x[12] = kInf;
    x[53] = kInf;
    x[14] = kInf;
    x[55] = kNaN;
    // window 19 (tail on AVX-512): NaN in the last cell
    x[40 + 39] = kNaN;
    maxpool2d_forward(s, x, y, a);
    CHECK(std::isnan(y[1]));
    CHECK(a[1] == 3);
    CHECK(std::isnan(y[2]));
    CHECK(a[2] == 45);
    CHECK(y[3] == -kInf);
    CHECK(a[3] == 6);
    CHECK(y[4] == 3.0f);
    CHECK(a[4] == 9);
    CHECK(y[5] == -7.0f);
    CHECK(a[5] == 51);
    CHECK(y[6] == kInf);
    CHECK(a[6] == 12);
    CHECK(std::isnan(y[7]));
    CHECK(a[7] == 55);
    CHECK(std::isnan(y[19]));
    CHECK(a[19] == 79);
    for (int o : {0, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18}) {
      CHECK(y[o] == 1.0f);
      CHECK(a[o] == 2 * o);
    }
    // Padded cells never win: all-negative and all -inf inputs with padding 1.
    const auto sp = pool(1, 1, 5, 37, 3, 3, 2, 2, 1, 1);
    std::vector<float> neg(5 * 37, -4.0f);
    std::vector<float> yp(static_cast<std::size_t>(sp.y_size()));
    std::vector<std::int32_t> ap(yp.size());
    maxpool2d_forward(sp, neg, yp, ap);
    std::vector<float> yr(yp.size());
    std::vector<std::int32_t> ar(yp.size());
    reference::maxpool2d_forward(sp, neg, yr, ar);
    for (float v : yp) CHECK(v == -4.0f);
    CHECK(ap == ar);
    CHECK(ap[0] == 0);  // first real cell of the top-left window
    std::vector<float> ninf(5 * 37, -kInf);
    maxpool2d_forward(sp, ninf, yp, ap);
    reference::maxpool2d_forward(sp, ninf, yr, ar);
    for (float v : yp) CHECK(v == -kInf);
    CHECK(ap == ar);
    CHECK(ap[1] == 1);  // window columns 1..3 of row 0 (row -1 is padding)
  }
}

TEST_CASE("backward: overlapping windows add up, stride > kernel leaves zeros") {
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    const auto s = pool(1, 1, 1, 5, 1, 3, 1, 1, 0, 0);  // windows [0,3) [1,4) [2,5)
    const std::vector<float> x{0.0f, 1.0f, 9.0f, 2.0f, 3.0f};
    std::vector<float> y(3), dx(5, testutil::kSentinel);
    std::vector<std::int32_t> a(3);
    maxpool2d_forward(s, x, y, a);
    CHECK(a == std::vector<std::int32_t>{2, 2, 2});
    maxpool2d_backward(s, std::vector<float>{1.0f, 2.0f, 4.0f}, a, dx);
    CHECK(dx == std::vector<float>{0.0f, 0.0f, 7.0f, 0.0f, 0.0f});
  }
}

TEST_CASE("corrupted argmax is rejected and dx is untouched") {
  const auto s = pool(2, 3, 9, 11, 3, 3, 2, 2, 1, 1);
  const auto x = testutil::random_floats(static_cast<std::size_t>(s.x_size()), 5u);
  std::vector<float> y(static_cast<std::size_t>(s.y_size()));
  std::vector<std::int32_t> a(y.size());
  maxpool2d_forward(s, x, y, a);
  const std::int32_t plane = 9 * 11;
  for (const std::size_t pos : {std::size_t{0}, a.size() / 2, a.size() - 1}) {
    for (const std::int32_t bad : {-1, plane, plane + 5, std::numeric_limits<std::int32_t>::max(),
                                   std::numeric_limits<std::int32_t>::min()}) {
      auto corrupt = a;
      corrupt[pos] = bad;
      std::vector<float> dx(static_cast<std::size_t>(s.x_size()), testutil::kSentinel);
      CAPTURE(pos);
      CAPTURE(bad);
      CHECK_THROWS_AS(maxpool2d_backward(s, y, corrupt, dx), std::invalid_argument);
      bool untouched = true;
      for (float v : dx) untouched = untouched && v == testutil::kSentinel;
      CHECK(untouched);
    }
  }
  // Bad sizes are rejected before anything is written, too.
  std::vector<float> y_short(y.size() - 1, testutil::kSentinel);
  std::vector<std::int32_t> a_out(y.size(), kIndexSentinel);
  CHECK_THROWS_AS(maxpool2d_forward(s, x, y_short, a_out), std::invalid_argument);
  for (auto v : a_out) CHECK(v == kIndexSentinel);
}

TEST_CASE("1 and 2 threads give identical bits; batch 1 uses row blocks") {
  // Inputs above 512 KiB, so that the plan really uses 2 threads (256 KiB each at least).
  const std::vector<MaxPool2dShape> shapes{
      pool(3, 8, 120, 117, 3, 3, 2, 2, 1, 1),
      pool(1, 1, 401, 399, 2, 2, 2, 2, 0, 0),  // one plane: split into row blocks
      pool(2, 48, 55, 55, 3, 3, 2, 2, 0, 0),
      pool(2, 40, 61, 59, 4, 3, 1, 2, 2, 1),
  };
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (const auto& s : shapes) {
      CAPTURE(detail::pool_isa_name(isa));
      CAPTURE(testutil::describe(s));
      const auto x = make_input(static_cast<std::size_t>(s.x_size()), 3u, Fill::special);
      const auto dy = testutil::random_floats(static_cast<std::size_t>(s.y_size()), 4u);
      set_num_threads(1);
      const Result one = run_fast(s, x, dy);
      set_num_threads(2);
      const Result two = run_fast(s, x, dy);
      const Result again = run_fast(s, x, dy);
      same(two, one);
      same(again, two);
      same(one, run_ref(s, x, dy));
    }
  }
}

TEST_CASE("the suite's pools match the reference (reduced batch)") {
  // pools.txt shapes with batch 1 and fewer channels: the exact bench geometry, quickly.
  const std::vector<MaxPool2dShape> shapes{
      pool(2, 3, 24, 24, 2, 2, 2, 2, 0, 0),    // lenet_pool
      pool(1, 2, 224, 224, 2, 2, 2, 2, 0, 0),  // vgg_pool1
      pool(1, 2, 112, 112, 3, 3, 2, 2, 1, 1),  // resnet_pool
      pool(1, 3, 55, 55, 3, 3, 2, 2, 0, 0),    // alexnet_pool1
  };
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (const auto& s : shapes) {
      CAPTURE(detail::pool_isa_name(isa));
      CAPTURE(testutil::describe(s));
      check_against_reference(s, 11u, Fill::floats);
      check_against_reference(s, 12u, Fill::special);
    }
  }
}

TEST_CASE("large tensors: streamed outputs and row blocks bounded by the scratch") {
  // Outputs above 32 MiB go through per-thread scratch and non-temporal stores (forward: y
  // and argmax; backward: dx, when two planes fit the scratch); odd plane sizes put the
  // aligned part of each copy at every offset. The single 4099-wide plane is cut into row
  // blocks that fit the scratch.
  const std::vector<MaxPool2dShape> shapes{
      pool(3, 16, 511, 513, 2, 2, 1, 1, 0, 0),   // forward streamed: y 12.5M outputs
      pool(4, 128, 129, 129, 3, 3, 2, 2, 1, 1),  // backward streamed: dx 34 MB of small planes
      pool(1, 1, 4096, 4099, 2, 2, 2, 2, 0, 0),  // one plane, 2049 outputs per row; y 34 MB
  };
  for (const auto& s : shapes) {
    CAPTURE(testutil::describe(s));
    const auto x = make_input(static_cast<std::size_t>(s.x_size()), 21u, Fill::special);
    const auto dy = testutil::random_ints(static_cast<std::size_t>(s.y_size()), 22u, -8, 8);
    const Result want = run_ref(s, x, dy);
    for (PoolIsa isa : isas()) {
      IsaScope scope(isa);
      CAPTURE(detail::pool_isa_name(isa));
      same(run_fast(s, x, dy), want);
    }
  }
}

// ---- One-pass backward of the 2x2 stride-2 pad-0 window ----

namespace {

// dy with the values whose rounding the one-pass kernel must reproduce (the reference adds dy
// to a zeroed dx: -0 becomes +0, a signalling NaN becomes quiet) among ordinary floats.
std::vector<float> special_dy(std::size_t n, std::uint32_t seed) {
  auto v = testutil::random_floats(n, seed);
  std::uint32_t snan_bits = 0x7f800001u, nan_payload_bits = 0xffc01234u;
  float snan, nan_payload;
  std::memcpy(&snan, &snan_bits, 4);
  std::memcpy(&nan_payload, &nan_payload_bits, 4);
  const float specials[] = {-0.0f, 0.0f, kNaN, snan, nan_payload, kInf, -kInf, 1e-40f, -1e-40f};
  std::mt19937 rng(seed ^ 0x51ed270bu);
  std::uniform_int_distribution<int> d(0, 9);
  std::uniform_int_distribution<int> pick(0, static_cast<int>(std::size(specials)) - 1);
  for (auto& x : v) {
    if (d(rng) < 3) x = specials[pick(rng)];
  }
  return v;
}

MaxPool2dShape pool2x2(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) {
  return pool(n, c, h, w, 2, 2, 2, 2, 0, 0);
}

detail::PoolGeom geom2x2(std::int64_t h, std::int64_t w) {
  return detail::PoolGeom{h, w, h / 2, w / 2, 2, 2, 2, 2, 0, 0};
}

// Valid argmax (the reference forward's) of random data with many ties.
std::vector<std::int32_t> argmax_of(const MaxPool2dShape& s, std::uint32_t seed) {
  const auto x = make_input(static_cast<std::size_t>(s.x_size()), seed, Fill::special);
  std::vector<float> y(static_cast<std::size_t>(s.y_size()));
  std::vector<std::int32_t> a(y.size());
  reference::maxpool2d_forward(s, x, y, a);
  return a;
}

// Cells of the plane outside window (oh, ow): its neighbours' cells, the uncovered odd last
// row and column, the plane's corners.
std::vector<std::int32_t> cells_outside(std::int64_t h, std::int64_t w, std::int64_t oh,
                                        std::int64_t ow) {
  std::vector<std::int64_t> c{0,
                              h * w - 1,
                              (2 * oh) * w + 2 * ow + 2,
                              (2 * oh) * w + 2 * ow - 1,
                              (2 * oh + 2) * w + 2 * ow,
                              (2 * oh - 1) * w + 2 * ow + 1,
                              (2 * oh) * w + 2 * ow + w + 2};
  if (w % 2) c.push_back(2 * oh * w + w - 1), c.push_back((2 * oh + 1) * w + w - 1);
  if (h % 2) c.push_back((h - 1) * w + 2 * ow);
  std::vector<std::int32_t> out;
  for (std::int64_t v : c) {
    const std::int64_t r = v / w, col = v % w;
    const bool inside = r / 2 == oh && col / 2 == ow && r < 2 * (h / 2) && col < 2 * (w / 2);
    if (v >= 0 && v < h * w && !inside) out.push_back(static_cast<std::int32_t>(v));
  }
  return out;
}

std::vector<float> reference_dx(const MaxPool2dShape& s, const std::vector<float>& dy,
                                const std::vector<std::int32_t>& a) {
  std::vector<float> dx(static_cast<std::size_t>(s.x_size()), testutil::kSentinel);
  reference::maxpool2d_backward(s, dy, a, dx);
  return dx;
}

std::vector<float> fast_dx(const MaxPool2dShape& s, const std::vector<float>& dy,
                           const std::vector<std::int32_t>& a) {
  std::vector<float> dx(static_cast<std::size_t>(s.x_size()), testutil::kSentinel);
  maxpool2d_backward(s, dy, a, dx);
  return dx;
}

// Backward at 1 and at 2 threads must both give `want`, bit for bit (the ISA cap as set).
void check_dx_at_1_and_2_threads(const MaxPool2dShape& s, const std::vector<float>& dy,
                                 const std::vector<std::int32_t>& a,
                                 const std::vector<float>& want) {
  set_num_threads(1);
  CHECK(testutil::bitwise_equal(fast_dx(s, dy, a), want));
  set_num_threads(2);
  CHECK(testutil::bitwise_equal(fast_dx(s, dy, a), want));
}

}  // namespace

TEST_CASE("one-pass 2x2 backward: the plan picks it on the vector ISAs only") {
  using detail::PoolKernel;
  CHECK((detail::pool_backward_2x2_kernel(PoolIsa::scalar) == nullptr));
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    const std::string isa_name = detail::pool_isa_name(isa);
    CAPTURE(isa_name);
    const auto kernel = detail::pool_backward_2x2_kernel(isa);
    CHECK((kernel != nullptr) == (isa != PoolIsa::scalar));
    auto one_pass = [](const MaxPool2dShape& s) {
      return detail::plan_maxpool2d_backward(s, 1).one_pass;
    };
    CHECK((one_pass(pool2x2(2, 3, 24, 24)) == kernel));
    CHECK((one_pass(pool2x2(1, 1, 5, 7)) == kernel));
    // any other window zeroes and scatters
    CHECK((one_pass(pool(1, 1, 8, 8, 2, 2, 2, 2, 1, 1)) == nullptr));
    CHECK((one_pass(pool(1, 1, 8, 8, 2, 2, 1, 1, 0, 0)) == nullptr));
    CHECK((one_pass(pool(1, 1, 9, 9, 3, 3, 2, 2, 1, 1)) == nullptr));
    CHECK((one_pass(pool(1, 1, 9, 9, 3, 3, 2, 2, 0, 0)) == nullptr));
  }
}

TEST_CASE("one-pass 2x2 kernel: exact rows at every dx alignment, ordinary and streaming") {
  // The kernel alone on one plane: the rows it owns equal the reference's, nothing else is
  // written (sentinels around), whatever the 64-byte alignment of dx (streaming cuts its
  // output at lines) and the row range.
  const std::vector<std::int64_t> heights{2, 3, 4, 5, 9};
  const std::vector<std::int64_t> widths{2,  3,  4,  5,  6,  15, 16, 17, 18, 19, 31,
                                         32, 33, 34, 35, 47, 63, 64, 65, 66, 67, 97};
  int calls = 0;
  for (PoolIsa isa : isas()) {
    const auto kernel = detail::pool_backward_2x2_kernel(isa);
    if (kernel == nullptr) continue;
    const std::string isa_name = detail::pool_isa_name(isa);
    CAPTURE(isa_name);
    for (std::int64_t h : heights) {
      for (std::int64_t w : widths) {
        const auto s = pool2x2(1, 1, h, w);
        CAPTURE(testutil::describe(s));
        const auto a = argmax_of(s, static_cast<std::uint32_t>(h * 100 + w));
        const auto dy = special_dy(a.size(), static_cast<std::uint32_t>(h * 7 + w));
        const auto want = reference_dx(s, dy, a);
        const std::int64_t oh = h / 2, hw = h * w;
        const detail::PoolGeom g = geom2x2(h, w);
        std::vector<float> store(static_cast<std::size_t>(hw + 64 + 32));
        std::vector<float> buf(static_cast<std::size_t>(2 * w + 16));
        const auto lead = ((64 - (reinterpret_cast<std::uintptr_t>(store.data()) & 63)) & 63) / 4;
        struct Range {
          std::int64_t b, e;
        };
        std::vector<Range> ranges{{0, oh}, {0, 1}, {oh - 1, oh}};
        if (oh >= 3) ranges.push_back({1, oh - 1});
        for (std::int64_t off = 0; off < 16; ++off) {
          for (const Range r : ranges) {
            for (bool streaming : {false, true}) {
              CAPTURE(off);
              CAPTURE(r.b);
              CAPTURE(r.e);
              CAPTURE(streaming);
              std::fill(store.begin(), store.end(), testutil::kSentinel);
              std::fill(buf.begin(), buf.end(), -99.0f);
              float* dx = store.data() + lead + 16 + off;
              const bool ok =
                  kernel(g, dy.data(), a.data(), dx, r.b, r.e, streaming ? buf.data() : nullptr);
              ++calls;
              CHECK(ok);
              const std::int64_t c0 = 2 * r.b * w, c1 = (r.e == oh ? h : 2 * r.e) * w;
              bool rows_ok = true, rest_ok = true;
              for (std::int64_t i = 0; i < hw; ++i) {
                if (i >= c0 && i < c1) {
                  rows_ok = rows_ok &&
                            testutil::bitwise_equal(std::span(dx + i, 1), std::span(&want[i], 1));
                } else {
                  rest_ok = rest_ok && dx[i] == testutil::kSentinel;
                }
              }
              for (std::size_t i = 0; i < store.size(); ++i) {
                const auto pos = static_cast<std::int64_t>(i) - (dx - store.data());
                if (pos < 0 || pos >= hw) rest_ok = rest_ok && store[i] == testutil::kSentinel;
              }
              CHECK(rows_ok);
              CHECK(rest_ok);
            }
          }
        }
      }
    }
  }
  MESSAGE(calls << " kernel calls");
}

TEST_CASE("one-pass 2x2 kernel: any argmax outside its own window is detected") {
  // Full groups and tails (16 and 8 lanes), odd and even sizes: moving any single window's
  // argmax to a cell outside its window (a neighbour's cell, the uncovered odd row or column)
  // makes the kernel reject the plane, in both store modes.
  for (PoolIsa isa : isas()) {
    const auto kernel = detail::pool_backward_2x2_kernel(isa);
    if (kernel == nullptr) continue;
    const std::string isa_name = detail::pool_isa_name(isa);
    CAPTURE(isa_name);
    for (const auto& [h, w] :
         {std::pair<std::int64_t, std::int64_t>{7, 37}, {6, 36}, {4, 2}, {5, 3}, {3, 66}}) {
      const auto s = pool2x2(1, 1, h, w);
      CAPTURE(testutil::describe(s));
      const auto a = argmax_of(s, static_cast<std::uint32_t>(h + w));
      const auto dy = special_dy(a.size(), 3u);
      const detail::PoolGeom g = geom2x2(h, w);
      std::vector<float> dx(static_cast<std::size_t>(h * w));
      std::vector<float> buf(static_cast<std::size_t>(2 * w + 16));
      CHECK(kernel(g, dy.data(), a.data(), dx.data(), 0, g.oh, nullptr));
      int rejected = 0, tried = 0;
      for (std::int64_t oh = 0; oh < g.oh; ++oh) {
        for (std::int64_t ow = 0; ow < g.ow; ++ow) {
          for (std::int32_t bad : cells_outside(h, w, oh, ow)) {
            auto corrupt = a;
            corrupt[static_cast<std::size_t>(oh * g.ow + ow)] = bad;
            for (float* sb : {static_cast<float*>(nullptr), buf.data()}) {
              ++tried;
              rejected += !kernel(g, dy.data(), corrupt.data(), dx.data(), 0, g.oh, sb);
            }
          }
        }
      }
      CHECK(tried > 0);
      CHECK(rejected == tried);
    }
  }
}

TEST_CASE("one-pass 2x2 backward matches the reference: odd/even sizes, batch, threads") {
  // Batch and channels 1-4, odd and even H and W, small planes and planes of 2 threads'
  // worth; dy with -0, NaNs, infinities and denormals.
  std::vector<MaxPool2dShape> shapes;
  int i = 0;
  for (std::int64_t h : {2, 3, 8, 13, 24}) {
    for (std::int64_t w : {2, 5, 24, 33, 40}) {
      shapes.push_back(pool2x2(1 + i % 4, 1 + (i / 4) % 4, h, w));
      ++i;
    }
  }
  shapes.push_back(pool2x2(4, 4, 130, 131));  // 1.1 MB: two threads
  shapes.push_back(pool2x2(3, 2, 257, 256));
  shapes.push_back(pool2x2(1, 1, 512, 513));  // one plane
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    const std::string isa_name = detail::pool_isa_name(isa);
    CAPTURE(isa_name);
    for (const auto& s : shapes) {
      CAPTURE(testutil::describe(s));
      const auto a = argmax_of(s, 31u);
      const auto dy = special_dy(a.size(), 32u);
      const auto want = reference_dx(s, dy, a);
      check_dx_at_1_and_2_threads(s, dy, a, want);
      if (4 * s.x_size() >= (std::int64_t{1} << 20)) {
        CHECK(detail::plan_maxpool2d_backward(s, 2).threads == 2);
      }
    }
  }
}

TEST_CASE("one-pass 2x2 backward: out-of-window argmax falls back exactly") {
  // Some planes hold argmax entries elsewhere in their plane (legal: the reference adds dy
  // there, possibly on top of another window's); those planes are zeroed and scattered, the
  // others keep the one-pass path. Small, two-thread and streamed (> 32 MiB) tensors.
  const std::vector<MaxPool2dShape> shapes{
      pool2x2(2, 3, 9, 11),     pool2x2(4, 4, 130, 131),
      pool2x2(6, 5, 24, 24),    pool2x2(3, 4, 15, 9),  // rows of whole quads (odd count, odd sizes)
      pool2x2(2, 24, 513, 515),                        // dx 50.7 MB: streamed
  };
  for (const auto& s : shapes) {
    CAPTURE(testutil::describe(s));
    auto a = argmax_of(s, 41u);
    const auto dy = special_dy(a.size(), 42u);
    const std::int64_t planes = s.batch * s.channels, h = s.in_height, w = s.in_width;
    const std::int64_t oh = s.out_height(), ow = s.out_width(), ohw = oh * ow;
    std::mt19937 rng(43u);
    for (std::int64_t p = 0; p < planes; p += 3) {  // every third plane, a few entries each
      for (int k = 0; k < 1 + static_cast<int>(p % 4); ++k) {
        const std::int64_t o = std::uniform_int_distribution<std::int64_t>(0, ohw - 1)(rng);
        const auto out = cells_outside(h, w, o / ow, o % ow);
        a[static_cast<std::size_t>(p * ohw + o)] =
            out[std::uniform_int_distribution<std::size_t>(0, out.size() - 1)(rng)];
      }
    }
    const auto want = reference_dx(s, dy, a);
    for (PoolIsa isa : isas()) {
      IsaScope scope(isa);
      const std::string isa_name = detail::pool_isa_name(isa);
      CAPTURE(isa_name);
      check_dx_at_1_and_2_threads(s, dy, a, want);
    }
  }
}

TEST_CASE("one-pass 2x2 backward, streamed: odd sizes, 1 and 2 threads, every ISA") {
  // dx above 32 MiB: the one-pass kernel writes it with non-temporal stores through its row
  // buffer; odd plane sizes put every 64-byte alignment at the start of some plane.
  const std::vector<MaxPool2dShape> shapes{
      pool2x2(3, 21, 401, 403),   // odd H and W
      pool2x2(2, 16, 512, 530),   // even
      pool2x2(1, 1, 4096, 2049),  // one plane
  };
  for (const auto& s : shapes) {
    CAPTURE(testutil::describe(s));
    const auto a = argmax_of(s, 51u);
    const auto dy = special_dy(a.size(), 52u);
    const auto want = reference_dx(s, dy, a);
    for (PoolIsa isa : isas()) {
      IsaScope scope(isa);
      const std::string isa_name = detail::pool_isa_name(isa);
      CAPTURE(isa_name);
      if (isa != PoolIsa::scalar) CHECK(detail::plan_maxpool2d_backward(s, 2).stream);
      check_dx_at_1_and_2_threads(s, dy, a, want);
    }
  }
}

TEST_CASE("streaming paths: no scratch for a thread means std::bad_alloc and nothing written") {
  struct Unfail {
    ~Unfail() { detail::set_fail_scratch_thread(-1); }
  } unfail;
  const int dynamic = omp_get_dynamic();
  omp_set_dynamic(0);  // every region gets the threads it asks for
  // Forward streamed; backward zero + scatter streamed; backward one-pass streamed.
  const MaxPool2dShape fwd = pool(3, 16, 511, 513, 2, 2, 1, 1, 0, 0);
  const MaxPool2dShape scatter = pool(4, 128, 129, 129, 3, 3, 2, 2, 1, 1);
  const MaxPool2dShape one_pass = pool2x2(2, 16, 512, 530);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto untouched = [](const auto& v) {
    return std::all_of(v.begin(), v.end(), [](auto f) { return f != f || f == -7; });
  };
  const int team_max = std::min(2, omp_get_thread_limit());
  int failures = 0;
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (int threads = 1; threads <= team_max; ++threads) {
      set_num_threads(threads);
      for (int failing = 0; failing < threads; ++failing) {
        const std::string isa_name = detail::pool_isa_name(isa);
        CAPTURE(isa_name);
        CAPTURE(threads);
        CAPTURE(failing);
        detail::set_fail_scratch_thread(failing);
        {
          const auto x = make_input(static_cast<std::size_t>(fwd.x_size()), 61u, Fill::floats);
          std::vector<float> y(static_cast<std::size_t>(fwd.y_size()), nan);
          std::vector<std::int32_t> am(static_cast<std::size_t>(fwd.y_size()), -7);
          CHECK_THROWS_AS(maxpool2d_forward(fwd, x, y, am), std::bad_alloc);
          CHECK(untouched(y));
          CHECK(untouched(am));
          ++failures;
        }
        // The one-pass kernel runs on the vector ISAs only; on the scalar ISA its shape's
        // planes are too large for the zero + scatter path's scratch, which then writes dx
        // directly (no scratch: nothing can fail).
        for (int k = 0; k < 2; ++k) {
          const MaxPool2dShape& s = k == 0 ? scatter : one_pass;
          CAPTURE(testutil::describe(s));
          const bool streams = detail::plan_maxpool2d_backward(s, threads).stream;
          CHECK(streams == (k == 0 || isa != PoolIsa::scalar));
          const auto a = argmax_of(s, 62u);
          const auto dy = testutil::random_floats(a.size(), 63u);
          std::vector<float> dx(static_cast<std::size_t>(s.x_size()), nan);
          if (streams) {
            CHECK_THROWS_AS(maxpool2d_backward(s, dy, a, dx), std::bad_alloc);
            CHECK(untouched(dx));
            ++failures;
          } else {
            CHECK_NOTHROW(maxpool2d_backward(s, dy, a, dx));
            CHECK(testutil::bitwise_equal(dx, reference_dx(s, dy, a)));
          }
        }
      }
    }
  }
  omp_set_dynamic(dynamic);
  detail::set_fail_scratch_thread(-1);
  // Without the failure the same calls run.
  const auto a = argmax_of(one_pass, 62u);
  const auto dy = testutil::random_floats(a.size(), 63u);
  CHECK(testutil::bitwise_equal(fast_dx(one_pass, dy, a), reference_dx(one_pass, dy, a)));
  CHECK(failures >= 3);
}

TEST_CASE("backward through an activation: bitwise maxpool2d_backward of dy * act'(y)") {
  // The layer's fused path (dy scaled per plane in scratch) on the one-pass 2x2 shape, the
  // scatter shape, a streamed shape, and a plane above the fused size (scaled first).
  const std::vector<MaxPool2dShape> shapes{
      pool2x2(3, 5, 24, 24),                    // one-pass (vector ISAs)
      pool(2, 3, 13, 17, 3, 3, 2, 2, 1, 1),     // zero + scatter, overlapping
      pool(2, 64, 200, 330, 2, 2, 2, 2, 0, 0),  // dx 33.8 MB: streamed one-pass
      pool(1, 1, 300, 260, 2, 2, 2, 2, 0, 0),   // 19500 outputs a plane: not fused
  };
  const Activation acts[] = {Activation::identity, Activation::relu, Activation::sigmoid,
                             Activation::tanh};
  for (PoolIsa isa : isas()) {
    IsaScope scope(isa);
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      for (const auto& s : shapes) {
        const auto x = make_input(static_cast<std::size_t>(s.x_size()), 21u, Fill::floats);
        std::vector<float> y(static_cast<std::size_t>(s.y_size()));
        std::vector<std::int32_t> a(y.size());
        maxpool2d_forward(s, x, y, a);
        const auto dy = testutil::random_floats(y.size(), 22u);
        for (Activation act : acts) {
          CAPTURE(detail::pool_isa_name(isa));
          CAPTURE(threads);
          CAPTURE(testutil::describe(s));
          CAPTURE(static_cast<int>(act));
          auto scaled = dy;
          activation_backward(act, y, scaled);
          std::vector<float> want(x.size(), kNaN), got(x.size(), kNaN);
          maxpool2d_backward(s, scaled, a, want);
          detail::maxpool2d_backward_through_activation(s, dy, y, act, a, got);
          CHECK(testutil::bitwise_equal(got, want));
        }
      }
    }
  }
  // Bad sizes: nothing written.
  const auto s = pool2x2(1, 2, 8, 8);
  std::vector<float> y(static_cast<std::size_t>(s.y_size()), 1.0f), dx(128, kNaN);
  std::vector<std::int32_t> a(y.size(), 0);
  CHECK_THROWS_AS(detail::maxpool2d_backward_through_activation(
                      s, std::span<const float>(y).first(y.size() - 1), y, Activation::relu, a, dx),
                  std::invalid_argument);
  CHECK_THROWS_AS(detail::maxpool2d_backward_through_activation(s, y, y, static_cast<Activation>(9),
                                                                a, dx),
                  std::invalid_argument);
  CHECK(std::all_of(dx.begin(), dx.end(), [](float v) { return std::isnan(v); }));
}
