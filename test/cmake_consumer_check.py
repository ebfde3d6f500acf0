#!/usr/bin/env python3
"""The CMake package end to end: installs the meson build into a temporary prefix, configures,
builds and runs examples/cmake against it with find_package(im2gemm); then copies the prefix
elsewhere, deletes the original, and does the same again from the copy (relocatable).

  cmake_consumer_check.py --meson MESON --build BUILD_DIR --example EXAMPLE_DIR [--cmake CMAKE]

Exit 77 (meson's "skipped") with a message when cmake is not installed."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile


def run(cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if r.returncode != 0:
        print(r.stdout)
        sys.exit(f"cmake_consumer_check: failed ({r.returncode}): {' '.join(cmd)}")
    return r.stdout


def consume(cmake, example, prefix, work, label):
    """Configures, builds and runs the example against the package under prefix."""
    build = os.path.join(work, "build-" + label)
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    run([cmake, "-S", example, "-B", build, *gen, "-DCMAKE_BUILD_TYPE=Release",
         "-DCMAKE_PREFIX_PATH=" + prefix, "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF",
         "-DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF"])
    with open(os.path.join(build, "CMakeCache.txt")) as f:
        found = [l.split("=", 1)[1].strip() for l in f if l.startswith("im2gemm_DIR:")]
    if not found or not os.path.realpath(found[0]).startswith(os.path.realpath(prefix) + os.sep):
        sys.exit(f"cmake_consumer_check: {label}: im2gemm_DIR is {found}, not under {prefix}")
    print(f"{label}: im2gemm_DIR = {found[0]}")
    run([cmake, "--build", build])
    exe = os.path.join(build, "conv_example")
    print(run([exe]), end="")
    # The core library carries OpenBLAS and OpenMP, never zlib.
    dyn = run(["readelf", "-d", exe]) if shutil.which("readelf") else ""
    if "libz.so" in dyn:
        sys.exit(f"cmake_consumer_check: {label}: conv_example links zlib:\n{dyn}")
    idx = os.path.join(build, "idx_example")
    if os.path.exists(idx):
        print(run([idx]), end="")
    else:
        print(f"{label}: im2gemm::im2gemm_idx not installed (no zlib at build time): idx_example not built")
    if os.path.exists(os.path.join(build, "mpi_example")):
        print(f"{label}: mpi_example built against im2gemm::im2gemm_mpi (not run: it may need mpirun)")
    else:
        print(f"{label}: im2gemm::im2gemm_mpi not installed (no MPI at build time): mpi_example not built")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meson", required=True)
    ap.add_argument("--build", required=True)
    ap.add_argument("--example", required=True)
    ap.add_argument("--cmake", default=shutil.which("cmake"))
    a = ap.parse_args()
    if not a.cmake or not os.path.exists(a.cmake):
        print("SKIP: cmake not found (apt-get install cmake, or scripts/setup): "
              "the CMake package is not tested")
        return 77
    opts = json.loads(run([a.meson, "introspect", a.build, "--buildoptions"]))
    prefix = next(o["value"] for o in opts if o["name"] == "prefix")
    with tempfile.TemporaryDirectory(prefix="im2gemm_cmake_") as work:
        stage = os.path.join(work, "stage")
        run([a.meson, "install", "-C", a.build, "--no-rebuild", "--quiet", "--destdir", stage])
        root = stage + prefix
        consume(a.cmake, a.example, root, work, "installed")
        # Relocated: the prefix copied elsewhere and the original removed.
        moved = os.path.join(work, "elsewhere", "prefix")
        shutil.copytree(root, moved, symlinks=True)
        shutil.rmtree(stage)
        for d, _, files in os.walk(moved):
            for n in files:
                if n.endswith(".cmake"):
                    with open(os.path.join(d, n)) as f:
                        if stage in f.read():
                            sys.exit(f"cmake_consumer_check: {n} names the install path {stage}")
        consume(a.cmake, a.example, moved, work, "relocated")
    print("cmake_consumer_check: passed (installed prefix and a copy of it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
