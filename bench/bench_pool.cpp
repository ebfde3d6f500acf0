// Max and average pooling over ../shared/suite/pools.txt: im2gemm forward and backward, oneDNN
// on NCHW user memory (training forward with its workspace, and backward), the reference
// loops, and a memcpy of the same bytes as the bandwidth ceiling, all in one run. Every max
// pooling variant is charged the same bytes per call, input + output + argmax =
// 4 * (N*C*H*W + 2 * N*C*OH*OW), every average pooling one input + output =
// 4 * (N*C*H*W + N*C*OH*OW) (count_include_pad, floor mode: PyTorch's defaults), so GB/s ratios
// are time ratios. At the end the binary prints its own summaries: medians over the
// repetitions, per pool, against the targets of issues 4 and 11.
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <im2gemm/im2gemm.hpp>

#include "pool/avgpool2d_impl.hpp"
#include "pool/maxpool2d_impl.hpp"
#include "suite.hpp"

#ifdef IM2GEMM_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace {

using im2gemm::MaxPool2dShape;

constexpr int kRepetitions = 5;
constexpr double kMinTime =
    0.1;  // seconds per repetition: a short run is likelier to find the shared machine quiet

std::int64_t pool_bytes(const MaxPool2dShape& s) { return 4 * (s.x_size() + 2 * s.y_size()); }
std::int64_t avg_bytes(const MaxPool2dShape& s) { return 4 * (s.x_size() + s.y_size()); }

im2gemm::AvgPool2dShape avg_shape(const MaxPool2dShape& s) {
  im2gemm::AvgPool2dShape a;
  a.batch = s.batch;
  a.channels = s.channels;
  a.in_height = s.in_height;
  a.in_width = s.in_width;
  a.kernel_height = s.kernel_height;
  a.kernel_width = s.kernel_width;
  a.stride_height = s.stride_height;
  a.stride_width = s.stride_width;
  a.pad_height = s.pad_height;
  a.pad_width = s.pad_width;
  return a;
}

// Buffers of one pool, allocated (and first touched) once and kept for the whole run: the
// repetitions of all benchmarks are interleaved (see main), about 1.2 GB for the suite.
struct PoolData {
  MaxPool2dShape s;
  im2gemm::AvgPool2dShape avg;  // the same window, count_include_pad, floor mode
  std::vector<float> x, y, dy, dx;
  std::vector<std::int32_t> argmax;
  std::vector<char> copy_src, copy_dst;  // memcpy ceiling, pool_bytes each (avg: a prefix)
#ifdef IM2GEMM_HAVE_DNNL
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  std::vector<float> dnnl_y, dnnl_dx;
  dnnl::pooling_forward::primitive_desc fwd_pd;
  dnnl::pooling_backward::primitive_desc bwd_pd;
  dnnl::memory src_m, dst_m, ws_m, ddst_m, dsrc_m;
  dnnl::pooling_forward fwd;
  dnnl::pooling_backward bwd;
  dnnl::pooling_forward::primitive_desc avg_fwd_pd;
  dnnl::pooling_backward::primitive_desc avg_bwd_pd;
  dnnl::pooling_forward avg_fwd;
  dnnl::pooling_backward avg_bwd;
#endif
};

std::map<std::string, std::unique_ptr<PoolData>> g_data;

