// Convolution benchmarks over ../shared/suite/layers.txt, all three passes, side by side in one
// run: im2gemm; the bare OpenBLAS sgemm on the per-image lowered GEMM called N times (no
// im2col: the ceiling of the plain design); oneDNN with NCHW user memory, its reorders timed;
// the reference loops (and im2gemm at one thread) where the reference takes under a second.
// Ends with a summary table of medians over the repetitions.
//
//   flock /tmp/im2gemm-bench.lock ./build/bench/bench_conv --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true [--layers=vgg_conv3_2,lenet_conv2]
//       [--impls=im2gemm,sgemm,onednn,ref,memcpy] [--passes=fwd,bwd_data,bwd_weights]
//       [--suite=layers|grouped]
// The same selections from the environment: IM2GEMM_BENCH_LAYERS, _IMPLS, _PASSES, _SUITE.
// --suite=grouped runs ../shared/suite/grouped.txt (grouped and depthwise layers); its summary
// adds x_memcpy: the time of a memcpy of the pass's bytes (input + output + weights, all
// threads copying their share) over the pass's time.
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <im2gemm/im2gemm.hpp>

#include "conv/engine.hpp"
#include "peak.hpp"
#include "suite.hpp"

#ifdef IM2GEMM_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace {

using im2gemm::Conv2dShape;
using std::int64_t;

constexpr double kMinTime = 0.3;             // seconds per repetition
constexpr double kMaxReferenceMacs = 3.0e8;  // the reference runs only below this

enum Pass { kFwd, kBwdData, kBwdWeights, kPasses };
const char* const kPassNames[kPasses] = {"fwd", "bwd_data", "bwd_weights"};
// im2gemm: the public call (IM2GEMM_GEMM, auto by default: the plan picks per shape and pass);
// packed / openblas: the same call with that backend forced (where the packed engine does not
// serve a pass, both run the openblas path).
// memcpy: a copy of the pass's bytes, rated with the pass's FLOP count (so that its rate over
// the pass's rate is the pass's time over the copy's).
enum Impl { kIm2gemm, kSgemm, kDnnl, kRef, kIm2gemm1t, kPacked, kOpenblas, kMemcpy, kImpls };
const char* const kImplNames[kImpls] = {"im2gemm",    "sgemm",  "onednn",   "ref",
                                        "im2gemm_1t", "packed", "openblas", "memcpy"};

using im2gemm::bench::random_vec;

double flops(const Conv2dShape& s) { return 2.0 * static_cast<double>(s.macs()); }

