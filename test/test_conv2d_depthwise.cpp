// The depthwise path (groups == in_channels, any channel multiplier): every pass on every ISA
// this CPU has, at 1 and 2 threads, against the reference loops; its kernels against their
// reference twins; the plan's choice; repeatability; scratch failure; non-finite values.
#include <algorithm>
#include <limits>

#include "common/scratch.hpp"
#include "conv/depthwise.hpp"
#include "conv_cases.hpp"

namespace {

using convcases::Activation;
using convcases::Conv2dShape;
using im2gemm::detail::ConvOptions;
using im2gemm::detail::ConvPass;
using im2gemm::detail::ConvPath;
using im2gemm::detail::GemmBackend;
using im2gemm::detail::Isa;
using std::int64_t;
using testutil::cpu_isas;

using convcases::kEveryThread;

ConvOptions every_thread(Isa isa, int threads) {
  return {.backend = GemmBackend::automatic,
          .isa = isa,
          .threads = threads,
          .tuning = kEveryThread};
}

// The direct kernels wherever they apply (ConvOptions::prefer_direct), every thread.
ConvOptions direct(Isa isa, int threads) {
  ConvOptions o = every_thread(isa, threads);
  o.prefer_direct = true;
  return o;
}

constexpr ConvPass kPasses[] = {ConvPass::forward, ConvPass::backward_data,
                                ConvPass::backward_weights};

// Depthwise (2/3 of the shapes) or narrow groups. Odd on purpose: widths around and past the vector widths (8, 16, 64 = 4 x 16), channel
// multipliers 1-3, kernels 1-5 (non-square), strides 1-3, dilations 1-3, pads up to the kernel.
Conv2dShape random_dw_shape(std::mt19937& rng) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Conv2dShape s;
  s.batch = pick(1, 3);
  s.in_channels = s.groups = pick(2, 7);
  s.out_channels = s.in_channels * pick(1, 3);
  if (pick(0, 2) == 0) {  // narrow groups: 2-4 channels, 1-4 filters a group
    s.groups = pick(2, 4);
    s.in_channels = s.groups * pick(2, 4);
    s.out_channels = s.groups * pick(1, 4);
  }
  s.kernel_height = pick(1, 5);
  s.kernel_width = pick(1, 5);
  if (pick(0, 1) == 0) s.kernel_height = s.kernel_width = 3;
  s.stride_height = pick(1, 3);
  s.stride_width = pick(1, 3);
  s.dilation_height = pick(1, 4) == 1 ? pick(2, 3) : 1;
  s.dilation_width = pick(1, 4) == 1 ? pick(2, 3) : 1;
  s.pad_height = pick(0, static_cast<int>(s.kernel_height));
  s.pad_width = pick(0, static_cast<int>(s.kernel_width));
  const int64_t need_h = (s.kernel_height - 1) * s.dilation_height + 1 - 2 * s.pad_height;
  const int64_t need_w = (s.kernel_width - 1) * s.dilation_width + 1 - 2 * s.pad_width;
  s.in_height = std::max<int64_t>(1, need_h) + pick(0, 11);
  s.in_width = std::max<int64_t>(1, need_w) + (pick(0, 2) == 0 ? pick(60, 75) : pick(0, 21));
  s.validate();
  return s;
}

// A depthwise 3x3 layer with one row and column of padding (MobileNet's): N images of C
// channels H x W, k filters a channel, stride S.
Conv2dShape dw3x3_pad1(const int64_t* r, int64_t k, int64_t S) {
  Conv2dShape s{.batch = r[0],
                .in_channels = r[1],
                .in_height = r[2],
                .in_width = r[3],
                .out_channels = r[1] * k,
                .kernel_height = 3,
                .kernel_width = 3,
                .stride_height = S,
                .stride_width = S,
                .pad_height = 1,
                .pad_width = 1,
                .groups = r[1]};
  s.validate();
  return s;
}

// Shape i of a table, 4 activations (bias on 2 of 3): every pass on every ISA at 1 and 2
// threads on the direct path, exact on integers, within tolerance on floats, bitwise the same
// at 1 and 2 threads. seed: the data's (integers at seed, floats at seed + 400). Returns the
// (ISA, thread count) runs for which counts(isa, threads) held.
template <class Counts>
int check_direct_shape(const Conv2dShape& s, int i, std::uint32_t seed, Counts&& counts) {
  int counted = 0;
  for (int k = 0; k < 4; ++k) {
    const Activation act = convcases::kActs[(i + k) % 4];
    const bool bias = (i + k) % 3 != 2;
    const auto di = convcases::make_data(s, static_cast<std::uint32_t>(i * 4 + k) + seed, true);
    const auto ri = convcases::run_ref(s, di, act, bias);
    const auto df =
        convcases::make_data(s, static_cast<std::uint32_t>(i * 4 + k) + seed + 400, false);
    const auto rf = convcases::run_ref(s, df, act, bias);
    for (Isa isa : cpu_isas()) {
      INFO(im2gemm::detail::isa_name(isa) << " act " << static_cast<int>(act));
      convcases::Outputs f1;
      for (int threads : {1, 2}) {
        const ConvOptions o = direct(isa, threads);
        for (ConvPass pass : kPasses) {
          REQUIRE(im2gemm::detail::conv_path(s, pass, o, di.w) == ConvPath::depthwise);
        }
        if (counts(isa, threads)) ++counted;
        CHECK(convcases::compare(s, convcases::run_with(o, s, di, act, bias), ri, true) == 3);
        const auto f = convcases::run_with(o, s, df, act, bias);
        CHECK(convcases::compare(s, f, rf, false) == 3);
        if (threads == 1) {
          f1 = f;
        } else {
          CHECK(testutil::bitwise_equal(f.y, f1.y));
          CHECK(testutil::bitwise_equal(f.dx, f1.dx));
          CHECK(testutil::bitwise_equal(f.dw, f1.dw));
          CHECK(testutil::bitwise_equal(f.db, f1.db));
        }
      }
    }
  }
  return counted;
}

}  // namespace

