#!/usr/bin/env python3
"""Charts of a benchmark run from Google Benchmark's JSON (scripts/bench writes it).

  plot_bench.py JSON_DIR [OUT_DIR]      (scripts/plot-bench is the wrapper to call)

Reads JSON_DIR/conv.json and JSON_DIR/pool.json (whichever exist) and writes PNG charts into
OUT_DIR (default: JSON_DIR):
  conv_fwd.png, conv_bwd_data.png, conv_bwd_weights.png: GFLOP/s per suite layer of im2gemm
    (the public call, IM2GEMM_GEMM=auto), each of its backends forced (packed, openblas),
    oneDNN and the bare OpenBLAS sgemm of the layer's lowered GEMM, with the machine's FMA peak
    measured in the same run as a horizontal line;
  pool.png: GB/s per suite pool of im2gemm, oneDNN and a memcpy of the same bytes, max and
    average pooling, forward and backward.
Every value is the median over the repetitions where the JSON has it (aggregates), else the
median of the repetitions it holds."""
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PASSES = [("fwd", "forward"), ("bwd_data", "backward data"),
          ("bwd_weights", "backward weights")]
# (benchmark implementation name, legend label, colour)
CONV_SERIES = [
    ("im2gemm", "im2gemm (auto)", "#1f4e99"),
    ("packed", "im2gemm, packed engine", "#5b8fd9"),
    ("openblas", "im2gemm, openblas backend", "#a9c6ef"),
    ("onednn", "oneDNN (NCHW, reorders timed)", "#d9822b"),
    ("sgemm", "OpenBLAS sgemm alone (lowered GEMM)", "#7a7a7a"),
]
POOL_SERIES = [
    ("im2gemm", "im2gemm", "#1f4e99"),
    ("onednn", "oneDNN", "#d9822b"),
    ("memcpy", "memcpy of the same bytes", "#7a7a7a"),
]


def load(path):
    with open(path) as f:
        return json.load(f)


def medians(doc, counter):
    """{name parts (tuple, without the /min_time: and /real_time tails): median counter}."""
    agg, reps = {}, {}
    for b in doc.get("benchmarks", []):
        if counter not in b or b.get("error_occurred"):
            continue
        name = b.get("run_name", b["name"])
        parts = tuple(p for p in name.split("/")
                      if not p.startswith("min_time:") and p not in ("real_time", "process_time")
                      and not p.startswith("repeats:"))
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                agg[parts] = b[counter]
        else:
            reps.setdefault(parts, []).append(b[counter])
    out = {k: statistics.median(v) for k, v in reps.items()}
    out.update(agg)
    return out


def subtitle(doc):
    c = doc.get("context", {})
    bits = []
    if c.get("date"):
        bits.append(c["date"][:10])
    if c.get("im2gemm_commit"):
        bits.append("commit " + c["im2gemm_commit"])
    if c.get("im2gemm_threads"):
        bits.append(c["im2gemm_threads"] + " threads")
    if c.get("num_cpus"):
        bits.append(f"{c['num_cpus']} CPUs")
    if c.get("host_name"):
        bits.append("host " + c["host_name"])
    return ", ".join(bits)


def suite_order(doc, key, names):
    """names in the suite's order (the bench records it in the context), then any others."""
    order = [n for n in doc.get("context", {}).get(key, "").split(",") if n]
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def grouped_bars(ax, groups, series, values, unit):
    """Bars of every series side by side for each group; missing values leave a gap."""
    n = len(series)
    width = 0.8 / n
    for i, (key, label, colour) in enumerate(series):
        xs, ys = [], []
        for g, group in enumerate(groups):
            v = values.get((group, key))
            if v is not None and v > 0:
                xs.append(g - 0.4 + width * (i + 0.5))
                ys.append(v)
        ax.bar(xs, ys, width, label=label, color=colour, edgecolor="white", linewidth=0.3)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(unit)
    ax.grid(axis="y", linewidth=0.4, alpha=0.6)
    ax.set_axisbelow(True)


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    # A few flat colours and grey text: a 64-colour palette keeps them and makes the file about
    # a third of the size (Pillow comes with matplotlib on Debian).
    try:
        from PIL import Image
        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    except (ImportError, AttributeError):
        pass
    print(f"plot-bench: wrote {path} ({os.path.getsize(path) // 1024} KiB)")


