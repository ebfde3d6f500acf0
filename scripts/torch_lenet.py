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
"""
import argparse
import gzip
import os
import struct
import sys
import time

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
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(a.seed)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads; LeNet on Fashion-MNIST, "
          f"{n} training images, minibatch {a.batch}, SGD lr {a.lr} momentum 0.9; "
          f"inputs (x/255 - {mean:.4f}) / {sd:.4f}", flush=True)
    times = []
    for epoch in range(1, a.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
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
