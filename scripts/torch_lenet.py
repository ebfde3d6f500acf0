#!/usr/bin/python3
"""The demo's network and settings in PyTorch 1.13, for the side-by-side comparison.

LeNet on Fashion-MNIST: conv 5x5 20 ReLU -> maxpool 2x2 -> conv 5x5 50 ReLU -> maxpool 2x2
-> dense 500 ReLU -> dense 10 -> softmax cross-entropy; minibatch 64, SGD momentum 0.9,
lr 0.01, inputs normalised by the training set's mean and standard deviation. Reads the same
gzipped IDX files as examples/train_fashion_mnist. The whole data set is held in tensors and
minibatches are sliced from a shuffled index (no DataLoader), so the epoch time is the
network's. Prints per epoch: training time, images/s, test accuracy.

Run it under the benchmark lock on a shared machine:
    flock /tmp/im2gemm-bench.lock /usr/bin/python3 scripts/torch_lenet.py --epochs 3

Parity check against the demo, same initial weights and same minibatches in the same order:
    build-release/examples/train_fashion_mnist --epochs 0 --seed 1 --save /tmp/init.bin
    /usr/bin/python3 scripts/torch_lenet.py --init-from /tmp/init.bin --order im2gemm --seed 1
--order im2gemm reproduces the demo's shuffle (its xoshiro256** Rng, seeded with
seed ^ 0x5eed5eed5eed, a Fisher-Yates pass over 0..n-1 every epoch); --init-from reads an
im2gemm parameter file (version 1, see include/im2gemm/layers.hpp).
"""
import argparse
import gzip
import os
import struct
import sys
import time
import zlib

import torch
from torch import nn

INSTALL_HINT = ("the Fashion-MNIST files come with `apt-get install dataset-fashion-mnist` "
                "(under /usr/share/datasets/fashion-mnist/); or pass --data DIR")


def read_idx(path):
    """An unsigned-byte IDX file (gzipped) as a uint8 tensor of its dims."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        sys.exit(f"error: cannot read {path}: {e}; {INSTALL_HINT}")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        sys.exit(f"error: {path}: not an unsigned-byte IDX file; {INSTALL_HINT}")
    rank = data[3]
    dims = struct.unpack(">" + "I" * rank, data[4:4 + 4 * rank])
    n = 1
    for d in dims:
        n *= d
    payload = data[4 + 4 * rank:]
    if len(payload) != n:
        sys.exit(f"error: {path}: {len(payload)} data bytes, the header gives {n}; {INSTALL_HINT}")
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).reshape(dims)


M64 = (1 << 64) - 1


class Xoshiro256ss:
    """im2gemm::Rng (lib/layers/layer.cpp): xoshiro256**, state filled by splitmix64."""

    def __init__(self, seed):
        self.s = []
        x = seed & M64
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def _rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & M64

    def next(self):
        s = self.s
        result = (self._rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result

    def below(self, n):
        limit = (M64 // n) * n
        while True:
            v = self.next()
            if v < limit:
                return v % n


def im2gemm_order(rng, n):
    """The demo's epoch order: Fisher-Yates over 0..n-1 with rng.below."""
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return torch.tensor(order, dtype=torch.long)


def load_im2gemm_params(model, path):
    """Copies an im2gemm parameter file (version 1) into the model's parameters, in order."""
    with open(path, "rb") as f:
        b = f.read()
    if len(b) < 20 or b[:8] != b"I2GPARAM":
        sys.exit(f"error: {path}: not an im2gemm parameter file")
    version, count = struct.unpack_from("<II", b, 8)
    if version != 1 or struct.unpack_from("<I", b, len(b) - 4)[0] != zlib.crc32(b[:-4]):
        sys.exit(f"error: {path}: version {version} or checksum not as expected")
    params = list(model.parameters())
    if count != len(params):
        sys.exit(f"error: {path}: {count} tensors, the model has {len(params)}")
    pos, shapes = 16, []
    for _ in range(count):
        (rank,) = struct.unpack_from("<I", b, pos)
        shapes.append(struct.unpack_from("<" + "Q" * rank, b, pos + 4))
        pos += 4 + 8 * rank
    with torch.no_grad():
        for p, shape in zip(params, shapes):
            if tuple(p.shape) != tuple(shape):
                sys.exit(f"error: {path}: shape {shape} in the file, the model has {tuple(p.shape)}")
            n = p.numel()
            p.copy_(torch.frombuffer(bytearray(b[pos:pos + 4 * n]), dtype=torch.float32).reshape(shape))
            pos += 4 * n


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500), nn.ReLU(),
        nn.Linear(500, 10))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--limit", type=int, default=0, help="train on the first N images only")
    p.add_argument("--init-from", default="", help="initial parameters from an im2gemm parameter file")
    p.add_argument("--order", choices=["torch", "im2gemm"], default="torch",
                   help="minibatch order: torch.randperm, or the demo's shuffle for the same seed")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr = read_idx(os.path.join(a.data, "train-images-idx3-ubyte.gz")).float().div_(255)
    ytr = read_idx(os.path.join(a.data, "train-labels-idx1-ubyte.gz")).long()
    xte = read_idx(os.path.join(a.data, "t10k-images-idx3-ubyte.gz")).float().div_(255)
    yte = read_idx(os.path.join(a.data, "t10k-labels-idx1-ubyte.gz")).long()
    mean, sd = xtr.mean().item(), xtr.std(unbiased=False).item()
    xtr = ((xtr - mean) / sd).unsqueeze(1).contiguous()
    xte = ((xte - mean) / sd).unsqueeze(1).contiguous()
    if a.limit > 0:
        xtr, ytr = xtr[:a.limit], ytr[:a.limit]
    n = xtr.shape[0]

    model = lenet()
    if a.init_from:
        load_im2gemm_params(model, a.init_from)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(a.seed)
    order_rng = Xoshiro256ss(a.seed ^ 0x5EED5EED5EED)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads; LeNet on Fashion-MNIST, "
          f"{n} training images, minibatch {a.batch}, SGD lr {a.lr} momentum 0.9; "
          f"inputs (x/255 - {mean:.4f}) / {sd:.4f}; seed {a.seed}, order {a.order}"
          + (f", initial parameters from {a.init_from}" if a.init_from else ""), flush=True)
    times = []
    for epoch in range(1, a.epochs + 1):
        model.train()
        perm = im2gemm_order(order_rng, n) if a.order == "im2gemm" else torch.randperm(n, generator=gen)
        t0 = time.perf_counter()
        total = 0.0
        for b in range(0, n, a.batch):
            idx = perm[b:b + a.batch]
            x, y = xtr[idx], ytr[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        t = time.perf_counter() - t0
        times.append(t)
        model.eval()
        correct = 0
        with torch.no_grad():
            for b in range(0, xte.shape[0], 500):
                correct += (model(xte[b:b + 500]).argmax(1) == yte[b:b + 500]).sum().item()
        acc = correct / xte.shape[0]
        print(f"epoch {epoch}: train loss {total / n:.4f}, {t:.2f} s ({n / t:.0f} img/s); "
              f"test accuracy {acc:.4f}", flush=True)
    if times:
        print(f"final: {a.epochs} epochs, test accuracy {acc:.4f}, mean epoch {sum(times) / len(times):.2f} s")


if __name__ == "__main__":
    main()
