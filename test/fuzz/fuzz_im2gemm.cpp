// libFuzzer target: bytes -> one call of a public function (shape, span sizes, data, thread
// count, activation), checked against the contract:
//   - std::invalid_argument, and nothing written (outputs and their guard zones intact); or
//   - a normal return, nothing written outside the output spans (guard zones), and the
//     reference's result (both implementations must also agree on whether to throw).
// Any other outcome aborts (a crash for libFuzzer). Shapes decode small so that each run is
// fast, except for the strides, pads and dilations, which may take extreme values.
//
// Input layout: byte 0 picks the call, byte 1 the thread count and the planners' tuning (column
// block size, every thread on small shapes), byte 2 the convolution engine (the public
// functions where engine and tuning are their own, or the packed or openblas backend on a
// given ISA cap), then
// the shape fields (one byte each, a few values reserved for extremes), then one byte per span
// (exact size, one more, one less, empty), then the data (one byte per float, a few values
// reserved for inf, -inf and NaN); missing bytes read as zero.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <span>
#include <stdexcept>
#include <vector>

#include <im2gemm/im2gemm.hpp>

#include "common/checks.hpp"
#include "conv/engine.hpp"
#include "conv/plan.hpp"

namespace {

using std::int64_t;

constexpr int64_t kMaxElements = 1 << 13;  // per tensor: keeps one run well under a millisecond
constexpr int64_t kMaxMacs = 1 << 17;
constexpr std::size_t kGuard = 16;
constexpr float kSentinel = 12345.678f;
constexpr std::int32_t kIndexSentinel = 0x7eadbeef;

class Bytes {
 public:
  Bytes(const std::uint8_t* p, std::size_t n) : p_(p), n_(n) {}
  std::uint8_t u8() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }
  // A shape field: mostly lo..hi, sometimes 0 or negative or extreme.
  int64_t field(int64_t lo, int64_t hi) {
    static constexpr int64_t kExtreme[] = {0,
                                           -1,
                                           std::numeric_limits<int64_t>::min(),
                                           std::numeric_limits<int64_t>::max(),
                                           std::numeric_limits<int64_t>::max() - 1,
                                           im2gemm::kMaxStridePadDilation,
                                           im2gemm::kMaxStridePadDilation - 1,
                                           im2gemm::kMaxStridePadDilation + 1,
                                           int64_t{1} << 32,
                                           int64_t{1} << 40,
                                           int64_t{1} << 59,
                                           int64_t{1} << 62,
                                           64,
                                           65};
    const std::uint8_t v = u8();
    if (v >= 242) return kExtreme[v - 242];
    return lo + v % (hi - lo + 1);
  }
  // A span's length: exact, one more, one less or empty.
  std::size_t length(int64_t exact) {
    const std::uint8_t v = u8();
    const auto n = static_cast<std::size_t>(exact);
    if (v < 232) return n;
    if (v < 240) return n + 1;
    if (v < 248) return n == 0 ? 0 : n - 1;
    return 0;
  }
  float value() {
    const std::uint8_t v = u8();
    if (v == 255) return std::numeric_limits<float>::infinity();
    if (v == 254) return -std::numeric_limits<float>::infinity();
    if (v == 253) return std::numeric_limits<float>::quiet_NaN();
    return static_cast<float>(v % 9) - 4.0f;  // small integers: fp32 sums are exact
  }
  std::vector<float> values(std::size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = value();
    return v;
  }

 private:
  const std::uint8_t* p_;
  std::size_t n_;
};

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_im2gemm: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

// An output buffer with sentinel guard zones on both sides.
template <class T>
struct Out {
  std::vector<T> all;
  std::size_t n;
  T sentinel;
  Out(std::size_t size, T s) : all(size + 2 * kGuard, s), n(size), sentinel(s) {}
  std::span<T> span() { return {all.data() + kGuard, n}; }
  std::span<const T> inside() const { return {all.data() + kGuard, n}; }
  bool same(T a, T b) const {
    if constexpr (std::is_same_v<T, float>) {
      return std::memcmp(&a, &b, sizeof a) == 0;
    } else {
      return a == b;
    }
  }
  bool guards_intact() const {
    for (std::size_t i = 0; i < kGuard; ++i) {
      if (!same(all[i], sentinel) || !same(all[kGuard + n + i], sentinel)) return false;
    }
    return true;
  }
  bool untouched() const {
    for (const T& v : all)
      if (!same(v, sentinel)) return false;
    return true;
  }
};