void set_rate(benchmark::State& st, const Conv2dShape& s) {
  st.counters["GFLOP/s"] =
      benchmark::Counter(flops(s) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- im2gemm and the reference ---------------------------------------------------------

void run_im2gemm(benchmark::State& st, const Conv2dShape& s, Pass pass, bool reference, int threads,
                 Impl forced = kIm2gemm) {
  im2gemm::set_num_threads(threads);
  // Only the tensors of the pass (the peak memory of a one-layer run is reported).
  const auto x = pass == kBwdData ? std::vector<float>() : random_vec(s.x_size(), 1);
  const auto w = random_vec(s.w_size(), 2);
  const auto b = random_vec(s.out_channels, 3);
  std::vector<float> out;
  std::vector<float> in2;  // dy for the backward passes
  std::vector<float> db;
  if (pass == kFwd) out.resize(static_cast<std::size_t>(s.y_size()));
  if (pass == kBwdData) out.resize(static_cast<std::size_t>(s.x_size()));
  if (pass == kBwdWeights) {
    out.resize(static_cast<std::size_t>(s.w_size()));
    db.resize(static_cast<std::size_t>(s.out_channels));
  }
  if (pass != kFwd) in2 = random_vec(s.y_size(), 4);
  if (forced != kIm2gemm) {
    namespace d = im2gemm::detail;
    const d::ConvOptions o{forced == kPacked ? d::GemmBackend::packed : d::GemmBackend::openblas,
                           d::isa_env_cap(), threads};
    for (auto _ : st) {
      if (pass == kFwd) d::conv2d_forward_with(o, s, x, w, b, out, im2gemm::Activation::identity);
      if (pass == kBwdData)
        d::conv2d_backward_data_with(o, s, in2, w, out, im2gemm::Activation::identity, {});
      if (pass == kBwdWeights) d::conv2d_backward_weights_with(o, s, x, in2, out, db);
      benchmark::ClobberMemory();
    }
    set_rate(st, s);
    return;
  }
  for (auto _ : st) {
    switch (pass) {
      case kFwd:
        if (reference) im2gemm::reference::conv2d_forward(s, x, w, b, out);
        else im2gemm::conv2d_forward(s, x, w, b, out);
        break;
      case kBwdData:
        if (reference) im2gemm::reference::conv2d_backward_data(s, in2, w, out);
        else im2gemm::conv2d_backward_data(s, in2, w, out);
        break;
      default:
        if (reference) im2gemm::reference::conv2d_backward_weights(s, x, in2, out, db);
        else im2gemm::conv2d_backward_weights(s, x, in2, out, db);
        break;
    }
    benchmark::ClobberMemory();
  }
  im2gemm::set_num_threads(0);
  set_rate(st, s);
}

// ---- memcpy of the pass's bytes (input + output + weights), each thread its share ----------

int64_t pass_bytes(const Conv2dShape& s, Pass pass) {
  const int64_t in = pass == kBwdData ? s.y_size() : s.x_size();
  const int64_t out = pass == kFwd ? s.y_size() : pass == kBwdData ? s.x_size() : s.w_size();
  const int64_t w = pass == kBwdWeights ? s.y_size() : s.w_size();  // bwd weights: dy is read
  return 4 * (in + out + w);
}

void run_memcpy(benchmark::State& st, const Conv2dShape& s, Pass pass, int threads) {
  const int64_t n = pass_bytes(s, pass) / 4;
  const auto src = random_vec(n, 6);
  std::vector<float> dst(static_cast<std::size_t>(n));
  for (auto _ : st) {
#pragma omp parallel num_threads(threads)
    {
      const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
      const int64_t a = n * t / T, b = n * (t + 1) / T;
      std::memcpy(dst.data() + a, src.data() + a, static_cast<std::size_t>(b - a) * sizeof(float));
    }
    benchmark::ClobberMemory();
  }
  set_rate(st, s);
}

// ---- the bare sgemm on the per-image lowered GEMM, N times (threaded OpenBLAS) --------------

void run_sgemm(benchmark::State& st, const Conv2dShape& s, Pass pass, int threads) {
  omp_set_num_threads(threads);  // OpenBLAS (OpenMP build) uses the caller's thread count
  const int64_t G = s.groups, Fg = s.out_channels / G, Cg = s.in_channels / G;
  const int64_t K = Cg * s.kernel_height * s.kernel_width, P = s.out_height() * s.out_width();
  const auto w = random_vec(s.w_size(), 2);
  const auto lowered = random_vec(K * P, 5);  // one image's column matrix, reused N times
  std::vector<float> y, dy, col, dw;
  if (pass == kFwd) y.resize(static_cast<std::size_t>(s.y_size()));
  if (pass != kFwd) dy = random_vec(s.y_size(), 4);
  if (pass == kBwdData) col.resize(static_cast<std::size_t>(K * P));
  if (pass == kBwdWeights) dw.resize(static_cast<std::size_t>(s.w_size()));
  const auto M = [](int64_t v) { return static_cast<blasint>(v); };
  for (auto _ : st) {
    for (int64_t n = 0; n < s.batch; ++n) {
      for (int64_t g = 0; g < G; ++g) {
        const float* wg = w.data() + g * Fg * K;
        switch (pass) {
          case kFwd:
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M(Fg), M(P), M(K), 1.0f, wg,
                        M(K), lowered.data(), M(P), 0.0f,
                        y.data() + (n * s.out_channels + g * Fg) * P, M(P));
            break;
          case kBwdData:
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M(K), M(P), M(Fg), 1.0f, wg, M(K),
                        dy.data() + (n * s.out_channels + g * Fg) * P, M(P), 0.0f, col.data(),
                        M(P));
            break;
          default:
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M(Fg), M(K), M(P), 1.0f,
                        dy.data() + (n * s.out_channels + g * Fg) * P, M(P), lowered.data(), M(P),
                        n == 0 ? 0.0f : 1.0f, dw.data() + g * Fg * K, M(K));
            break;
        }
      }
    }
    benchmark::ClobberMemory();
  }
  set_rate(st, s);
}

