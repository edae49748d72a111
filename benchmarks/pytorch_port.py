"""The baseline: davidtvs/PyTorch-ENet timed the way `enet benchmark` times our ENet.

DESIGN.md quotes this port at about 4.2-4.5 training images/s (batch 4, 360x480) and 48-67 ms
per image at batch 1 on this machine type. Machines here are shared and noisy, so our
targets are ratios against this port measured in the same run (benchmarks/versus_pytorch.py
runs both). The port's code is not part of this repository: pass the path of its
`models/enet.py` from a checkout (https://github.com/davidtvs/PyTorch-ENet).

Training step as the port's own train.py: Adam(lr 5e-4, weight_decay 2e-4),
CrossEntropyLoss with class weights, 11 classes + void ignored, dropout on. Left out: the
port's per-step `metric.add` (argmax + NumPy bincount, about 26 ms per batch here), while our
step does compute its confusion matrix, so the ratios are slightly in the port's favour.
Run with a Python that has torch: python benchmarks/pytorch_port.py --port PATH [--json]
"""

import argparse
import importlib.util
import json
import statistics
import time


def load_port(path: str):
    spec = importlib.util.spec_from_file_location("pytorch_enet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ENet


def train_rates(enet_cls, size, batch: int, steps: int, warmup: int) -> list:
    import torch

    torch.manual_seed(0)
    model = enet_cls(11).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=2e-4)
    criterion = torch.nn.CrossEntropyLoss(weight=torch.rand(11) + 0.5, ignore_index=11)
    images = torch.rand(batch, 3, *size)
    labels = torch.randint(0, 12, (batch, *size))
    rates = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        loss.item()
        if i >= warmup:
            rates.append(batch / (time.perf_counter() - start))
    return rates


def infer_ms(enet_cls, size, runs: int, warmup: int) -> list:
    import torch

    model = enet_cls(11).eval()
    image = torch.rand(1, 3, *size)
    out = []
    with torch.no_grad():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(image).argmax(1)
            if i >= warmup:
                out.append(1000 * (time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", required=True, help="path of PyTorch-ENet's models/enet.py")
    parser.add_argument("--size", default="360x480")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    enet_cls = load_port(args.port)
    train = train_rates(enet_cls, size, args.batch, args.steps, warmup=2)
    infer = infer_ms(enet_cls, size, args.runs, warmup=3)
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_images_per_sec": statistics.median(train),
        "train_spread": [min(train), max(train)],
        "infer_ms": statistics.median(infer),
        "infer_spread": [min(infer), max(infer)],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"PyTorch-ENet (torch {result['torch']}, {result['threads']} threads) {args.size}: "
            f"train batch {args.batch} {result['train_images_per_sec']:.2f} images/s "
            f"(range {min(train):.2f}-{max(train):.2f}); inference batch 1 "
            f"{result['infer_ms']:.1f} ms/image (range {min(infer):.1f}-{max(infer):.1f})"
        )


if __name__ == "__main__":
    main()
