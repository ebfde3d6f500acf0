// The packed GEMM engine on its own:
//  - every configured micro-kernel hot in cache (one thread, an MR x KC A panel and a KC x NR
//    B panel in L1, C accumulated), as a fraction of the FMA peak of its ISA measured in the
//    same run on one thread, both on the thread's CPU clock;
//  - the plain packed driver (B packed from a row-major matrix) against OpenBLAS's sgemm on
//    each suite layer's per-image lowered forward GEMM (F/groups x OH*OW x C/groups*KH*KW,
//    called N times), both on the same threads.
//
//   flock /tmp/im2gemm-bench.lock ./build/bench/bench_gemm --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <im2gemm/im2gemm.hpp>

#include "gemm/gemm.hpp"
#include "peak.hpp"
#include "suite.hpp"

namespace {

using im2gemm::detail::Isa;
namespace gemm = im2gemm::detail::gemm;
using std::int64_t;

using im2gemm::bench::random_vec;

void run_ukernel(benchmark::State& st, Isa isa) {
  const gemm::Config& cfg = gemm::config(isa);
  const int64_t k = cfg.kc;
  const auto a = random_vec(cfg.mr * k, 1);
  auto* b = static_cast<float*>(std::aligned_alloc(64, static_cast<std::size_t>(k * cfg.nr) * 4));
  const auto bv = random_vec(k * cfg.nr, 2);
  std::copy(bv.begin(), bv.end(), b);
  std::vector<float> c(static_cast<std::size_t>(cfg.mr * cfg.nr), 0.0f);
  gemm::Tile t;
  t.a = a.data();
  t.lda = k;
  t.b = b;
  t.k = k;
  t.c = c.data();
  t.ldc = cfg.nr;
  t.m = cfg.mr;
  t.n = cfg.nr;
  t.accumulate = true;
  for (auto _ : st) {
    cfg.ukernel(t);
    benchmark::ClobberMemory();
  }
  std::free(b);
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * cfg.mr * cfg.nr * k * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

void run_driver(benchmark::State& st, const im2gemm::Conv2dShape& s, bool packed, int threads,
                Isa isa) {
  const int64_t G = s.groups, M = s.out_channels / G;
  const int64_t K = s.in_channels / G * s.kernel_height * s.kernel_width;
  const int64_t N = s.out_height() * s.out_width();
  const auto a = random_vec(M * K, 1), b = random_vec(K * N, 2);
  std::vector<float> c(static_cast<std::size_t>(M * N));
  omp_set_num_threads(threads);
  for (auto _ : st) {
    for (int64_t img = 0; img < s.batch * G; ++img) {
      if (packed) {
        gemm::sgemm_packed(isa, M, N, K, a.data(), K, b.data(), N, c.data(), N, threads);
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(M),
                    static_cast<int>(N), static_cast<int>(K), 1.0f, a.data(), static_cast<int>(K),
                    b.data(), static_cast<int>(N), 0.0f, c.data(), static_cast<int>(N));
      }
    }
    benchmark::ClobberMemory();
  }
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(s.macs()) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

class Reporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, double> median;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      const auto it = r.counters.find("GFLOP/s");
      if (r.error_occurred || it == r.counters.end()) continue;
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name == "median") {
        median[r.run_name.function_name] = it->second.value;
      } else if (r.run_type == Run::RT_Iteration && !median.count(r.run_name.function_name)) {
        median[r.run_name.function_name] = it->second.value;  // single repetition
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const int threads = im2gemm::num_threads();
  const Isa best = im2gemm::detail::isa_active();
  std::vector<Isa> isas;
  for (Isa i : {Isa::avx2, Isa::avx512}) {
    if (static_cast<int>(i) <= static_cast<int>(best)) isas.push_back(i);
  }
  for (Isa isa : isas) {
    benchmark::RegisterBenchmark(("ukernel/" + std::string(gemm::config(isa).name)).c_str(),
                                 [isa](benchmark::State& st) { run_ukernel(st, isa); })
        ->MinTime(0.2);
  }
  const auto layers = im2gemm::bench::conv_layers();
  for (const auto& l : layers) {
    for (bool packed : {true, false}) {
      const auto s = l.shape;
      benchmark::RegisterBenchmark(
          ("driver/" + l.name + (packed ? "/packed" : "/openblas")).c_str(),
          [s, packed, threads, best](benchmark::State& st) {
            run_driver(st, s, packed, threads, best);
          })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond)
          ->MinTime(0.2);
    }
  }
  std::map<Isa, double> peak1;
  for (Isa isa : isas) peak1[isa] = im2gemm::bench::measure_fma_peak_cpu_time(isa == Isa::avx512);
  Reporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  std::printf("\ngemm summary (medians); %s\n%s\n", im2gemm::blas_info().summary().c_str(),
              im2gemm::engine_info().summary().c_str());
  std::printf(
      "target: micro-kernel >= 90%% of the FMA peak of its ISA (one thread, hot in cache;\n"
      "both timed by the thread's CPU clock, so other load on the machine cancels out)\n");
  for (Isa isa : isas) {
    const std::string name = gemm::config(isa).name;
    const double g = rep.median["ukernel/" + name];
    std::printf("%-28s %8.1f GFLOP/s  FMA peak (1 thread, %s) %8.1f  fraction %.3f\n", name.c_str(),
                g, im2gemm::detail::isa_name(isa), peak1[isa],
                peak1[isa] > 0 ? g / peak1[isa] : 0.0);
  }
  std::printf("\n%-14s %10s %10s %8s   (%d threads, per-image lowered forward GEMM, N calls)\n",
              "layer", "packed", "openblas", "ratio", threads);
  for (const auto& l : layers) {
    const double p = rep.median["driver/" + l.name + "/packed"];
    const double o = rep.median["driver/" + l.name + "/openblas"];
    if (p > 0 && o > 0) std::printf("%-14s %10.1f %10.1f %8.2f\n", l.name.c_str(), p, o, p / o);
  }
  benchmark::Shutdown();
  return 0;
}