TEST_CASE(
    "depthwise: random depthwise and narrow-group shapes on every ISA, 1 and 2 threads, exact on integers, the plan's path") {
  std::mt19937 rng(20261203);
  constexpr int kShapes = 240;
  int runs = 0;
  for (int i = 0; i < kShapes; ++i) {
    const Conv2dShape s = random_dw_shape(rng);
    const Activation act = convcases::kActs[i % 4];
    const bool with_bias = i % 3 != 2;
    INFO("shape " << i << ": " << testutil::describe(s) << " act " << static_cast<int>(act));
    const auto di = convcases::make_data(s, static_cast<std::uint32_t>(i), true);
    const auto ri = convcases::run_ref(s, di, act, with_bias);
    const auto df = convcases::make_data(s, static_cast<std::uint32_t>(i) + 70000, false);
    const auto rf = convcases::run_ref(s, df, act, with_bias);
    for (Isa isa : cpu_isas()) {
      for (int threads : {1, 2}) {
        const ConvOptions o = direct(isa, threads);
        INFO(im2gemm::detail::isa_name(isa) << " threads " << threads);
        for (ConvPass pass : kPasses) {
          REQUIRE(im2gemm::detail::conv_path(s, pass, o, di.w) == ConvPath::depthwise);
        }
        CHECK(convcases::compare(s, convcases::run_with(o, s, di, act, with_bias), ri, true) == 3);
        CHECK(convcases::compare(s, convcases::run_with(o, s, df, act, with_bias), rf, false) == 3);
        ++runs;
      }
    }
  }
  MESSAGE(kShapes << " depthwise shapes, " << runs << " runs");
}

TEST_CASE("depthwise: the kernels of every ISA agree with their reference twins") {
  using im2gemm::detail::DwDots;
  using im2gemm::detail::DwPlane;
  std::mt19937 rng(7);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int trial = 0; trial < 400; ++trial) {
    const bool ints = trial % 2 == 0;
    auto fill = [&](std::size_t n, std::uint32_t seed) {
      return ints ? testutil::random_ints(n, seed) : testutil::random_floats(n, seed);
    };
    const auto seed = static_cast<std::uint32_t>(trial * 50);
    // Every third trial a 3x3 filter (the register-blocked kernels), every fifth 5x5.
    const int kh = trial % 3 == 0 ? 3 : trial % 5 == 0 ? 5 : pick(1, 6);
    const int kw = trial % 3 == 0 ? 3 : trial % 5 == 0 ? 5 : pick(1, 6);
    const int sh = pick(1, 3), dh = pick(1, 2);
    const int64_t OH = pick(1, 9), OW = pick(1, 75);
    std::vector<int64_t> off(static_cast<std::size_t>(kw));
    for (int k = 0; k < kw; ++k) off[static_cast<std::size_t>(k)] = k * pick(1, 2);
    // Readable up to off[kw] + round_up(OW, 16) for every kw (DwPlane's contract); the offsets
    // need not increase (k * 1 after (k - 1) * 2).
    const int64_t max_off = *std::max_element(off.begin(), off.end());
    const int64_t ld = max_off + OW + 16, rows = (OH - 1) * sh + (kh - 1) * dh + 1;
    const auto src = fill(static_cast<std::size_t>(rows * ld), seed + 1);
    const auto w = fill(static_cast<std::size_t>(kh * kw), seed + 2);
    const auto dy = fill(static_cast<std::size_t>(OH * OW), seed + 3);
    const auto start_out = fill(static_cast<std::size_t>(OH * (OW + 5)), seed + 4);
    const bool accumulate = trial % 4 == 1;
    const float init = ints ? static_cast<float>(pick(-3, 3)) : 0.25f;
    // Plane: out rows of OW with stride OW + 5 (the 5 must stay untouched).
    std::vector<float> want = start_out;
    im2gemm::detail::dw_plane_twin(DwPlane{want.data(), OW + 5, OH, OW, src.data(), ld, sh, dh,
                                           w.data(), kh, kw, off.data(), init, accumulate});
    std::vector<float> dwant(static_cast<std::size_t>(16 * (kh * kw + 1)), 0.0f);
    im2gemm::detail::dw_dots_twin(
        DwDots{dy.data(), src.data(), OH, OW, ld, sh, dh, kh, kw, off.data(), dwant.data()});
    // Copy: a row of n from a source at a stride (the source holds exactly what is read).
    const int64_t n = pick(1, 80), stride = pick(1, 3);
    const auto gsrc = fill(static_cast<std::size_t>((n - 1) * stride + 1), seed + 5);
    std::vector<float> gwant(static_cast<std::size_t>(n) + 16, 0.0f);
    im2gemm::detail::dw_copy_twin(gwant.data(), gsrc.data(), n, stride);
    for (Isa isa : cpu_isas()) {
      INFO("trial " << trial << " " << im2gemm::detail::isa_name(isa) << " kh " << kh << " kw "
                    << kw << " OH " << OH << " OW " << OW << " ints " << ints);
      const auto& k = im2gemm::detail::dw_kernels(isa);
      std::vector<float> got = start_out;
      k.plane(DwPlane{got.data(), OW + 5, OH, OW, src.data(), ld, sh, dh, w.data(), kh, kw,
                      off.data(), init, accumulate});
      CHECK(testutil::first_mismatch(got, want, ints ? 0.0f : 1e-5f, ints ? 0.0f : 1e-5f) == -1);
      std::vector<float> dgot(dwant.size(), 0.0f);
      k.dots(DwDots{dy.data(), src.data(), OH, OW, ld, sh, dh, kh, kw, off.data(), dgot.data()});
      for (int t = 0; t <= kh * kw; ++t) {  // the lanes of a slot add up to the twin's lane 0
        float sum = 0.0f;
        for (int l = 0; l < 16; ++l) sum += dgot[static_cast<std::size_t>(16 * t + l)];
        const float ref = dwant[static_cast<std::size_t>(16 * t)];
        CHECK(std::fabs(sum - ref) <= (ints ? 0.0f : 1e-4f * (1.0f + std::fabs(ref))));
      }
      std::vector<float> ggot(static_cast<std::size_t>(n) + 16, 0.0f);
      k.copy(ggot.data(), gsrc.data(), n, stride);
      CHECK(testutil::bitwise_equal(ggot, gwant));  // a copy: exact; past n zeros at most
    }
  }
}