// Equal as the reference's result: NaN where it has NaN, the same infinities, and the same
// finite values (exactly, or within a relative tolerance after a sigmoid or tanh).
bool equal_results(std::span<const float> got, std::span<const float> want, float rtol) {
  if (got.size() != want.size()) return false;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const float g = got[i], w = want[i];
    if (std::isnan(w) || std::isnan(g)) {
      if (std::isnan(w) != std::isnan(g)) return false;
    } else if (std::isinf(w) || std::isinf(g)) {
      if (g != w) return false;
    } else if (!(std::fabs(g - w) <= rtol * std::max(1.0f, std::fabs(w)))) {
      return false;
    }
  }
  return true;
}

// Runs f; true if it threw std::invalid_argument (anything else propagates: a crash).
template <class F>
bool throws_invalid(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument&) {
    return true;
  }
  return false;
}

im2gemm::Activation activation(Bytes& in) {
  const std::uint8_t v = in.u8();
  return static_cast<im2gemm::Activation>(v < 250 ? v % 4
                                                  : static_cast<int>(v) - 246);  // 4..9: bad
}

im2gemm::Conv2dShape conv_shape(Bytes& in) {
  im2gemm::Conv2dShape s;
  s.batch = in.field(1, 3);
  s.groups = in.field(1, 3);
  // Channels are multiples of a small groups count (the field itself may be extreme).
  const int64_t per_group = s.groups > 0 && s.groups < 4 ? s.groups : 1;
  auto times = [per_group](int64_t c) {
    int64_t r = 0;
    return __builtin_mul_overflow(c, per_group, &r) ? c : r;
  };
  s.in_channels = times(in.field(1, 3));
  s.out_channels = times(in.field(1, 3));
  s.in_height = in.field(1, 12);
  s.in_width = in.field(1, 12);
  s.kernel_height = in.field(1, 5);
  s.kernel_width = in.field(1, 5);
  s.stride_height = in.field(1, 4);
  s.stride_width = in.field(1, 4);
  s.pad_height = in.field(0, 3);
  s.pad_width = in.field(0, 3);
  s.dilation_height = in.field(1, 3);
  s.dilation_width = in.field(1, 3);
  return s;
}

im2gemm::MaxPool2dShape pool_shape(Bytes& in) {
  im2gemm::MaxPool2dShape s;
  s.batch = in.field(1, 3);
  s.channels = in.field(1, 3);
  s.in_height = in.field(1, 12);
  s.in_width = in.field(1, 12);
  s.kernel_height = in.field(1, 4);
  s.kernel_width = in.field(1, 4);
  s.stride_height = in.field(1, 4);
  s.stride_width = in.field(1, 4);
  s.pad_height = in.field(0, 2);
  s.pad_width = in.field(0, 2);
  return s;
}

template <class Shape>
bool valid(const Shape& s) {
  return !throws_invalid([&] { s.validate(); });
}

// Exact sizes of a valid shape's tensors, or false when they are too large for one run.
bool small_conv(const im2gemm::Conv2dShape& s) {
  return s.x_size() <= kMaxElements && s.w_size() <= kMaxElements && s.y_size() <= kMaxElements &&
         s.macs() <= kMaxMacs;
}

// 0: the public functions (the environment's engine); else one backend on one ISA.
std::uint8_t g_engine = 0;
std::uint8_t g_setup = 0;

// The planners' tuning from the setup byte: small column blocks (many pixel blocks, image
// runs) and every thread on small shapes, or the planners' own constants.
im2gemm::detail::PlanTuning plan_tuning() {
  im2gemm::detail::PlanTuning t;
  t.block_target_bytes = (g_setup >> 2) % 4 == 0 ? 0 : std::size_t{64} << ((g_setup >> 4) % 8);
  if ((g_setup & 0x80) != 0) t.min_macs_per_thread = 1;
  return t;
}

// The public functions run where both the engine and the tuning are theirs.
bool public_call() { return g_engine % 3 == 0 && plan_tuning() == im2gemm::detail::PlanTuning{}; }

im2gemm::detail::ConvOptions conv_options() {
  im2gemm::detail::ConvOptions o = im2gemm::detail::default_conv_options();
  if (g_engine % 3 != 0) {
    o.backend = g_engine % 3 == 1 ? im2gemm::detail::GemmBackend::packed
                                  : im2gemm::detail::GemmBackend::openblas;
    o.isa = static_cast<im2gemm::detail::Isa>((g_engine / 3) % 3);
  }
  o.tuning = plan_tuning();
  return o;
}

