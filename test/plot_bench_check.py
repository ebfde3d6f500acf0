#!/usr/bin/env python3
"""scripts/plot_bench.py on a small made-up run in Google Benchmark's JSON layout, with the
names bench_conv and bench_pool give their benchmarks: the four charts must come out as PNG
files. Exit 77 (skipped) where Debian's python3 has no matplotlib (scripts/setup bench).

  plot_bench_check.py PLOT_BENCH_PY"""
import json
import os
import subprocess
import sys
import tempfile

PY = "/usr/bin/python3"


def entry(name, counter, value, repeats="", aggregate="median"):
    run_name = f"{name}/min_time:0.300{repeats}/real_time"
    return {"name": run_name + "_" + aggregate, "run_name": run_name, "run_type": "aggregate",
            "aggregate_name": aggregate, "real_time": 1.0, "time_unit": "ms", counter: value}


def main():
    script = sys.argv[1]
    if not os.path.exists(PY) or subprocess.run([PY, "-c", "import matplotlib"],
                                                 capture_output=True).returncode != 0:
        print("SKIP: /usr/bin/python3 has no matplotlib (scripts/setup bench installs "
              "python3-matplotlib): the charts are not tested")
        return 77
    layers = ["tutorial", "lenet_conv1"]
    conv = {"context": {"date": "2026-01-01T00:00:00", "num_cpus": 2, "im2gemm_threads": "2",
                        "fma_peak_gflops": "100.0", "suite_layers": ",".join(layers),
                        "im2gemm_commit": "abc1234"},
            "benchmarks": []}
    for i, layer in enumerate(layers):
        for p in ("fwd", "bwd_data", "bwd_weights"):
            for j, impl in enumerate(("im2gemm", "sgemm", "onednn", "packed", "openblas")):
                conv["benchmarks"].append(entry(f"conv/{layer}/{p}/{impl}", "GFLOP/s",
                                                10.0 * (i + 1) + j))
                conv["benchmarks"].append(entry(f"conv/{layer}/{p}/{impl}", "GFLOP/s", 1.0,
                                                aggregate="stddev"))
    pools = ["lenet_pool", "vgg_pool1"]
    pool = {"context": {"im2gemm_threads": "2", "suite_pools": ",".join(pools)}, "benchmarks": []}
    for k, p in enumerate(pools):
        for v in ("im2gemm_fwd", "im2gemm_bwd", "onednn_fwd", "onednn_bwd", "memcpy",
                  "avg_im2gemm_fwd", "avg_im2gemm_bwd", "avg_onednn_fwd", "avg_onednn_bwd",
                  "avg_memcpy"):
            pool["benchmarks"].append(entry(f"{p}/{v}", "GB/s", 5.0 + k + len(v) % 7,
                                            repeats="/repeats:5"))
    with tempfile.TemporaryDirectory(prefix="im2gemm_plot_") as d:
        with open(os.path.join(d, "conv.json"), "w") as f:
            json.dump(conv, f)
        with open(os.path.join(d, "pool.json"), "w") as f:
            json.dump(pool, f)
        r = subprocess.run([PY, script, d, os.path.join(d, "out")], capture_output=True, text=True)
        print(r.stdout + r.stderr, end="")
        if r.returncode != 0:
            return 1
        for name in ("conv_fwd.png", "conv_bwd_data.png", "conv_bwd_weights.png", "pool.png"):
            path = os.path.join(d, "out", name)
            with open(path, "rb") as f:
                if f.read(8) != b"\x89PNG\r\n\x1a\n":
                    print(f"plot_bench_check: {name} is not a PNG")
                    return 1
            print(f"plot_bench_check: {name}, {os.path.getsize(path)} bytes")
    print("plot_bench_check: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