TEST_CASE("depthwise: bitwise repeatable, and bitwise the same at 1 and 2 threads") {
  Conv2dShape s{.batch = 3,
                .in_channels = 13,
                .in_height = 19,
                .in_width = 37,
                .out_channels = 26,
                .kernel_height = 3,
                .kernel_width = 3,
                .stride_height = 2,
                .stride_width = 2,
                .pad_height = 1,
                .pad_width = 1,
                .groups = 13};
  const auto d = convcases::make_data(s, 5, false);
  for (Isa isa : cpu_isas()) {
    const auto a = convcases::run_with(every_thread(isa, 2), s, d, Activation::tanh, true);
    const auto b = convcases::run_with(every_thread(isa, 2), s, d, Activation::tanh, true);
    const auto one = convcases::run_with(every_thread(isa, 1), s, d, Activation::tanh, true);
    for (const auto* o : {&b, &one}) {
      CHECK(testutil::bitwise_equal(a.y, o->y));
      CHECK(testutil::bitwise_equal(a.dx, o->dx));
      CHECK(testutil::bitwise_equal(a.dw, o->dw));
      CHECK(testutil::bitwise_equal(a.db, o->db));
    }
  }
}

TEST_CASE(
    "depthwise: the plan takes the direct path on the grouped suite's depthwise and narrow-group layers (not AlexNet's 2 groups), within the scratch bound") {
  // name N C H W F KH KW SH SW PH PW G (../shared/suite/grouped.txt, inline)
  const int64_t L[][12] = {{8, 32, 112, 112, 32, 3, 3, 1, 1, 1, 1, 32},
                           {8, 64, 112, 112, 64, 3, 3, 2, 2, 1, 1, 64},
                           {8, 256, 28, 28, 256, 3, 3, 1, 1, 1, 1, 256},
                           {8, 1024, 7, 7, 1024, 3, 3, 1, 1, 1, 1, 1024},
                           {1, 144, 56, 56, 144, 3, 3, 1, 1, 1, 1, 144},
                           {4, 32, 112, 112, 64, 5, 5, 1, 1, 2, 2, 32},  // channel multiplier 2
                           {8, 128, 56, 56, 128, 3, 3, 1, 1, 1, 1, 32},  // ResNeXt: 4 a group
                           {8, 96, 27, 27, 256, 5, 5, 1, 1, 2, 2, 2}};   // AlexNet conv2: GEMM
  for (const auto& r : L) {
    Conv2dShape s{.batch = r[0],
                  .in_channels = r[1],
                  .in_height = r[2],
                  .in_width = r[3],
                  .out_channels = r[4],
                  .kernel_height = r[5],
                  .kernel_width = r[6],
                  .stride_height = r[7],
                  .stride_width = r[8],
                  .pad_height = r[9],
                  .pad_width = r[10],
                  .groups = r[11]};
    INFO(testutil::describe(s));
    const bool dw = s.groups == s.in_channels || s.in_channels / s.groups <= 8;
    for (int threads : {1, 2, 64}) {
      const ConvOptions o{GemmBackend::automatic, Isa::avx512, threads};
      const ConvOptions o2{GemmBackend::automatic, Isa::avx2, threads};
      for (ConvPass pass : kPasses) {
        // Narrow groups' backward data: the GEMM path under AVX-512 (measured ahead there),
        // the direct kernels under AVX2 and wherever a test prefers them.
        const bool gemm512 = s.groups != s.in_channels && pass == ConvPass::backward_data;
        CHECK((im2gemm::detail::conv_path(s, pass, o) == ConvPath::depthwise) == (dw && !gemm512));
        CHECK((im2gemm::detail::conv_path(s, pass, o2) == ConvPath::depthwise) == dw);
        CHECK((im2gemm::detail::conv_path(s, pass,
                                          {GemmBackend::automatic, Isa::avx512, threads, true}) ==
               ConvPath::depthwise) == dw);
        // A forced GEMM backend runs the GEMM lowering (the benchmarks compare them).
        CHECK(im2gemm::detail::conv_path(s, pass, {GemmBackend::openblas, Isa::avx512, threads}) ==
              ConvPath::gemm);
      }
      if (dw) {
        for (int pass = 0; pass < 3; ++pass) {
          CHECK(im2gemm::detail::plan_depthwise(s, pass, threads, Isa::avx512).scratch_bytes() <=
                im2gemm::detail::kMaxScratchBytesPerThread);
        }
      }
    }
  }
  // groups == in_channels == 1 is an ordinary convolution: GEMM.
  Conv2dShape one{.batch = 2,
                  .in_channels = 1,
                  .in_height = 28,
                  .in_width = 28,
                  .out_channels = 20,
                  .kernel_height = 5,
                  .kernel_width = 5};
  CHECK(im2gemm::detail::conv_path(one, ConvPass::forward,
                                   {GemmBackend::automatic, Isa::avx512, 2}) == ConvPath::gemm);
}