void conv_forward(const im2gemm::Conv2dShape& s, std::span<const float> x, std::span<const float> w,
                  std::span<const float> b, std::span<float> y, im2gemm::Activation act) {
  if (public_call()) return im2gemm::conv2d_forward(s, x, w, b, y, act);
  im2gemm::detail::check_conv2d_forward(s, x, w, b, y, act);  // the _with entries check nothing
  im2gemm::detail::conv2d_forward_with(conv_options(), s, x, w, b, y, act);
}
void conv_backward_data(const im2gemm::Conv2dShape& s, std::span<const float> dy,
                        std::span<const float> w, std::span<float> dx, im2gemm::Activation act,
                        std::span<const float> x) {
  if (public_call()) return im2gemm::conv2d_backward_data(s, dy, w, dx, act, x);
  im2gemm::detail::check_conv2d_backward_data(s, dy, w, dx, act, x);
  im2gemm::detail::conv2d_backward_data_with(conv_options(), s, dy, w, dx, act, x);
}
void conv_backward_weights(const im2gemm::Conv2dShape& s, std::span<const float> x,
                           std::span<const float> dy, std::span<float> dw, std::span<float> db) {
  if (public_call()) return im2gemm::conv2d_backward_weights(s, x, dy, dw, db);
  im2gemm::detail::check_conv2d_backward_weights(s, x, dy, dw, db);
  im2gemm::detail::conv2d_backward_weights_with(conv_options(), s, x, dy, dw, db);
}

// FUZZ_VERBOSE=1 prints each call (to replay a crash input: fuzz_im2gemm CRASH_FILE).
const bool g_verbose = std::getenv("FUZZ_VERBOSE") != nullptr;

void fuzz_conv(Bytes& in, int pass) {
  const im2gemm::Conv2dShape s = conv_shape(in);
  if (g_verbose) {
    std::fprintf(stderr,
                 "conv pass %d engine %d threads %d: N%lld C%lld %lldx%lld F%lld k%lldx%lld "
                 "s%lldx%lld p%lldx%lld d%lldx%lld g%lld\n",
                 pass, g_engine, im2gemm::num_threads(), (long long)s.batch,
                 (long long)s.in_channels, (long long)s.in_height, (long long)s.in_width,
                 (long long)s.out_channels, (long long)s.kernel_height, (long long)s.kernel_width,
                 (long long)s.stride_height, (long long)s.stride_width, (long long)s.pad_height,
                 (long long)s.pad_width, (long long)s.dilation_height, (long long)s.dilation_width,
                 (long long)s.groups);
  }
  const bool ok = valid(s);
  if (ok && !small_conv(s)) return;
  // An invalid shape gets spans of a few elements: the call must throw before using them.
  const int64_t nx = ok ? s.x_size() : 4, nw = ok ? s.w_size() : 4, ny = ok ? s.y_size() : 4;
  const int64_t nf = ok ? s.out_channels : 2;
  const im2gemm::Activation act = activation(in);
  const std::size_t lx = in.length(nx), lw = in.length(nw), ly = in.length(ny),
                    lb = in.length(nf) == static_cast<std::size_t>(nf) ? nf : 0;
  const std::vector<float> x = in.values(lx), w = in.values(lw);
  if (pass == 0) {
    const std::vector<float> bias = in.values(lb);
    Out<float> y(ly, kSentinel), y_ref(ly, kSentinel);
    const bool t = throws_invalid([&] { conv_forward(s, x, w, bias, y.span(), act); });
    const bool t_ref = throws_invalid(
        [&] { im2gemm::reference::conv2d_forward(s, x, w, bias, y_ref.span(), act); });
    if (t != t_ref) fail("conv2d_forward: fast and reference disagree on throwing");
    if (t && !y.untouched()) fail("conv2d_forward threw but wrote y");
    if (!y.guards_intact()) fail("conv2d_forward wrote outside y");
    const float rtol =
        act == im2gemm::Activation::sigmoid || act == im2gemm::Activation::tanh ? 1e-5f : 0.0f;
    if (!t && !equal_results(y.inside(), y_ref.inside(), rtol)) fail("conv2d_forward != reference");
  } else if (pass == 1) {
    // dy sized like y; x (for the input activation) like x or empty.
    const std::vector<float> dy = in.values(ly);
    const std::vector<float> xa =
        act == im2gemm::Activation::identity && in.u8() < 128 ? std::vector<float>{} : x;
    Out<float> dx(lx, kSentinel), dx_ref(lx, kSentinel);
    const bool t = throws_invalid([&] { conv_backward_data(s, dy, w, dx.span(), act, xa); });
    const bool t_ref = throws_invalid(
        [&] { im2gemm::reference::conv2d_backward_data(s, dy, w, dx_ref.span(), act, xa); });
    if (t != t_ref) fail("conv2d_backward_data: fast and reference disagree on throwing");
    if (t && !dx.untouched()) fail("conv2d_backward_data threw but wrote dx");
    if (!dx.guards_intact()) fail("conv2d_backward_data wrote outside dx");
    if (!t && !equal_results(dx.inside(), dx_ref.inside(), 1e-5f)) {
      if (g_verbose) {
        for (std::size_t i = 0; i < lx; ++i) {
          std::fprintf(stderr, "dx[%zu] = %g, reference %g\n", i, dx.inside()[i],
                       dx_ref.inside()[i]);
        }
      }
      fail("conv2d_backward_data != reference");
    }
  } else {
    const std::vector<float> dy = in.values(ly);
    Out<float> dw(lw, kSentinel), dw_ref(lw, kSentinel), db(lb, kSentinel), db_ref(lb, kSentinel);
    const bool t = throws_invalid([&] { conv_backward_weights(s, x, dy, dw.span(), db.span()); });
    const bool t_ref = throws_invalid([&] {
      im2gemm::reference::conv2d_backward_weights(s, x, dy, dw_ref.span(), db_ref.span());
    });
    if (t != t_ref) fail("conv2d_backward_weights: fast and reference disagree on throwing");
    if (t && !(dw.untouched() && db.untouched())) fail("conv2d_backward_weights threw but wrote");
    if (!dw.guards_intact() || !db.guards_intact()) fail("conv2d_backward_weights wrote outside");
    if (!t && !(equal_results(dw.inside(), dw_ref.inside(), 0.0f) &&
                equal_results(db.inside(), db_ref.inside(), 0.0f))) {
      fail("conv2d_backward_weights != reference");
    }
  }
}