// ---- oneDNN, NCHW user memory, reorders to and from its preferred layouts timed ---------------

#ifdef IM2GEMM_HAVE_DNNL
void run_dnnl(benchmark::State& st, const Conv2dShape& s, Pass pass, int threads) {
  using namespace dnnl;
  using tag = memory::format_tag;
  using dt = memory::data_type;
  omp_set_num_threads(threads);
  engine eng(engine::kind::cpu, 0);
  stream strm(eng);
  const int64_t G = s.groups, OH = s.out_height(), OW = s.out_width();
  const memory::dims src_dims = {s.batch, s.in_channels, s.in_height, s.in_width};
  const memory::dims dst_dims = {s.batch, s.out_channels, OH, OW};
  const memory::dims w_dims =
      G == 1
          ? memory::dims{s.out_channels, s.in_channels, s.kernel_height, s.kernel_width}
          : memory::dims{G, s.out_channels / G, s.in_channels / G, s.kernel_height, s.kernel_width};
  const memory::dims b_dims = {s.out_channels};
  const memory::dims strides = {s.stride_height, s.stride_width};
  const memory::dims dil = {s.dilation_height - 1, s.dilation_width - 1};
  const memory::dims pad_l = {s.pad_height, s.pad_width};
  const memory::dims pad_r = {(OH - 1) * s.stride_height +
                                  (s.kernel_height - 1) * s.dilation_height + 1 - s.in_height -
                                  s.pad_height,
                              (OW - 1) * s.stride_width + (s.kernel_width - 1) * s.dilation_width +
                                  1 - s.in_width - s.pad_width};
  const memory::desc user_src(src_dims, dt::f32, tag::nchw), user_dst(dst_dims, dt::f32, tag::nchw);
  const memory::desc user_w(w_dims, dt::f32, G == 1 ? tag::oihw : tag::goihw);
  const memory::desc user_b(b_dims, dt::f32, tag::x);
  const memory::desc any_src(src_dims, dt::f32, tag::any), any_dst(dst_dims, dt::f32, tag::any);
  const memory::desc any_w(w_dims, dt::f32, tag::any);

  const auto x = random_vec(s.x_size(), 1), w = random_vec(s.w_size(), 2);
  const auto b = random_vec(s.out_channels, 3), dyv = random_vec(s.y_size(), 4);
  std::vector<float> out(static_cast<std::size_t>(pass == kFwd       ? s.y_size()
                                                  : pass == kBwdData ? s.x_size()
                                                                     : s.w_size()));
  std::vector<float> db(static_cast<std::size_t>(s.out_channels));
  memory m_x(user_src, eng, const_cast<float*>(x.data()));
  memory m_w(user_w, eng, const_cast<float*>(w.data()));
  memory m_b(user_b, eng, const_cast<float*>(b.data()));
  memory m_dy(user_dst, eng, const_cast<float*>(dyv.data()));
  memory m_db(user_b, eng, db.data());

  const prop_kind pk = pass == kFwd ? prop_kind::forward_inference : prop_kind::forward_training;
  convolution_forward::primitive_desc fwd_pd(
      convolution_forward::desc(pk, algorithm::convolution_direct, any_src, any_w, user_b, any_dst,
                                strides, dil, pad_l, pad_r),
      eng);
  // Reorder helper: returns the memory to use (user memory itself if layouts agree) and queues
  // the reorder; `to_user` reorders the other way after the primitive.
  struct Step {
    reorder r;
    memory from, to;
  };
  std::vector<Step> before, after;
  auto in_mem = [&](memory user, const memory::desc& want) {
    if (want == user.get_desc()) return user;
    memory m(want, eng);
    before.push_back({reorder(user, m), user, m});
    return m;
  };
  auto out_mem = [&](memory user, const memory::desc& want) {
    if (want == user.get_desc()) return user;
    memory m(want, eng);
    after.push_back({reorder(m, user), m, user});
    return m;
  };
  primitive prim;
  std::unordered_map<int, memory> args;
  if (pass == kFwd) {
    memory m_y(user_dst, eng, out.data());
    prim = convolution_forward(fwd_pd);
    args = {{DNNL_ARG_SRC, in_mem(m_x, fwd_pd.src_desc())},
            {DNNL_ARG_WEIGHTS, in_mem(m_w, fwd_pd.weights_desc())},
            {DNNL_ARG_BIAS, m_b},
            {DNNL_ARG_DST, out_mem(m_y, fwd_pd.dst_desc())}};
  } else if (pass == kBwdData) {
    memory m_dx(user_src, eng, out.data());
    convolution_backward_data::primitive_desc pd(
        convolution_backward_data::desc(algorithm::convolution_direct, any_src, any_w, any_dst,
                                        strides, dil, pad_l, pad_r),
        eng, fwd_pd);
    prim = convolution_backward_data(pd);
    args = {{DNNL_ARG_DIFF_DST, in_mem(m_dy, pd.diff_dst_desc())},
            {DNNL_ARG_WEIGHTS, in_mem(m_w, pd.weights_desc())},
            {DNNL_ARG_DIFF_SRC, out_mem(m_dx, pd.diff_src_desc())}};
  } else {
    memory m_dw(user_w, eng, out.data());
    convolution_backward_weights::primitive_desc pd(
        convolution_backward_weights::desc(algorithm::convolution_direct, any_src, any_w, user_b,
                                           any_dst, strides, dil, pad_l, pad_r),
        eng, fwd_pd);
    prim = convolution_backward_weights(pd);
    args = {{DNNL_ARG_SRC, in_mem(m_x, pd.src_desc())},
            {DNNL_ARG_DIFF_DST, in_mem(m_dy, pd.diff_dst_desc())},
            {DNNL_ARG_DIFF_WEIGHTS, out_mem(m_dw, pd.diff_weights_desc())},
            {DNNL_ARG_DIFF_BIAS, m_db}};
  }
  for (auto _ : st) {
    for (auto& r : before) r.r.execute(strm, r.from, r.to);
    prim.execute(strm, args);
    for (auto& r : after) r.r.execute(strm, r.from, r.to);
    strm.wait();
    benchmark::ClobberMemory();
  }
  set_rate(st, s);
}
#endif