TEST_CASE("depthwise: a scratch allocation that fails writes nothing and throws std::bad_alloc") {
  Conv2dShape s{.batch = 2,
                .in_channels = 16,
                .in_height = 41,
                .in_width = 53,
                .out_channels = 32,
                .kernel_height = 3,
                .kernel_width = 3,
                .pad_height = 1,
                .pad_width = 1,
                .groups = 16};
  const auto d = convcases::make_data(s, 9, true);
  const ConvOptions o = direct(Isa::avx512, 2);
  for (ConvPass pass : kPasses)
    REQUIRE(im2gemm::detail::conv_path(s, pass, o) == ConvPath::depthwise);
  for (int bad : {0, 1}) {
    im2gemm::detail::set_fail_scratch_thread(bad);
    std::vector<float> y(static_cast<std::size_t>(s.y_size()), testutil::kSentinel);
    std::vector<float> dx(static_cast<std::size_t>(s.x_size()), testutil::kSentinel);
    std::vector<float> dw(static_cast<std::size_t>(s.w_size()), testutil::kSentinel);
    std::vector<float> db(static_cast<std::size_t>(s.out_channels), testutil::kSentinel);
    CHECK_THROWS_AS(im2gemm::detail::conv2d_forward_with(o, s, d.x, d.w, d.bias, y,
                                                         Activation::relu),
                    std::bad_alloc);
    CHECK_THROWS_AS(im2gemm::detail::conv2d_backward_data_with(o, s, d.dy, d.w, dx,
                                                               Activation::relu, d.xact),
                    std::bad_alloc);
    CHECK_THROWS_AS(im2gemm::detail::conv2d_backward_weights_with(o, s, d.x, d.dy, dw, db),
                    std::bad_alloc);
    im2gemm::detail::set_fail_scratch_thread(-1);
    for (const auto* v : {&y, &dx, &dw, &db}) {
      CHECK(std::all_of(v->begin(), v->end(), [](float f) { return f == testutil::kSentinel; }));
    }
  }
}

TEST_CASE(
    "depthwise: non-finite values give the reference's NaNs (padding multiplies, stuffed zeros do not)") {
  Conv2dShape s{.batch = 2,
                .in_channels = 3,
                .in_height = 9,
                .in_width = 21,
                .out_channels = 6,
                .kernel_height = 3,
                .kernel_width = 3,
                .stride_height = 2,
                .stride_width = 2,
                .pad_height = 1,
                .pad_width = 1,
                .groups = 3};
  const float inf = std::numeric_limits<float>::infinity();
  auto d = convcases::make_data(s, 11, true);
  d.w[4] = inf;    // a weight of filter 0: faces the padding in forward
  d.x[30] = -inf;  // an input cell
  d.dy[7] = inf;   // a dy cell: faces the padding in backward weights
  const auto want = convcases::run_ref(s, d, Activation::identity, true);
  for (Isa isa : cpu_isas()) {
    for (int threads : {1, 2}) {
      INFO(im2gemm::detail::isa_name(isa) << " threads " << threads);
      const ConvOptions o{GemmBackend::automatic, isa, threads, true};
      // Backward data with an infinite weight leaves the depthwise path (zero-stuffed dy).
      CHECK(im2gemm::detail::conv_path(s, ConvPass::backward_data, o, d.w) == ConvPath::gemm);
      CHECK(im2gemm::detail::conv_path(s, ConvPass::forward, o, d.w) == ConvPath::depthwise);
      const auto got = convcases::run_with(o, s, d, Activation::identity, true);
      CHECK(convcases::compare(s, got, want, true) == 3);
    }
  }
}

TEST_CASE("depthwise: outputs of 8 MiB and more (non-temporal stores) are exact too") {
  // 32 planes of 256 x 257: rows alternate between 16-byte aligned and not.
  Conv2dShape s{.batch = 1,
                .in_channels = 32,
                .in_height = 256,
                .in_width = 257,
                .out_channels = 32,
                .kernel_height = 3,
                .kernel_width = 3,
                .pad_height = 1,
                .pad_width = 1,
                .groups = 32};
  REQUIRE(im2gemm::detail::plan_depthwise(s, 0, 2, Isa::avx2).stream);
  REQUIRE(im2gemm::detail::plan_depthwise(s, 1, 2, Isa::avx2).stream);
  // Stride 2: backward data by phases, which streams whole 64-byte lines (dx rows of 1028
  // bytes: every 16th row aligned at any 4-byte alignment of the tensor).
  Conv2dShape s2 = s;
  s2.stride_height = s2.stride_width = 2;
  REQUIRE(im2gemm::detail::plan_depthwise(s2, 1, 2, Isa::avx512).stream);
  REQUIRE(im2gemm::detail::plan_depthwise(s2, 1, 2, Isa::avx512).stride2_data);
  for (const Conv2dShape& t : {s, s2}) {
    INFO(testutil::describe(t));
    const auto d = convcases::make_data(t, 21, true);
    const auto want = convcases::run_ref(t, d, Activation::identity, true);
    for (Isa isa : cpu_isas()) {
      INFO(im2gemm::detail::isa_name(isa));
      const auto got =
          convcases::run_with({GemmBackend::automatic, isa, 2}, t, d, Activation::identity, true);
      CHECK(convcases::compare(t, got, want, true) == 3);
    }
  }
}