def plot_conv(doc, out_dir):
    m = medians(doc, "GFLOP/s")
    peak = float(doc.get("context", {}).get("fma_peak_gflops", "0") or 0)
    threads = doc.get("context", {}).get("im2gemm_threads", "?")
    layers = suite_order(doc, "suite_layers",
                         {p[1] for p in m if len(p) >= 4 and p[0] == "conv"})
    written = []
    for pass_key, pass_label in PASSES:
        values = {(p[1], p[3]): v for p, v in m.items()
                  if len(p) >= 4 and p[0] == "conv" and p[2] == pass_key}
        if not values:
            continue
        shown = [l for l in layers if any((l, s[0]) in values for s in CONV_SERIES)]
        fig, ax = plt.subplots(figsize=(12, 4.8))
        grouped_bars(ax, shown, CONV_SERIES, values, "GFLOP/s (higher is better)")
        if peak > 0:
            ax.axhline(peak, color="#b22222", linestyle="--", linewidth=1.2,
                       label=f"FMA peak, {threads} threads: {peak:.0f} GFLOP/s")
        ax.set_xlabel("suite layer (../shared/suite/layers.txt)")
        ax.set_title(f"Convolution {pass_label}: GFLOP/s per layer, median real time\n"
                     f"{subtitle(doc)}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", ncol=3, framealpha=0.9)
        top = max([peak] + list(values.values()))
        ax.set_ylim(0, top * 1.3)  # room for the legend above the bars
        path = os.path.join(out_dir, f"conv_{pass_key}.png")
        save(fig, path)
        written.append(path)
    return written


def plot_pool(doc, out_dir):
    m = medians(doc, "GB/s")
    pools = suite_order(doc, "suite_pools", {p[0] for p in m if len(p) >= 2})
    # variant name of (kind, direction, series); memcpy has no direction.
    def variant(kind, direction, series):
        prefix = "avg_" if kind == "avg" else ""
        if series == "memcpy":
            return prefix + "memcpy"
        return f"{prefix}{series}_{direction}"
    panels = [("max", "fwd", "Max pooling, forward"), ("max", "bwd", "Max pooling, backward"),
              ("avg", "fwd", "Average pooling, forward"),
              ("avg", "bwd", "Average pooling, backward")]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    any_panel = False
    for ax, (kind, direction, title) in zip(axes.flat, panels):
        values = {}
        for p in pools:
            for key, _, _ in POOL_SERIES:
                v = m.get((p, variant(kind, direction, key)))
                if v is not None:
                    values[(p, key)] = v
        if not values:
            ax.set_visible(False)
            continue
        any_panel = True
        grouped_bars(ax, pools, POOL_SERIES, values, "GB/s (higher is better)")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, max(values.values()) * 1.25)
        ax.legend(fontsize=8, loc="upper left", ncol=3, framealpha=0.9)
    if not any_panel:
        plt.close(fig)
        return []
    fig.suptitle("Pooling: GB/s per suite pool (../shared/suite/pools.txt), median real time; "
                 "bytes per call = input + output\n(+ argmax for max pooling), the same for "
                 "forward, backward and memcpy; " + subtitle(doc), fontsize=10)
    path = os.path.join(out_dir, "pool.png")
    save(fig, path)
    return [path]


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(argv) >= 2 else 2
    src = argv[1]
    out = argv[2] if len(argv) > 2 else src
    os.makedirs(out, exist_ok=True)
    written = []
    conv = os.path.join(src, "conv.json")
    pool = os.path.join(src, "pool.json")
    if os.path.exists(conv):
        written += plot_conv(load(conv), out)
    if os.path.exists(pool):
        written += plot_pool(load(pool), out)
    if not written:
        print(f"plot-bench: no conv.json or pool.json with results in {src}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