// ---- summary ---------------------------------------------------------------------------------

class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, std::vector<double>> gflops;  // per repetition
  std::map<std::string, double> median_gflops;        // from the median aggregate
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      if (r.error_occurred) continue;
      const auto it = r.counters.find("GFLOP/s");
      if (it == r.counters.end()) continue;
      if (r.run_type == Run::RT_Iteration) {
        gflops[r.run_name.function_name].push_back(it->second.value);
      } else if (r.aggregate_name == "median") {
        median_gflops[r.run_name.function_name] = it->second.value;
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
  double get(const std::string& name) const {
    if (const auto m = median_gflops.find(name); m != median_gflops.end()) return m->second;
    const auto it = gflops.find(name);
    if (it == gflops.end() || it->second.empty()) return 0.0;
    auto v = it->second;
    std::sort(v.begin(), v.end());
    const std::size_t k = v.size() / 2;
    return v.size() % 2 ? v[k] : 0.5 * (v[k - 1] + v[k]);
  }
};

std::string bench_name(const std::string& layer, Pass p, Impl i) {
  return "conv/" + layer + "/" + kPassNames[p] + "/" + kImplNames[i];
}

double geomean(const std::vector<double>& v) {
  if (v.empty()) return 0.0;
  double s = 0.0;
  for (double x : v) s += std::log(x);
  return std::exp(s / static_cast<double>(v.size()));
}