TEST_CASE("depthwise: the flat kernels of every ISA agree with their reference twins") {
  using im2gemm::detail::DwFlat;
  using im2gemm::detail::DwFlatDots;
  std::mt19937 rng(11);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int trial = 0; trial < 400; ++trial) {
    const bool ints = trial % 2 == 0;
    auto fill = [&](std::size_t n, std::uint32_t seed) {
      return ints ? testutil::random_ints(n, seed) : testutil::random_floats(n, seed);
    };
    const auto seed = static_cast<std::uint32_t>(trial * 50 + 3);
    const int kh = trial % 3 == 0 ? 3 : pick(1, 5), kw = trial % 3 == 0 ? 3 : pick(1, 5);
    const int dh = pick(1, 4) == 1 ? 2 : 1, dw = pick(1, 4) == 1 ? 2 : 1;
    // Widths around the vector widths and the odd ones (1, 2, 5, 7), shifts past the row too.
    const int64_t W = trial % 4 == 0 ? pick(1, 9) : pick(1, 40), rows = pick(1, 9);
    const int64_t n = rows * W, ph = pick(0, kh), pw = pick(0, kw * dw);
    std::vector<int64_t> ro(static_cast<std::size_t>(kh)), co(static_cast<std::size_t>(kw));
    const int64_t sign = trial % 5 == 1 ? -1 : 1;  // backward data's direction
    for (int k = 0; k < kh; ++k) ro[static_cast<std::size_t>(k)] = sign * (k * dh - ph) * W;
    for (int k = 0; k < kw; ++k) co[static_cast<std::size_t>(k)] = sign * (k * dw - pw);
    const int64_t lo = *std::min_element(ro.begin(), ro.end()) +
                       *std::min_element(co.begin(), co.end());
    const int64_t hi = *std::max_element(ro.begin(), ro.end()) +
                       *std::max_element(co.begin(), co.end());
    const int64_t lead = std::max<int64_t>(0, -lo);
    const auto src =
        fill(static_cast<std::size_t>(lead + (n + 15) / 16 * 16 + std::max<int64_t>(0, hi)),
             seed + 1);
    const float* s0 = src.data() + lead;
    const auto w = fill(static_cast<std::size_t>(kh * kw), seed + 2);
    const auto dy = fill(static_cast<std::size_t>(n), seed + 3);
    const auto start_out = fill(static_cast<std::size_t>(n + 5), seed + 4);  // 5 past n untouched
    const bool accumulate = trial % 4 == 1;
    const float init = ints ? static_cast<float>(pick(-3, 3)) : 0.25f;
    std::vector<float> want = start_out;
    im2gemm::detail::dw_flat_twin(
        DwFlat{want.data(), n, s0, W, w.data(), kh, kw, ro.data(), co.data(), init, accumulate});
    std::vector<float> dwant(static_cast<std::size_t>(16 * (kh * kw + 1)), 0.0f);
    im2gemm::detail::dw_flat_dots_twin(
        DwFlatDots{dy.data(), n, s0, W, kh, kw, ro.data(), co.data(), dwant.data()});
    for (Isa isa : cpu_isas()) {
      INFO("trial " << trial << " " << im2gemm::detail::isa_name(isa) << " kh " << kh << " kw "
                    << kw << " W " << W << " rows " << rows << " ints " << ints);
      const auto& k = im2gemm::detail::dw_kernels(isa);
      std::vector<float> got = start_out;
      k.flat(
          DwFlat{got.data(), n, s0, W, w.data(), kh, kw, ro.data(), co.data(), init, accumulate});
      CHECK(testutil::first_mismatch(got, want, ints ? 0.0f : 1e-5f, ints ? 0.0f : 1e-5f) == -1);
      std::vector<float> dgot(dwant.size(), 0.0f);
      k.flat_dots(DwFlatDots{dy.data(), n, s0, W, kh, kw, ro.data(), co.data(), dgot.data()});
      for (int t = 0; t <= kh * kw; ++t) {
        float sum = 0.0f;
        for (int l = 0; l < 16; ++l) sum += dgot[static_cast<std::size_t>(16 * t + l)];
        const float ref = dwant[static_cast<std::size_t>(16 * t)];
        CHECK(std::fabs(sum - ref) <= (ints ? 0.0f : 1e-4f * (1.0f + std::fabs(ref))));
      }
    }
  }
}

TEST_CASE(
    "depthwise: flat planes (stride 1, same row width) on every ISA, 1 and 2 threads, exact on integers") {
  // {N, C, H, W, F, KH, KW, PH, PW, DH, DW, G}: planes 1x1, 2x2, 7x7, 9x5, 28x28 and 5x63,
  // vertical padding apart from the rows' (OH != H), dilation, channel multiplier 2, narrow
  // groups.
  const int64_t L[][12] = {
      {2, 3, 1, 1, 3, 3, 3, 1, 1, 1, 1, 3},   {1, 4, 2, 2, 8, 3, 3, 1, 1, 1, 1, 4},
      {3, 5, 7, 7, 5, 3, 3, 1, 1, 1, 1, 5},   {2, 3, 9, 5, 6, 3, 3, 0, 1, 1, 1, 3},
      {1, 2, 9, 5, 2, 5, 5, 2, 2, 1, 1, 2},   {2, 3, 7, 7, 3, 3, 3, 2, 2, 2, 2, 3},
      {1, 3, 7, 7, 3, 1, 3, 0, 1, 1, 1, 3},   {2, 6, 7, 9, 6, 3, 3, 1, 1, 1, 1, 3},
      {1, 4, 28, 28, 4, 3, 3, 1, 1, 1, 1, 4}, {1, 2, 5, 63, 4, 3, 3, 3, 1, 1, 1, 2},
      {2, 3, 7, 7, 3, 3, 5, 1, 2, 1, 1, 3},   {1, 2, 1, 9, 2, 3, 3, 1, 1, 1, 1, 2}};
  int i = 0;
  for (const auto& r : L) {
    Conv2dShape s{.batch = r[0],
                  .in_channels = r[1],
                  .in_height = r[2],
                  .in_width = r[3],
                  .out_channels = r[4],
                  .kernel_height = r[5],
                  .kernel_width = r[6],
                  .pad_height = r[7],
                  .pad_width = r[8],
                  .dilation_height = r[9],
                  .dilation_width = r[10],
                  .groups = r[11]};
    s.validate();
    INFO(testutil::describe(s));
    REQUIRE(s.out_width() == s.in_width);
    for (int pass = 0; pass < 3; ++pass) {
      const bool depthwise = s.groups == s.in_channels;  // narrow groups stay in rows
      const auto p = im2gemm::detail::plan_depthwise(s, pass, 2, Isa::avx2, kEveryThread);
      // k = 1 planes narrower than kDwLanesMaxWidth: channels on lanes instead
      const bool lanes = depthwise && s.out_channels == s.in_channels &&
                         s.in_width < im2gemm::detail::kDwLanesMaxWidth;
      CHECK(p.lanes == lanes);
      CHECK(p.flat == (depthwise && !lanes && (pass < 2 || s.in_width < 16)));
    }
    const Activation act = convcases::kActs[i % 4];
    const auto di = convcases::make_data(s, static_cast<std::uint32_t>(i) + 500, true);
    const auto ri = convcases::run_ref(s, di, act, true);
    const auto df = convcases::make_data(s, static_cast<std::uint32_t>(i) + 900, false);
    const auto rf = convcases::run_ref(s, df, act, i % 2 == 0);
    for (Isa isa : cpu_isas()) {
      for (int threads : {1, 2}) {
        const ConvOptions o = direct(isa, threads);
        INFO(im2gemm::detail::isa_name(isa) << " threads " << threads);
        for (ConvPass pass : kPasses) {
          REQUIRE(im2gemm::detail::conv_path(s, pass, o, di.w) == ConvPath::depthwise);
        }
        CHECK(convcases::compare(s, convcases::run_with(o, s, di, act, true), ri, true) == 3);
        CHECK(convcases::compare(s, convcases::run_with(o, s, df, act, i % 2 == 0), rf, false) ==
              3);
      }
    }
    ++i;
  }
}