void fuzz_pool(Bytes& in, bool backward) {
  const im2gemm::MaxPool2dShape s = pool_shape(in);
  const bool ok = valid(s);
  if (ok && (s.x_size() > kMaxElements || s.y_size() > kMaxElements)) return;
  const int64_t nx = ok ? s.x_size() : 4, ny = ok ? s.y_size() : 4;
  const std::size_t lx = in.length(nx), ly = in.length(ny), la = in.length(ny);
  if (!backward) {
    const std::vector<float> x = in.values(lx);
    Out<float> y(ly, kSentinel), y_ref(ly, kSentinel);
    Out<std::int32_t> am(la, kIndexSentinel), am_ref(la, kIndexSentinel);
    const bool t = throws_invalid([&] { im2gemm::maxpool2d_forward(s, x, y.span(), am.span()); });
    const bool t_ref = throws_invalid(
        [&] { im2gemm::reference::maxpool2d_forward(s, x, y_ref.span(), am_ref.span()); });
    if (t != t_ref) fail("maxpool2d_forward: fast and reference disagree on throwing");
    if (t && !(y.untouched() && am.untouched())) fail("maxpool2d_forward threw but wrote");
    if (!y.guards_intact() || !am.guards_intact()) fail("maxpool2d_forward wrote outside");
    if (!t && (std::memcmp(y.all.data(), y_ref.all.data(), y.all.size() * sizeof(float)) != 0 ||
               am.all != am_ref.all)) {
      fail("maxpool2d_forward != reference (bitwise)");
    }
  } else {
    const std::vector<float> dy = in.values(ly);
    // Argmax entries: mostly inside the plane, some outside.
    const int64_t plane = ok ? s.in_height * s.in_width : 4;
    std::vector<std::int32_t> am(la);
    for (auto& a : am) {
      const std::uint8_t v = in.u8();
      a = v >= 250 ? (v == 255 ? -1 : static_cast<std::int32_t>(plane + (v - 250)))
                   : static_cast<std::int32_t>(v % plane);
    }
    Out<float> dx(lx, kSentinel), dx_ref(lx, kSentinel);
    const bool t = throws_invalid([&] { im2gemm::maxpool2d_backward(s, dy, am, dx.span()); });
    const bool t_ref =
        throws_invalid([&] { im2gemm::reference::maxpool2d_backward(s, dy, am, dx_ref.span()); });
    if (t != t_ref) fail("maxpool2d_backward: fast and reference disagree on throwing");
    if (t && !dx.untouched()) fail("maxpool2d_backward threw but wrote dx");
    if (!dx.guards_intact()) fail("maxpool2d_backward wrote outside dx");
    // Overlapping windows add in an order of their own: exact on small integers, NaN alike.
    if (!t && !equal_results(dx.inside(), dx_ref.inside(), 0.0f)) {
      fail("maxpool2d_backward != reference");
    }
  }
}

