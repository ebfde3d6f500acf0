#!/usr/bin/env python3
"""Runs a command under mpirun and checks its exit status, its output and its duration.

  mpi_run_check.py --mpirun MPIRUN --np N [--expect-fail] [--within SECONDS]
                   [--expect TEXT]... [--skip-if-env VAR]
                   [--fake-mnist TRAIN,TEST[,BAD]] -- PROGRAM ARGS...

--fake-mnist writes a small Fashion-MNIST look-alike (gzipped IDX, 28x28 random images, labels
i % 10) with TRAIN training and TEST test images into a temporary directory, which replaces
@DATA@ in the arguments; BAD makes the label of training example BAD 200 (a corrupt shard).

Exit 0 when every check holds, 1 otherwise, 77 (meson's "skipped") with a message when
--skip-if-env names a variable that is set (the sanitizer build: see test/meson.build).
"""
import argparse
import gzip
import os
import random
import struct
import subprocess
import sys
import tempfile
import time


def write_fake_mnist(directory, n_train, n_test, bad):
    rng = random.Random(1)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = struct.pack(">IIII", 0x803, n, 28, 28) + bytes(rng.randrange(256) for _ in range(n * 784))
        labels = bytearray(i % 10 for i in range(n))
        if split == "train" and bad is not None:
            labels[bad] = 200
        with gzip.open(os.path.join(directory, f"{split}-images-idx3-ubyte.gz"), "wb") as f:
            f.write(images)
        with gzip.open(os.path.join(directory, f"{split}-labels-idx1-ubyte.gz"), "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + bytes(labels))


def mpirun_command(mpirun, np):
    # Open MPI refuses root without --allow-run-as-root; --oversubscribe lets 2 ranks run on a
    # 1-core CI machine; --bind-to none keeps each rank free to use any core.
    return [mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(np)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpirun", required=True)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--expect-fail", action="store_true")
    ap.add_argument("--within", type=float, default=120.0)
    ap.add_argument("--expect", action="append", default=[])
    ap.add_argument("--skip-if-env", default="")
    ap.add_argument("--fake-mnist", default="")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if a.skip_if_env and os.environ.get(a.skip_if_env):
        print(f"SKIP: {a.skip_if_env} is set ({os.environ[a.skip_if_env]}): this mpirun test does not run here")
        return 77
    tmp = None
    if a.fake_mnist:
        tmp = tempfile.TemporaryDirectory(prefix="im2gemm_fake_mnist_")
        parts = [int(v) for v in a.fake_mnist.split(",")]
        write_fake_mnist(tmp.name, parts[0], parts[1], parts[2] if len(parts) > 2 else None)
        cmd = [c.replace("@DATA@", tmp.name) for c in cmd]
    # In the sanitizer build, LeakSanitizer reports Open MPI's lifetime allocations, made in MCA
    # components that are unloaded before the report (frames "<unknown module>": no
    # suppression can name them). The ranks run without leak detection, with every other
    # AddressSanitizer and UBSan check on (.ci/run turns leak detection off for the whole
    # suite anyway); harmless in a build without sanitizers.
    asan = ":".join(v for v in (os.environ.get("ASAN_OPTIONS", ""), "detect_leaks=0") if v)
    full = mpirun_command(a.mpirun, a.np) + ["-x", "OMP_NUM_THREADS=1", "-x", "IM2GEMM_STDOUT_TTY=0",
                                              "-x", f"ASAN_OPTIONS={asan}"] + cmd
    print("running:", " ".join(full), flush=True)
    t0 = time.monotonic()
    try:
        p = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=a.within + 30, env=dict(os.environ, OMP_NUM_THREADS="1"))
        out, code = p.stdout, p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(out)
        print(f"FAIL: still running after {a.within + 30:.0f} s (a hang)")
        return 1
    took = time.monotonic() - t0
    print(out)
    ok = True
    if a.expect_fail and code == 0:
        print("FAIL: exit status 0, expected a failure")
        ok = False
    if not a.expect_fail and code != 0:
        print(f"FAIL: exit status {code}")
        ok = False
    for text in a.expect:
        if text not in out:
            print(f"FAIL: the output lacks {text!r}")
            ok = False
    if took > a.within:
        print(f"FAIL: took {took:.1f} s, more than {a.within:.0f} s")
        ok = False
    print(f"exit status {code} after {took:.1f} s: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
