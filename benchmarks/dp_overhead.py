"""What DP-SGD costs a local training step: fedsilo's `train_local_dp` (Opacus per-sample gradients,
clipping and noise) against its plain `train_local`, side by side in one run, for an MLP of the
kind the example federation can use and for a small CNN.

Both sides run the same number of steps on the same data with the same expected batch size
(DP-SGD's batches are Poisson samples of that expected size; the plain side's are fixed-size
slices of a permutation), on one thread. The ratio is DP step time / plain step time. Opacus's own
reports put DP-SGD at roughly 2–3× a plain step on small CNNs with hooks and ghost clipping
(Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch", 2021), and
far more on tiny MLPs, where the plain step does almost nothing.

    python benchmarks/dp_overhead.py            # 5 repeats of 32 steps per model
    python benchmarks/dp_overhead.py --quick    # 3 repeats of 8 steps

Last line: JSON with `dp_step_ratio_mlp` and `dp_step_ratio_cnn` (plus the step times).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fl_core.dp.dpsgd import DPSGDSpec, noise_generator, train_local_dp  # noqa: E402
from fl_core.models import ModelSpec, build_model  # noqa: E402
from fl_core.training import TrainSpec, train_local  # noqa: E402

BATCH = 256


def small_cnn(seed: int) -> nn.Module:
    """Two conv blocks and a linear head for 1×28×28 inputs (~26K parameters)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 16), nn.ReLU(), nn.Linear(16, 1),
    )


def case(name: str, steps: int):
    rng = np.random.default_rng(0)
    n = BATCH * 8
    if name == "mlp":
        x = rng.normal(size=(n, 30)).astype(np.float32)
        model = lambda: build_model(ModelSpec(kind="mlp", hidden=(64, 32)), 30, seed=1)  # noqa: E731
    else:
        x = rng.normal(size=(n, 1, 28, 28)).astype(np.float32)
        model = lambda: small_cnn(1)  # noqa: E731
    y = (rng.random(n) < 0.5).astype(np.float32)
    return x, y, model, TrainSpec(local_steps=steps, batch_size=BATCH, lr=0.05)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, steps: int, repeats: int) -> dict:
    x, y, model, spec = case(name, steps)
    dp = DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0)
    plain_model, dp_model = model(), model()
    train_local(plain_model, x, y, spec, seed=0)  # warm-up both paths
    train_local_dp(dp_model, x, y, spec, dp, seed=0, noise=noise_generator())
    plain, private = [], []
    for r in range(repeats):  # alternate, so that drifts hit both
        plain.append(timed(lambda r=r: train_local(plain_model, x, y, spec, seed=r)) / steps)
        private.append(timed(lambda r=r: train_local_dp(dp_model, x, y, spec, dp, seed=r, noise=noise_generator())) / steps)
    n_params = sum(p.numel() for p in model().parameters())
    return {"plain_ms": 1e3 * statistics.median(plain), "dp_ms": 1e3 * statistics.median(private), "params": n_params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats of 8 steps")
    args = parser.parse_args()
    steps, repeats = (8, 3) if args.quick else (32, 5)
    torch.set_num_threads(1)
    began = time.perf_counter()
    print(f"DP-SGD step vs plain step, batch {BATCH} (expected), one thread, {repeats} x {steps} steps")
    print(f"{'model':>6} {'params':>8} {'plain ms':>9} {'DP ms':>8} {'ratio':>6}")
    figures = {}
    for name in ("mlp", "cnn"):
        row = measure(name, steps, repeats)
        ratio = row["dp_ms"] / row["plain_ms"]
        print(f"{name:>6} {row['params']:>8} {row['plain_ms']:>9.2f} {row['dp_ms']:>8.2f} {ratio:>6.2f}")
        figures[f"dp_step_ratio_{name}"] = round(ratio, 2)
        figures[f"plain_step_ms_{name}"] = round(row["plain_ms"], 3)
        figures[f"dp_step_ms_{name}"] = round(row["dp_ms"], 3)
    figures.update(quick=args.quick, wall_seconds=round(time.perf_counter() - began, 1))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