TEST_CASE("depthwise: the lanes kernels of every ISA agree with the scalar twin") {
  using im2gemm::detail::DwLanesConv;
  using im2gemm::detail::DwLanesDots;
  using im2gemm::detail::DwLanesIn;
  using im2gemm::detail::DwLanesOut;
  std::mt19937 rng(13);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const auto& twin = im2gemm::detail::dw_kernels_scalar();
  for (int trial = 0; trial < 300; ++trial) {
    const bool ints = trial % 2 == 0;
    auto fill = [&](std::size_t n, std::uint32_t seed) {
      return ints ? testutil::random_ints(n, seed) : testutil::random_floats(n, seed);
    };
    const auto seed = static_cast<std::uint32_t>(trial * 50 + 7);
    const int kh = trial % 3 == 0 ? 3 : pick(1, 5), kw = trial % 3 == 0 ? 3 : pick(1, 5);
    const int sh = pick(1, 2), sw = pick(1, 2), dh = pick(1, 2), dw = pick(1, 2);
    const int64_t OH = pick(1, 9), OW = pick(1, 15);
    const int64_t R = (OH - 1) * sh + (kh - 1) * dh + 1, Q = (OW - 1) * sw + (kw - 1) * dw + 1;
    const auto tile = fill(static_cast<std::size_t>(R * Q * 8), seed + 1);
    const auto w = fill(static_cast<std::size_t>(kh * kw * 8), seed + 2);
    const auto init = fill(8, seed + 3);
    const auto dy = fill(static_cast<std::size_t>(OH * OW * 8), seed + 4);
    const auto acc0 = fill(static_cast<std::size_t>((kh * kw + 1) * 8), seed + 5);
    const bool relu = trial % 4 == 1;
    std::vector<float> want(static_cast<std::size_t>(OH * OW * 8), testutil::kSentinel);
    twin.lanes_conv(DwLanesConv{want.data(), OH, OW, tile.data(), Q, sh, sw, dh, dw, w.data(), kh,
                                kw, init.data(), relu});
    std::vector<float> dwant = acc0;
    twin.lanes_dots(
        DwLanesDots{dy.data(), OH, OW, tile.data(), Q, sh, sw, dh, dw, kh, kw, dwant.data()});
    // Transposes: H x W planes of nch channels (stride H * W + 3) into a tile of Q columns, and
    // back.
    const int64_t H = pick(1, 9), W = pick(1, 15), Qt = W + pick(0, 3), stride = H * W + 3;
    const int nch = pick(1, 8);
    const auto planes = fill(static_cast<std::size_t>(8 * stride), seed + 6);
    std::vector<float> twant(static_cast<std::size_t>((H * Qt + 8) * 8), testutil::kSentinel);
    twin.lanes_in(DwLanesIn{twant.data(), Qt, planes.data(), stride, H, W, nch});
    const auto otile = fill(static_cast<std::size_t>(H * W * 8), seed + 7);
    std::vector<float> owant(static_cast<std::size_t>(8 * stride), testutil::kSentinel);
    twin.lanes_out(DwLanesOut{owant.data(), stride, H * W, otile.data(), nch});
    for (int64_t p = 0; p < H * W; ++p) {  // the twin's transposes are what they say
      for (int l = 0; l < 8; ++l) {
        const float tv = twant[static_cast<std::size_t>(((p / W) * Qt + p % W) * 8 + l)];
        CHECK(tv == (l < nch ? planes[static_cast<std::size_t>(l * stride + p)] : 0.0f));
        if (l < nch) {
          CHECK(owant[static_cast<std::size_t>(l * stride + p)] ==
                otile[static_cast<std::size_t>(p * 8 + l)]);
        }
      }
    }
    for (Isa isa : cpu_isas()) {
      INFO("trial " << trial << " " << im2gemm::detail::isa_name(isa) << " kh " << kh << " kw "
                    << kw << " OH " << OH << " OW " << OW << " ints " << ints);
      const auto& k = im2gemm::detail::dw_kernels(isa);
      std::vector<float> got(want.size(), testutil::kSentinel);
      k.lanes_conv(DwLanesConv{got.data(), OH, OW, tile.data(), Q, sh, sw, dh, dw, w.data(), kh, kw,
                               init.data(), relu});
      CHECK(testutil::first_mismatch(got, want, ints ? 0.0f : 1e-5f, ints ? 0.0f : 1e-5f) == -1);
      std::vector<float> dgot = acc0;
      k.lanes_dots(
          DwLanesDots{dy.data(), OH, OW, tile.data(), Q, sh, sw, dh, dw, kh, kw, dgot.data()});
      CHECK(testutil::first_mismatch(dgot, dwant, ints ? 0.0f : 1e-4f, ints ? 0.0f : 1e-4f) == -1);
      std::vector<float> tgot(twant.size(), testutil::kSentinel);
      k.lanes_in(DwLanesIn{tgot.data(), Qt, planes.data(), stride, H, W, nch});
      CHECK(testutil::bitwise_equal(tgot, twant));
      std::vector<float> ogot(owant.size(), testutil::kSentinel);
      k.lanes_out(DwLanesOut{ogot.data(), stride, H * W, otile.data(), nch});
      CHECK(testutil::bitwise_equal(ogot, owant));
    }
  }
}