PoolData& data_for(const im2gemm::bench::NamedPool& p) {
  if (auto it = g_data.find(p.name); it != g_data.end()) return *it->second;
  auto d = std::make_unique<PoolData>();
  const auto& s = p.shape;
  d->s = s;
  d->avg = avg_shape(s);
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  d->x.resize(static_cast<std::size_t>(s.x_size()));
  for (auto& v : d->x) v = u(rng);
  d->dy.resize(static_cast<std::size_t>(s.y_size()));
  for (auto& v : d->dy) v = u(rng);
  d->y.assign(d->dy.size(), 0.0f);
  d->argmax.assign(d->dy.size(), 0);
  d->dx.assign(d->x.size(), 0.0f);
  d->copy_src.assign(static_cast<std::size_t>(pool_bytes(s)), 1);
  d->copy_dst.assign(d->copy_src.size(), 0);
  im2gemm::maxpool2d_forward(s, d->x, d->y, d->argmax);  // valid argmax for backward
#ifdef IM2GEMM_HAVE_DNNL
  using namespace dnnl;
  using dims = memory::dims;
  const dims src_dims{s.batch, s.channels, s.in_height, s.in_width};
  const dims dst_dims{s.batch, s.channels, s.out_height(), s.out_width()};
  const dims kernel{s.kernel_height, s.kernel_width}, strides{s.stride_height, s.stride_width};
  const dims pad_l{s.pad_height, s.pad_width};
  // Right padding such that oneDNN's output size equals the floor-mode one.
  const dims pad_r{(s.out_height() - 1) * s.stride_height + s.kernel_height - s.in_height -
                       s.pad_height,
                   (s.out_width() - 1) * s.stride_width + s.kernel_width - s.in_width -
                       s.pad_width};
  const memory::desc src_md(src_dims, memory::data_type::f32, memory::format_tag::nchw);
  const memory::desc dst_md(dst_dims, memory::data_type::f32, memory::format_tag::nchw);
  const pooling_forward::desc fd(prop_kind::forward_training, algorithm::pooling_max, src_md,
                                 dst_md, strides, kernel, pad_l, pad_r);
  d->fwd_pd = pooling_forward::primitive_desc(fd, d->eng);
  const pooling_backward::desc bd(algorithm::pooling_max, src_md, dst_md, strides, kernel, pad_l,
                                  pad_r);
  d->bwd_pd = pooling_backward::primitive_desc(bd, d->eng, d->fwd_pd);
  d->dnnl_y.assign(d->y.size(), 0.0f);
  d->dnnl_dx.assign(d->x.size(), 0.0f);
  d->src_m = memory(src_md, d->eng, d->x.data());
  d->dst_m = memory(dst_md, d->eng, d->dnnl_y.data());
  d->ws_m = memory(d->fwd_pd.workspace_desc(), d->eng);
  d->ddst_m = memory(dst_md, d->eng, d->dy.data());
  d->dsrc_m = memory(src_md, d->eng, d->dnnl_dx.data());
  d->fwd = pooling_forward(d->fwd_pd);
  d->bwd = pooling_backward(d->bwd_pd);
  // Average pooling, padded cells counted (PyTorch's default count_include_pad = true).
  const pooling_forward::desc afd(prop_kind::forward_training,
                                  algorithm::pooling_avg_include_padding, src_md, dst_md, strides,
                                  kernel, pad_l, pad_r);
  d->avg_fwd_pd = pooling_forward::primitive_desc(afd, d->eng);
  const pooling_backward::desc abd(algorithm::pooling_avg_include_padding, src_md, dst_md, strides,
                                   kernel, pad_l, pad_r);
  d->avg_bwd_pd = pooling_backward::primitive_desc(abd, d->eng, d->avg_fwd_pd);
  d->avg_fwd = pooling_forward(d->avg_fwd_pd);
  d->avg_bwd = pooling_backward(d->avg_bwd_pd);
  d->fwd.execute(d->strm, {{DNNL_ARG_SRC, d->src_m},
                           {DNNL_ARG_DST, d->dst_m},
                           {DNNL_ARG_WORKSPACE, d->ws_m}});
  d->strm.wait();
  static bool printed = false;
  if (!printed) {
    std::printf("oneDNN %d.%d.%d, implementations: max fwd %s, bwd %s; avg fwd %s, bwd %s\n",
                dnnl_version()->major, dnnl_version()->minor, dnnl_version()->patch,
                d->fwd_pd.impl_info_str(), d->bwd_pd.impl_info_str(), d->avg_fwd_pd.impl_info_str(),
                d->avg_bwd_pd.impl_info_str());
    printed = true;
  }
#endif
  return *(g_data[p.name] = std::move(d));
}

void set_gbs(benchmark::State& st, std::int64_t bytes) {
  st.counters["GB/s"] = benchmark::Counter(static_cast<double>(bytes) * 1e-9,
                                           benchmark::Counter::kIsIterationInvariantRate);
}