void print_summary(const SummaryReporter& rep, const std::vector<im2gemm::bench::NamedConv>& layers,
                   const std::set<int>& passes, int threads, double peak, bool grouped) {
  std::printf(
      "\nconv summary: GFLOP/s = 2*N*F*OH*OW*C/groups*KH*KW per pass / median real time, "
      "%d threads (1t: one thread); FMA peak measured here %.1f GFLOP/s.\n",
      threads, peak);
  std::printf("%s\n%s\n", im2gemm::blas_info().summary().c_str(),
              im2gemm::engine_info().summary().c_str());
  std::printf(
      "targets: x_sgemm >= 1.0 every row; geomean x_oneDNN >= 1.15 per pass; bwd_data "
      "x_oneDNN >= 2 on lenet_conv1, alexnet_conv1, resnet_conv1; lenet_conv2 fwd "
      "x_ref_1t >= 100\n");
  if (grouped) {
    std::printf(
        "grouped suite: targets geomean x_oneDNN >= 2 per pass; x_memcpy >= 0.5 on every "
        "depthwise layer and pass (x_memcpy = memcpy time of input+output+weights bytes / "
        "pass time)\n");
  }
  std::printf("%-14s %-11s %9s %6s %8s %8s %9s %8s %9s %9s %9s %9s %9s%s\n", "layer", "pass",
              "im2gemm", "%peak", "packed", "openblas", "sgemm", "x_sgemm", "oneDNN", "x_oneDNN",
              "im2gemm1t", "ref_1t", "x_ref_1t", grouped ? "  x_memcpy" : "");
  for (int p : passes) {
    std::vector<double> x_dnn, x_sg;
    for (const auto& l : layers) {
      const auto g = [&](Impl i) { return rep.get(bench_name(l.name, static_cast<Pass>(p), i)); };
      // im2gemm: the public call; when it was not run, the packed backend stands in.
      const double ours = g(kIm2gemm) > 0 ? g(kIm2gemm) : g(kPacked), sg = g(kSgemm), dn = g(kDnnl),
                   one = g(kIm2gemm1t), ref = g(kRef);
      if (ours <= 0.0) continue;
      const double xs = sg > 0 ? ours / sg : 0.0, xd = dn > 0 ? ours / dn : 0.0;
      if (xs > 0) x_sg.push_back(xs);
      if (xd > 0) x_dnn.push_back(xd);
      std::printf("%-14s %-11s %9.1f %5.0f%% %8.1f %8.1f %9.1f %8.2f %9.1f %9.2f", l.name.c_str(),
                  kPassNames[p], ours, peak > 0 ? 100.0 * ours / peak : 0.0, g(kPacked),
                  g(kOpenblas), sg, xs, dn, xd);
      if (ref > 0 && one > 0) {
        std::printf(" %9.2f %9.3f %9.1f", one, ref, one / ref);
      } else if (grouped) {
        std::printf(" %9s %9s %9s", "", "", "");
      }
      if (const double mc = g(kMemcpy); grouped && mc > 0) std::printf(" %9.2f", ours / mc);
      std::printf("\n");
    }
    std::printf("%-14s %-11s %9s %6s %8s %8s %9s %8.2f %9s %9.2f   (geometric means)\n", "geomean",
                kPassNames[p], "", "", "", "", "", geomean(x_sg), "", geomean(x_dnn));
  }
}

std::set<std::string> csv_option(int& argc, char** argv, const std::string& flag, const char* env) {
  std::string value;
  if (const char* e = std::getenv(env)) value = e;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind(flag + "=", 0) == 0) {
      value = a.substr(flag.size() + 1);
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  std::set<std::string> items;
  std::size_t pos = 0;
  while (!value.empty() && pos <= value.size()) {
    const std::size_t comma = value.find(',', pos);
    const std::string item =
        value.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (!item.empty()) items.insert(item);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return items;
}

}  // namespace