TEST_CASE(
    "depthwise: channels on lanes (small planes, k = 1) on every ISA, 1 and 2 threads, exact on integers, bitwise the same at 1 and 2 threads") {
  // {N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW}: C below 8, a multiple of 8 and not, planes
  // 1x1 to 59x59, stride 2 (backward data then in planes), dilation, pads 0 to past the
  // kernel's reach, 5x5 and 1x3 filters.
  const int64_t L[][12] = {
      {3, 3, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1},
      {2, 8, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1},
      {2, 20, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1},
      {1, 17, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1},
      {2, 11, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1},
      {1, 9, 9, 15, 3, 3, 2, 1, 0, 1, 1, 1},
      {2, 5, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1},
      {1, 12, 2, 3, 3, 3, 1, 1, 2, 3, 1, 1},
      {2, 10, 7, 7, 5, 5, 1, 1, 2, 2, 1, 1},
      {1, 9, 8, 8, 3, 3, 1, 1, 2, 2, 2, 2},
      {2, 7, 6, 9, 1, 3, 1, 1, 0, 1, 1, 1},
      {1, 16, 10, 7, 3, 3, 3, 3, 0, 0, 1, 1},
      {3, 2, 5, 5, 3, 3, 1, 1, 0, 0, 1, 1},
      // Planes of several row chunks (lanes_by_row_chunks, about 256 pixels): 30x30 at
      // stride 2 (chunks of 8 rows, 240 pixels), 20x45 (chunks of 5 rows, 225 pixels: odd
      // offsets, a partial last 8-group).
      {1, 9, 59, 59, 3, 3, 2, 2, 1, 1, 1, 1},
      {1, 10, 20, 45, 3, 3, 1, 1, 1, 1, 1, 1}};
  int i = 0;
  for (const auto& r : L) {
    Conv2dShape s{.batch = r[0],
                  .in_channels = r[1],
                  .in_height = r[2],
                  .in_width = r[3],
                  .out_channels = r[1],
                  .kernel_height = r[4],
                  .kernel_width = r[5],
                  .stride_height = r[6],
                  .stride_width = r[7],
                  .pad_height = r[8],
                  .pad_width = r[9],
                  .dilation_height = r[10],
                  .dilation_width = r[11],
                  .groups = r[1]};
    s.validate();
    INFO(testutil::describe(s));
    const bool stride1 = s.stride_height == 1 && s.stride_width == 1;
    for (int pass = 0; pass < 3; ++pass) {
      CHECK(im2gemm::detail::plan_depthwise(s, pass, 2, Isa::avx2, kEveryThread).lanes ==
            (pass != 1 || stride1));
    }
    check_direct_shape(s, i, 1500, [](Isa, int) { return false; });
    ++i;
  }
  // Narrow but tall planes: the per-plane paths (the lanes tile would not be bounded).
  Conv2dShape tall{.batch = 1,
                   .in_channels = 8,
                   .in_height = 3000,
                   .in_width = 8,
                   .out_channels = 8,
                   .kernel_height = 3,
                   .kernel_width = 3,
                   .pad_height = 1,
                   .pad_width = 1,
                   .groups = 8};
  for (int pass = 0; pass < 3; ++pass) {
    const auto p = im2gemm::detail::plan_depthwise(tall, pass, 2, Isa::avx2);
    CHECK_FALSE(p.lanes);
    CHECK(p.scratch_bytes() <= im2gemm::detail::kMaxScratchBytesPerThread);
  }
}

TEST_CASE("depthwise: channels on lanes, a scratch allocation that fails writes nothing") {
  Conv2dShape s{.batch = 2,
                .in_channels = 20,
                .in_height = 7,
                .in_width = 7,
                .out_channels = 20,
                .kernel_height = 3,
                .kernel_width = 3,
                .pad_height = 1,
                .pad_width = 1,
                .groups = 20};
  const auto d = convcases::make_data(s, 19, true);
  const ConvOptions o = direct(Isa::avx512, 2);
  for (int pass = 0; pass < 3; ++pass)
    REQUIRE(im2gemm::detail::plan_depthwise(s, pass, 2, Isa::avx2, kEveryThread).lanes);
  for (int bad : {0, 1}) {
    im2gemm::detail::set_fail_scratch_thread(bad);
    std::vector<float> y(static_cast<std::size_t>(s.y_size()), testutil::kSentinel);
    std::vector<float> dx(static_cast<std::size_t>(s.x_size()), testutil::kSentinel);
    std::vector<float> dw(static_cast<std::size_t>(s.w_size()), testutil::kSentinel);
    std::vector<float> db(static_cast<std::size_t>(s.out_channels), testutil::kSentinel);
    CHECK_THROWS_AS(im2gemm::detail::conv2d_forward_with(o, s, d.x, d.w, d.bias, y,
                                                         Activation::sigmoid),
                    std::bad_alloc);
    CHECK_THROWS_AS(im2gemm::detail::conv2d_backward_data_with(o, s, d.dy, d.w, dx,
                                                               Activation::relu, d.xact),
                    std::bad_alloc);
    CHECK_THROWS_AS(im2gemm::detail::conv2d_backward_weights_with(o, s, d.x, d.dy, dw, db),
                    std::bad_alloc);
    im2gemm::detail::set_fail_scratch_thread(-1);
    for (const auto* v : {&y, &dx, &dw, &db}) {
      CHECK(std::all_of(v->begin(), v->end(), [](float f) { return f == testutil::kSentinel; }));
    }
  }
}