// Reads every element of v (a vectorised OR of the bits) so that the read cannot be elided.
template <class T>
T read_all(const std::vector<T>& v) {
  std::uint32_t acc = 0;
  const auto* p = reinterpret_cast<const std::uint32_t*>(v.data());
  const std::size_t n = v.size();
#pragma omp simd reduction(| : acc)
  for (std::size_t i = 0; i < n; ++i) acc |= p[i];
  return static_cast<T>(acc & 1u);
}

// Overwrites v with zeros, with streaming stores where the CPU has AVX-512 (the fastest way
// to write memory that is not read back soon).
#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx512f"))) void stream_zero_avx512(float* p, std::size_t n) {
  std::size_t i = 0;
  for (; i < n && (reinterpret_cast<std::uintptr_t>(p + i) & 63) != 0; ++i) p[i] = 0.0f;
  for (; i + 16 <= n; i += 16) _mm512_stream_ps(p + i, _mm512_setzero_ps());
  _mm_sfence();
  for (; i < n; ++i) p[i] = 0.0f;
}
#endif
void write_all(std::vector<float>& v) {
#if defined(__GNUC__) && defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) return stream_zero_avx512(v.data(), v.size());
#endif
  std::fill(v.begin(), v.end(), 0.0f);
}

// Variants, in the order of the summary table.
// The *_avx2 and *_scalar variants force the forward kernels of that ISA (1 thread).
// The avg_* variants are average pooling, charged avg_bytes.
enum Variant {
  kFwd,
  kBwd,
  kFwd1t,
  kBwd1t,
  kDnnlFwd,
  kDnnlBwd,
  kRefFwd,
  kRefBwd,
  kMemcpy,
  kFwd1tAvx2,
  kFwd1tScalar,
  kTrafficFwd1t,
  kTrafficBwd1t,
  kAvgFwd,
  kAvgBwd,
  kAvgDnnlFwd,
  kAvgDnnlBwd,
  kAvgMemcpy,
  kVariants
};
const char* const kVariantNames[kVariants] = {"im2gemm_fwd",
                                              "im2gemm_bwd",
                                              "im2gemm_fwd_1t",
                                              "im2gemm_bwd_1t",
                                              "onednn_fwd",
                                              "onednn_bwd",
                                              "ref_fwd",
                                              "ref_bwd",
                                              "memcpy",
                                              "im2gemm_fwd_1t_avx2",
                                              "im2gemm_fwd_1t_scalar",
                                              "traffic_fwd_1t",
                                              "traffic_bwd_1t",
                                              "avg_im2gemm_fwd",
                                              "avg_im2gemm_bwd",
                                              "avg_onednn_fwd",
                                              "avg_onednn_bwd",
                                              "avg_memcpy"};
bool is_avg(int v) { return v >= kAvgFwd && v <= kAvgMemcpy; }

