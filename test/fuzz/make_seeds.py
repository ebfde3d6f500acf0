#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_im2gemm (corpus/): a few inputs per call, the issue's
extreme shapes among them. Layout: see fuzz_im2gemm.cpp. Deterministic."""
import os
import random

rng = random.Random(14)
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
os.makedirs(out, exist_ok=True)
EXTREME = {"INT64_MAX": 245, "BOUND": 247, "BOUND+1": 249}


def data(n):
    return [rng.randrange(0, 256) for _ in range(n)]


def write(name, b):
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes(b))


for call in range(7):
    for k in range(3):
        setup = rng.randrange(0, 256)
        fields = [rng.randrange(0, 240) for _ in range(14)]
        write(f"call{call}_{k}", [call, setup, [0, 4, 8][k]] + fields + [0] * 6 + data(400))
# The reproducers: conv 5x5, 3x3 kernel, pad_width 3, stride_width INT64_MAX, the bound
# and the bound + 1 (fields: N G C F H W KH KW SH SW PH PW DH DW; field(lo, hi) = lo + v % n).
for tag, v in EXTREME.items():
    for call in range(3):
        conv = [0, 0, 0, 0, 4, 4, 2, 2, 0, v, 0, 3, 0, 0]
        write(f"conv{call}_stride_{tag}", [call, 0, 0] + conv + [0] * 6 + data(200))
    # pool 3x4, 3x3 kernel, pad_width 2, stride_width extreme (fields: N C H W KH KW SH SW PH PW)
    pool = [0, 0, 2, 3, 2, 2, 0, v, 0, 2]
    write(f"pool_stride_{tag}", [3, 0, 0] + pool + [0] * 3 + data(100))