// The activations have no reference: their formulas, written out here.
void fuzz_activation(Bytes& in, bool backward) {
  const im2gemm::Activation act = activation(in);
  const std::size_t n = in.u8() % 40;
  const bool good_act = static_cast<int>(act) >= 0 && static_cast<int>(act) <= 3;
  if (!backward) {
    Out<float> v(n, kSentinel);
    const std::vector<float> u = in.values(n);
    std::copy(u.begin(), u.end(), v.span().begin());
    const bool t = throws_invalid([&] { im2gemm::activation_forward(act, v.span()); });
    if (t != !good_act) fail("activation_forward: throws exactly for a bad Activation");
    if (!v.guards_intact()) fail("activation_forward wrote outside its span");
    if (t && !std::equal(u.begin(), u.end(), v.inside().begin(),
                         [](float a, float b) { return std::memcmp(&a, &b, 4) == 0; })) {
      fail("activation_forward threw but wrote");
    }
    if (t) return;
    std::vector<float> want(u);
    for (auto& x : want) {
      switch (act) {
        case im2gemm::Activation::identity: break;
        case im2gemm::Activation::relu: x = x > 0.0f ? x : 0.0f; break;
        case im2gemm::Activation::sigmoid:
          x = static_cast<float>(1.0 / (1.0 + std::exp(-double(x))));
          break;
        case im2gemm::Activation::tanh: x = static_cast<float>(std::tanh(double(x))); break;
      }
    }
    if (!equal_results(v.inside(), want, 1e-6f)) fail("activation_forward: wrong values");
  } else {
    const std::size_t nd = in.u8() < 240 ? n : n + 1;  // sometimes lengths differ
    const std::vector<float> y = in.values(n), d0 = in.values(nd);
    Out<float> d(nd, kSentinel);
    std::copy(d0.begin(), d0.end(), d.span().begin());
    const bool t = throws_invalid([&] { im2gemm::activation_backward(act, y, d.span()); });
    if (t != (!good_act || nd != n)) fail("activation_backward: throws exactly on bad input");
    if (!d.guards_intact()) fail("activation_backward wrote outside d");
    if (t && !std::equal(d0.begin(), d0.end(), d.inside().begin(),
                         [](float a, float b) { return std::memcmp(&a, &b, 4) == 0; })) {
      fail("activation_backward threw but wrote");
    }
    if (t) return;
    std::vector<float> want(d0);
    for (std::size_t i = 0; i < n; ++i) {
      const float yi = y[i];
      switch (act) {
        case im2gemm::Activation::identity: break;
        case im2gemm::Activation::relu: want[i] = yi > 0.0f ? want[i] : 0.0f; break;
        case im2gemm::Activation::sigmoid: want[i] *= yi * (1.0f - yi); break;
        case im2gemm::Activation::tanh: want[i] *= 1.0f - yi * yi; break;
      }
    }
    if (!equal_results(d.inside(), want, 1e-6f)) fail("activation_backward: wrong values");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes in(data, size);
  const std::uint8_t call = in.u8() % 7;
  const std::uint8_t setup = in.u8();
  g_engine = in.u8();
  im2gemm::set_num_threads(1 + setup % 3);
  g_setup = setup;
  switch (call) {
    case 0:
    case 1:
    case 2: fuzz_conv(in, call); break;
    case 3: fuzz_pool(in, false); break;
    case 4: fuzz_pool(in, true); break;
    case 5: fuzz_activation(in, false); break;
    default: fuzz_activation(in, true); break;
  }
  return 0;
}