int main(int argc, char** argv) {
  const auto want_layers = csv_option(argc, argv, "--layers", "IM2GEMM_BENCH_LAYERS");
  const auto want_impls = csv_option(argc, argv, "--impls", "IM2GEMM_BENCH_IMPLS");
  const auto want_passes = csv_option(argc, argv, "--passes", "IM2GEMM_BENCH_PASSES");
  const auto want_suite = csv_option(argc, argv, "--suite", "IM2GEMM_BENCH_SUITE");
  const bool grouped = want_suite.count("grouped") > 0;
  // Repetitions of all benchmarks are interleaved in random order by default, so that the load
  // of a shared machine spreads over every implementation instead of hitting one of them.
  std::vector<char*> args(argv, argv + argc);
  bool interleave_given = false;
  for (int i = 1; i < argc; ++i) {
    interleave_given |= std::string(argv[i]).rfind("--benchmark_enable_random_interleaving", 0) ==
                        0;
  }
  static char interleave[] = "--benchmark_enable_random_interleaving=true";
  if (!interleave_given) args.push_back(interleave);
  argc = static_cast<int>(args.size());
  args.push_back(nullptr);
  argv = args.data();
  benchmark::Initialize(&argc, argv);
  const int threads = im2gemm::num_threads();
  const auto all = im2gemm::bench::conv_layers(grouped ? "grouped.txt" : "layers.txt");
  std::vector<im2gemm::bench::NamedConv> layers;
  for (const auto& l : all) {
    if (want_layers.empty() || want_layers.count(l.name)) layers.push_back(l);
  }
  auto impl_on = [&](Impl i) {
    if (i == kMemcpy && want_impls.empty()) return grouped;  // by default in the grouped suite
    if (want_impls.empty()) return true;
    if (i == kIm2gemm1t) return want_impls.count("ref") > 0 || want_impls.count("im2gemm_1t") > 0;
    return want_impls.count(kImplNames[i]) > 0;
  };
  std::set<int> passes;
  for (int p = 0; p < kPasses; ++p) {
    if (want_passes.empty() || want_passes.count(kPassNames[p])) passes.insert(p);
  }
  const double peak = im2gemm::bench::measure_fma_peak(threads);
  std::printf("FMA peak, %d threads: %.1f GFLOP/s\n%s\n", threads, peak,
              im2gemm::blas_info().summary().c_str());
  // In the JSON output too (--benchmark_out): scripts/plot-bench draws the peak as a line.
  benchmark::AddCustomContext("im2gemm_threads", std::to_string(threads));
  benchmark::AddCustomContext("fma_peak_gflops", std::to_string(peak));
  benchmark::AddCustomContext("im2gemm_engine", im2gemm::engine_info().summary());
  benchmark::AddCustomContext("im2gemm_blas", im2gemm::blas_info().summary());
  std::string order;  // the suite's order, for the charts (the runs are interleaved)
  for (const auto& l : layers) order += (order.empty() ? "" : ",") + l.name;
  benchmark::AddCustomContext("suite_layers", order);
  for (const auto& l : layers) {
    const Conv2dShape s = l.shape;
    for (int pi : passes) {
      const Pass p = static_cast<Pass>(pi);
      for (int ii = 0; ii < kImpls; ++ii) {
        const Impl i = static_cast<Impl>(ii);
        if (!impl_on(i)) continue;
#ifndef IM2GEMM_HAVE_DNNL
        if (i == kDnnl) continue;
#endif
        if ((i == kRef || i == kIm2gemm1t) && static_cast<double>(s.macs()) > kMaxReferenceMacs)
          continue;
        benchmark::RegisterBenchmark(bench_name(l.name, p, i).c_str(),
                                     [s, p, i, threads](benchmark::State& st) {
                                       switch (i) {
                                         case kIm2gemm:
                                           run_im2gemm(st, s, p, false, threads);
                                           break;
                                         case kIm2gemm1t: run_im2gemm(st, s, p, false, 1); break;
                                         case kRef: run_im2gemm(st, s, p, true, 1); break;
                                         case kSgemm: run_sgemm(st, s, p, threads); break;
                                         case kMemcpy: run_memcpy(st, s, p, threads); break;
                                         case kPacked:
                                         case kOpenblas:
                                           run_im2gemm(st, s, p, false, threads, i);
                                           break;
#ifdef IM2GEMM_HAVE_DNNL
                                         case kDnnl: run_dnnl(st, s, p, threads); break;
#endif
                                         default: break;
                                       }
                                     })
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond)
            ->MinTime(kMinTime);
      }
    }
  }
  SummaryReporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  omp_set_num_threads(threads);
  print_summary(rep, layers, passes, threads, peak, grouped);
  benchmark::Shutdown();
  return 0;
}