void run_variant(benchmark::State& st, const im2gemm::bench::NamedPool& p, Variant v) {
  PoolData& d = data_for(p);
  const auto& s = d.s;
  using im2gemm::detail::PoolIsa;
  const bool one = v == kFwd1t || v == kBwd1t || v == kRefFwd || v == kRefBwd || v == kFwd1tAvx2 ||
                   v == kFwd1tScalar || v == kTrafficFwd1t || v == kTrafficBwd1t;
  im2gemm::set_num_threads(one ? 1 : 0);
  im2gemm::detail::set_pool_isa_cap(v == kFwd1tAvx2     ? PoolIsa::avx2
                                    : v == kFwd1tScalar ? PoolIsa::scalar
                                                        : PoolIsa::avx512);
  for (auto _ : st) {
    switch (v) {
      case kFwd:
      case kFwd1t:
      case kFwd1tAvx2:
      case kFwd1tScalar: im2gemm::maxpool2d_forward(s, d.x, d.y, d.argmax); break;
      case kBwd:
      case kBwd1t: im2gemm::maxpool2d_backward(s, d.dy, d.argmax, d.dx); break;
      case kRefFwd: im2gemm::reference::maxpool2d_forward(s, d.x, d.y, d.argmax); break;
      case kRefBwd: im2gemm::reference::maxpool2d_backward(s, d.dy, d.argmax, d.dx); break;
      case kDnnlFwd:
      case kDnnlBwd:
#ifdef IM2GEMM_HAVE_DNNL
        if (v == kDnnlFwd) {
          d.fwd.execute(d.strm, {{DNNL_ARG_SRC, d.src_m},
                                 {DNNL_ARG_DST, d.dst_m},
                                 {DNNL_ARG_WORKSPACE, d.ws_m}});
        } else {
          d.bwd.execute(d.strm, {{DNNL_ARG_DIFF_DST, d.ddst_m},
                                 {DNNL_ARG_DIFF_SRC, d.dsrc_m},
                                 {DNNL_ARG_WORKSPACE, d.ws_m}});
        }
        d.strm.wait();
#endif
        break;
      case kAvgFwd: im2gemm::avgpool2d_forward(d.avg, d.x, d.y); break;
      case kAvgBwd: im2gemm::avgpool2d_backward(d.avg, d.dy, d.dx); break;
      case kAvgDnnlFwd:
      case kAvgDnnlBwd:
#ifdef IM2GEMM_HAVE_DNNL
        if (v == kAvgDnnlFwd) {
          d.avg_fwd.execute(d.strm, {{DNNL_ARG_SRC, d.src_m}, {DNNL_ARG_DST, d.dst_m}});
        } else {
          d.avg_bwd.execute(d.strm, {{DNNL_ARG_DIFF_DST, d.ddst_m}, {DNNL_ARG_DIFF_SRC, d.dsrc_m}});
        }
        d.strm.wait();
#endif
        break;
      case kTrafficFwd1t:
        // A forward pass reads all of x at least once: this much alone.
        d.y[0] = read_all(d.x);
        break;
      case kTrafficBwd1t:
        // A backward pass writes all of dx at least once: this much alone.
        write_all(d.dx);
        break;
      case kMemcpy:
      case kAvgMemcpy: {
        const std::size_t n = v == kMemcpy ? d.copy_src.size()
                                           : static_cast<std::size_t>(avg_bytes(s));
        const int nt = im2gemm::num_threads();
        char* dst = d.copy_dst.data();
        const char* src = d.copy_src.data();
#pragma omp parallel num_threads(nt)
        {
          const int t = omp_get_thread_num(), T = omp_get_num_threads();
          const std::size_t b = n * t / T, e = n * (t + 1) / T;
          std::memcpy(dst + b, src + b, e - b);
        }
        break;
      }
      case kVariants: break;
    }
    benchmark::ClobberMemory();
  }
  im2gemm::set_num_threads(0);
  im2gemm::detail::set_pool_isa_cap(PoolIsa::avx512);
  set_gbs(st, is_avg(v) ? avg_bytes(s) : pool_bytes(s));
}

// Collects the real time per iteration of every repetition for the summary.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, std::vector<double>> seconds;  // "pool/variant" -> per repetition
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      if (r.run_type != Run::RT_Iteration || r.error_occurred || r.iterations == 0) continue;
      seconds[r.run_name.function_name].push_back(r.real_accumulated_time /
                                                  static_cast<double>(r.iterations));
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// The 1-minute load average: the machine is shared, and a run during which other processes
// kept the cores busy measures the scheduler more than the code (2-thread variants suffer
// most). This process adds about 1-2 while it runs.
double load_average() {
  double l[1] = {0.0};
  return getloadavg(l, 1) == 1 ? l[0] : -1.0;
}
double g_load_before = 0.0;