TEST_CASE(
    "depthwise: stride-2 backward data by phases (3x3, pad 1) on every ISA, 1 and 2 threads, exact on integers, bitwise the same at 1 and 2 threads") {
  // {N, C, H, W}: odd and even sides, 1 to 67 wide (dy rows of 1 to 34: a partial vector,
  // exactly 16, one whole vector and a tail; the last dx row reading one dy row or two).
  const int64_t L[][4] = {{2, 3, 1, 1},   {1, 2, 2, 2},   {2, 3, 5, 3},   {1, 4, 6, 8},
                          {2, 2, 7, 31},  {1, 3, 8, 32},  {2, 2, 9, 33},  {1, 2, 4, 34},
                          {1, 3, 11, 35}, {2, 2, 3, 65},  {1, 2, 10, 66}, {1, 2, 5, 67},
                          {1, 5, 12, 12}, {2, 3, 13, 17}, {1, 2, 6, 49},  {2, 11, 14, 14}};
  int i = 0, phased_runs = 0;
  for (const auto& r : L) {
    const Conv2dShape s = dw3x3_pad1(r, 1, 2);
    INFO(testutil::describe(s));
    Conv2dShape unpadded = s, multiplied = s, stride1 = s;
    unpadded.pad_width = 0;
    multiplied.out_channels = 2 * s.in_channels;
    stride1.stride_height = 1;
    for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
      CHECK(im2gemm::detail::plan_depthwise(s, 1, 2, isa, kEveryThread).stride2_data);
      CHECK_FALSE(im2gemm::detail::plan_depthwise(s, 0, 2, isa, kEveryThread).stride2_data);
      CHECK_FALSE(im2gemm::detail::plan_depthwise(s, 2, 2, isa, kEveryThread).stride2_data);
      for (const Conv2dShape& o : {unpadded, multiplied, stride1}) {
        if (o.in_width >= 3 && o.in_height >= 3) {
          CHECK_FALSE(im2gemm::detail::plan_depthwise(o, 1, 2, isa, kEveryThread).stride2_data);
        }
      }
    }
    phased_runs += check_direct_shape(s, i, 2800, [&](Isa isa, int threads) {
      return im2gemm::detail::plan_depthwise(s, 1, threads, isa, kEveryThread).stride2_data;
    });
    ++i;
  }
  CHECK(phased_runs == 2 * 4 * static_cast<int>(std::size(L) * cpu_isas().size()));
  MESSAGE(phased_runs << " runs of stride-2 backward data by phases");
}

TEST_CASE(
    "depthwise: masked planes (3x3 same, 7 to 112 wide) on AVX-512, 1 and 2 threads, exact on integers, bitwise the same at 1 and 2 threads") {
  // {N, C, H, W, k}: every width of kDwMaskedWidths with 1 to 28 rows (planes of 1 to 49
  // vectors, a partial last one or not: 8 x 14, 3 x 56), channel multipliers 1-3; other
  // widths, strided and unpadded shapes: not masked.
  const int64_t L[][5] = {{2, 3, 7, 7, 1},   {1, 5, 14, 14, 1}, {3, 4, 1, 7, 1},
                          {2, 3, 2, 14, 2},  {1, 6, 3, 7, 1},   {2, 2, 8, 14, 3},
                          {1, 3, 13, 7, 1},  {2, 4, 9, 7, 2},   {1, 2, 5, 11, 1},
                          {2, 3, 7, 6, 1},   {1, 9, 7, 7, 3},   {1, 2, 15, 15, 1},
                          {2, 3, 28, 28, 1}, {1, 2, 3, 56, 2},  {2, 2, 5, 112, 1},
                          {1, 3, 4, 28, 3},  {1, 2, 1, 112, 1}, {1, 2, 6, 56, 1},
                          {1, 2, 4, 113, 1}, {1, 2, 28, 7, 1}};
  int i = 0, masked_runs = 0;
  for (const auto& r : L) {
    const Conv2dShape s = dw3x3_pad1(r, r[4], 1);
    INFO(testutil::describe(s));
    const bool narrow = std::find(std::begin(im2gemm::detail::kDwMaskedWidths),
                                  std::end(im2gemm::detail::kDwMaskedWidths),
                                  s.in_width) != std::end(im2gemm::detail::kDwMaskedWidths);
    for (int pass = 0; pass < 3; ++pass) {
      CHECK(im2gemm::detail::plan_depthwise(s, pass, 2, Isa::avx512, kEveryThread).masked ==
            (narrow && im2gemm::detail::isa_clamp(Isa::avx512) == Isa::avx512));
      CHECK_FALSE(im2gemm::detail::plan_depthwise(s, pass, 2, Isa::avx2, kEveryThread).masked);
      Conv2dShape strided = s, unpadded = s;
      strided.stride_width = 2;
      unpadded.pad_height = 0;
      CHECK_FALSE(
          im2gemm::detail::plan_depthwise(strided, pass, 2, Isa::avx512, kEveryThread).masked);
      if (unpadded.in_height >= 3) {
        CHECK_FALSE(
            im2gemm::detail::plan_depthwise(unpadded, pass, 2, Isa::avx512, kEveryThread).masked);
      }
    }
    masked_runs += check_direct_shape(s, i, 2500, [&](Isa isa, int threads) {
      return im2gemm::detail::plan_depthwise(s, 0, threads, isa, kEveryThread).masked;
    });
    ++i;
  }
  MESSAGE(masked_runs << " runs on masked planes (none without AVX-512)");
}