void print_summary(const SummaryReporter& rep,
                   const std::vector<im2gemm::bench::NamedPool>& pools) {
  std::printf("\nLoad average (1 min) at start %.2f, at end %.2f, on %d cores.\n", g_load_before,
              load_average(), omp_get_num_procs());
  std::printf(
      "\nSummary: GB/s of input + output + argmax bytes, medians of %d interleaved "
      "repetitions; %d threads unless 1t. ISA %s.\n",
      kRepetitions, im2gemm::num_threads(),
      im2gemm::detail::pool_isa_name(im2gemm::detail::pool_isa_active()));
  std::printf(
      "Targets: >= 2x oneDNN, >= 60%% of memcpy (fwd and bwd, every pool); "
      ">= 20x reference on vgg_pool1 at 1 thread.\n"
      "trf_1t: one thread only reads x (forward) or only writes dx with streaming stores\n"
      "(backward), charged the pass's bytes: no pass can be faster, so x_ceil = trf_1t /\n"
      "ref_1t bounds x_ref_1t.\n");
  std::printf("%-14s %-3s %-11s %8s %8s %8s %7s %8s %7s %8s %8s %7s %7s %7s\n", "pool", "dir",
              "kernel", "im2gemm", "oneDNN", "x_oneDNN", "memcpy", "%memcpy", "1t", "ref_1t",
              "x_ref_1t", "trf_1t", "x_ceil", "targets");
  for (const auto& p : pools) {
    const double bytes = static_cast<double>(pool_bytes(p.shape));
    auto gbs = [&](Variant v) {
      const auto it = rep.seconds.find(p.name + "/" + kVariantNames[v]);
      if (it == rep.seconds.end()) return 0.0;
      const double t = median(it->second);
      return t > 0 ? bytes / t * 1e-9 : 0.0;
    };
    const auto g = im2gemm::detail::PoolGeom{p.shape.in_height,     p.shape.in_width,
                                             p.shape.out_height(),  p.shape.out_width(),
                                             p.shape.kernel_height, p.shape.kernel_width,
                                             p.shape.stride_height, p.shape.stride_width,
                                             p.shape.pad_height,    p.shape.pad_width};
    const char* kname = im2gemm::detail::pool_kernel_name(im2gemm::detail::choose_pool_kernel(g));
    const double mc = gbs(kMemcpy);
    if (mc == 0.0 && gbs(kFwd) == 0.0 && gbs(kBwd) == 0.0) continue;  // filtered out
    for (int dir = 0; dir < 2; ++dir) {
      const double ours = gbs(dir ? kBwd : kFwd), dn = gbs(dir ? kDnnlBwd : kDnnlFwd);
      const double one = gbs(dir ? kBwd1t : kFwd1t), ref = gbs(dir ? kRefBwd : kRefFwd);
      const double x_dn = dn > 0 ? ours / dn : 0.0, frac = mc > 0 ? ours / mc : 0.0;
      const double x_ref = ref > 0 ? one / ref : 0.0;
      const double mc1 = gbs(dir ? kTrafficBwd1t : kTrafficFwd1t);
      const double x_ceil = ref > 0 ? mc1 / ref : 0.0;
      std::string t;
      t += dn > 0 ? (x_dn >= 2.0 ? "dnn:ok " : "dnn:MISS ") : "dnn:n/a ";
      t += frac >= 0.6 ? "mem:ok" : "mem:MISS";
      if (p.name == "vgg_pool1") t += x_ref >= 20.0 ? " ref:ok" : " ref:MISS";
      std::printf(
          "%-14s %-3s %-11s %8.2f %8.2f %8.2f %7.2f %7.0f%% %7.2f %8.2f %8.1f %7.2f %7.1f  %s\n",
          p.name.c_str(), dir ? "bwd" : "fwd", kname, ours, dn, x_dn, mc, 100.0 * frac, one, ref,
          x_ref, mc1, x_ceil, t.c_str());
    }
  }
  std::printf(
      "\nAverage pooling (count_include_pad, floor mode): GB/s of input + output bytes, "
      "medians of %d; targets (issue 11): >= 2x oneDNN, >= 60%% of memcpy.\n",
      kRepetitions);
  std::printf("%-14s %-3s %-11s %8s %8s %8s %7s %8s  %s\n", "pool", "dir", "kernel", "im2gemm",
              "oneDNN", "x_oneDNN", "memcpy", "%memcpy", "targets");
  for (const auto& p : pools) {
    const double bytes = static_cast<double>(avg_bytes(p.shape));
    auto gbs = [&](Variant v) {
      const auto it = rep.seconds.find(p.name + "/" + kVariantNames[v]);
      const double t = it == rep.seconds.end() ? 0.0 : median(it->second);
      return t > 0 ? bytes / t * 1e-9 : 0.0;
    };
    const double mc = gbs(kAvgMemcpy);
    if (mc == 0.0 && gbs(kAvgFwd) == 0.0 && gbs(kAvgBwd) == 0.0) continue;
    const auto a = avg_shape(p.shape);
    const im2gemm::detail::AvgGeom ag{
        a.in_height,    a.in_width,      a.out_height(), a.out_width(), a.kernel_height,
        a.kernel_width, a.stride_height, a.stride_width, a.pad_height,  a.pad_width,
        true,           nullptr,         nullptr,        nullptr};
    const char* kname = im2gemm::detail::avg_kernel_name(im2gemm::detail::choose_avg_kernel(ag));
    for (int dir = 0; dir < 2; ++dir) {
      const double ours = gbs(dir ? kAvgBwd : kAvgFwd), dn = gbs(dir ? kAvgDnnlBwd : kAvgDnnlFwd);
      const double x_dn = dn > 0 ? ours / dn : 0.0, frac = mc > 0 ? ours / mc : 0.0;
      std::string t;
      t += dn > 0 ? (x_dn >= 2.0 ? "dnn:ok " : "dnn:MISS ") : "dnn:n/a ";
      t += frac >= 0.6 ? "mem:ok" : "mem:MISS";
      std::printf("%-14s %-3s %-11s %8.2f %8.2f %8.2f %7.2f %7.0f%%  %s\n", p.name.c_str(),
                  dir ? "bwd" : "fwd", kname, ours, dn, x_dn, mc, 100.0 * frac, t.c_str());
    }
  }
  std::printf("\nForward at 1 thread by forced ISA (GB/s; the CPU supports %s):\n",
              im2gemm::detail::pool_isa_name(im2gemm::detail::pool_isa_supported()));
  std::printf("%-14s %8s %8s %8s %8s\n", "pool", "avx512", "avx2", "scalar", "ref");
  for (const auto& p : pools) {
    const double bytes = static_cast<double>(pool_bytes(p.shape));
    auto gbs = [&](Variant v) {
      const auto it = rep.seconds.find(p.name + "/" + kVariantNames[v]);
      const double t = it == rep.seconds.end() ? 0.0 : median(it->second);
      return t > 0 ? bytes / t * 1e-9 : 0.0;
    };
    if (gbs(kFwd1t) == 0.0 && gbs(kFwd1tAvx2) == 0.0 && gbs(kFwd1tScalar) == 0.0) continue;
    std::printf("%-14s %8.2f %8.2f %8.2f %8.2f\n", p.name.c_str(), gbs(kFwd1t), gbs(kFwd1tAvx2),
                gbs(kFwd1tScalar), gbs(kRefFwd));
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Repetitions of all benchmarks run in random order, so that load from other users of a
  // shared machine falls on every variant alike and the ratios stay fair. A flag given on the
  // command line comes later and wins.
  std::vector<char*> args(argv, argv + argc);
  std::string interleave = "--benchmark_enable_random_interleaving=true";
  args.insert(args.begin() + 1, interleave.data());
  int nargs = static_cast<int>(args.size());
  benchmark::Initialize(&nargs, args.data());
  const auto pools = im2gemm::bench::pool_layers();
  // For the charts (scripts/plot-bench): the thread count and the suite's order of the pools.
  benchmark::AddCustomContext("im2gemm_threads", std::to_string(im2gemm::num_threads()));
  std::string order;
  for (const auto& p : pools) order += (order.empty() ? "" : ",") + p.name;
  benchmark::AddCustomContext("suite_pools", order);
  for (const auto& p : pools) {
    for (int v = 0; v < kVariants; ++v) {
#ifndef IM2GEMM_HAVE_DNNL
      if (v == kDnnlFwd || v == kDnnlBwd || v == kAvgDnnlFwd || v == kAvgDnnlBwd) continue;
#endif
      benchmark::RegisterBenchmark((p.name + "/" + kVariantNames[v]).c_str(),
                                   [p, v](benchmark::State& st) {
                                     run_variant(st, p, static_cast<Variant>(v));
                                   })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond)
          ->MinTime(kMinTime)
          ->Repetitions(kRepetitions);
    }
  }
  g_load_before = load_average();
  SummaryReporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  print_summary(rep, pools);
  g_data.clear();
  benchmark::Shutdown();
  return 0;
}
