"""What DP-SGD costs a local training step: fedsilo's `train_local_dp` in both of its clipping
modes against its plain `train_local`, side by side in one run, for an MLP of the kind the example
federation can use, for its logistic model and for a small CNN.

The modes: "hooks" is Opacus's GradSampleModule + DPOptimizer (every row's gradient materialised,
then clipped and summed); "ghost" is Opacus's fast gradient clipping with ghost norms
(GradSampleModuleFastGradientClipping + DPOptimizerFastGradientClipping: a first backward pass
for the per-row gradient norms, for linear layers without per-row gradients, and a second one on
the clip-weighted loss). `clipping="auto"` picks ghost when every trainable layer has a ghost norm
sampler (linear layers) and the hooks mode would materialise at least 2^19 per-row gradient
entries (expected batch × trainable parameters), else hooks (`fl_core.dp.dpsgd.clipping_mode`);
the table says what it picks for each model.

All sides run the same number of steps on the same data with the same expected batch size
(DP-SGD's batches are Poisson samples of that expected size; the plain side's are fixed-size
slices of a permutation), on one thread, interleaved so that drifts hit all of them. A ratio is a
mode's step time / the plain step time.

Opacus's own reports put DP-SGD with hooks at roughly 2–3× a plain step on small CNNs
(Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch", 2021), and
ghost clipping close to non-private training in time and memory on large, linear-heavy models
(Opacus's fast gradient clipping tutorial; Bu et al., "Differentially Private Optimization on Large
Model at Small Cost", ICML 2023). Measured here (Opacus 1.6, one core, batch 256):

- small CNN (38K parameters): hooks ≈ 2.2× a plain step, in line with the published 2–3×; ghost
  ≈ 2.7×, slower, because Opacus 1.6 has no ghost norm sampler for convolutions: it still
  materialises their per-row gradients and pays a second backward pass on top. "auto": hooks.
- MLP 30-64-32-1 (4K parameters): hooks ≈ 7–9×, ghost ≈ 4–5×, both far above the published
  figures because the plain step does almost nothing (~0.6 ms) and Opacus's per-step work
  dominates; ghost clipping takes 40–50 % off. "auto": ghost.
- logistic on 30 features (31 parameters): hooks ≈ 2.3–2.8×, ghost ≈ 3.5–4×: per-row gradients this small
  cost less than ghost clipping's second backward pass. "auto": hooks.

Distributed DP's cost to a silo under secure aggregation: drawing its Skellam share (two Poisson
draws per coordinate, `SkellamShares.sample`) and adding it to the quantised update (`add_share`),
each against the client's masking for n = 10, 50, 100 silos (`client_masking` of
benchmarks/secagg.py: mask-key derivation plus AES-CTR keystream additions), at d = 1e6 (1e5 with
--quick). The draw does not depend on the round's messages, so a silo makes it when it finishes
training; the masked phase pays only the addition.

    python benchmarks/dp_overhead.py            # 5 repeats of 32 steps per model and mode
    python benchmarks/dp_overhead.py --quick    # 3 repeats of 8 steps

Last line: JSON with `dp_step_ratio_mlp`, `dp_step_ratio_cnn` and `dp_step_ratio_logistic` (the
ratio of the mode "auto" picks for that model), `auto_clipping_<model>` (that mode),
`hooks_step_ratio_<model>` and `ghost_step_ratio_<model>` (each mode's ratio), and the step times
in ms (`plain_step_ms_<model>`, `hooks_step_ms_<model>`, `ghost_step_ms_<model>`); for distributed
noise `noise_add_ratio_to_masking_<n>` (what the masked phase pays) and
`noise_draw_ratio_to_masking_<n>` (the draw, made after training), with the times in ms.
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

from fl_core.dp.dpsgd import DPSGDSpec, clipping_mode, noise_generator, train_local_dp  # noqa: E402
from fl_core.models import ModelSpec, build_model  # noqa: E402
from fl_core.training import TrainSpec, train_local  # noqa: E402

BATCH = 256
MODELS = ("mlp", "logistic", "cnn")
MODES = ("hooks", "ghost")


def small_cnn(seed: int) -> nn.Module:
    """Two conv blocks and a linear head for 1×28×28 inputs (~38K parameters)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 16), nn.ReLU(), nn.Linear(16, 1),
    )


def case(name: str, steps: int):
    rng = np.random.default_rng(0)
    n = BATCH * 8
    if name == "cnn":
        x = rng.normal(size=(n, 1, 28, 28)).astype(np.float32)
        model = lambda: small_cnn(1)  # noqa: E731
    else:
        x = rng.normal(size=(n, 30)).astype(np.float32)
        spec = ModelSpec(kind="mlp", hidden=(64, 32)) if name == "mlp" else ModelSpec(kind="logistic")
        model = lambda: build_model(spec, 30, seed=1)  # noqa: E731
    y = (rng.random(n) < 0.5).astype(np.float32)
    return x, y, model, TrainSpec(local_steps=steps, batch_size=BATCH, lr=0.05)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, steps: int, repeats: int) -> dict:
    x, y, model, spec = case(name, steps)
    dps = {mode: DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0, clipping=mode) for mode in MODES}
    models = {side: model() for side in ("plain", *MODES)}
    runs = {"plain": lambda r: train_local(models["plain"], x, y, spec, seed=r)}
    for mode in MODES:
        runs[mode] = lambda r, mode=mode: train_local_dp(models[mode], x, y, spec, dps[mode], seed=r,
                                                         noise=noise_generator())
    for run in runs.values():  # warm-up every path
        run(0)
    times: dict[str, list[float]] = {side: [] for side in runs}
    for r in range(repeats):  # interleave, so that drifts hit every side
        for side, run in runs.items():
            times[side].append(timed(lambda run=run, r=r: run(r)) / steps)
    row = {f"{side}_ms": 1e3 * statistics.median(t) for side, t in times.items()}
    row.update(params=sum(p.numel() for p in model().parameters()), auto=clipping_mode(model(), batch_size=BATCH))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats of 8 steps")
    args = parser.parse_args()
    steps, repeats = (8, 3) if args.quick else (32, 5)
    torch.set_num_threads(1)
    began = time.perf_counter()
    print(f"DP-SGD step vs plain step, batch {BATCH} (expected), one thread, {repeats} x {steps} steps")
    print(f"{'model':>8} {'params':>7} {'plain ms':>9} {'hooks ms':>9} {'ratio':>6} {'ghost ms':>9} {'ratio':>6}"
          f" {'auto':>6} {'ratio':>6}")
    figures = {}
    for name in MODELS:
        row = measure(name, steps, repeats)
        ratios = {mode: row[f"{mode}_ms"] / row["plain_ms"] for mode in MODES}
        print(f"{name:>8} {row['params']:>7} {row['plain_ms']:>9.2f} {row['hooks_ms']:>9.2f} {ratios['hooks']:>6.2f}"
              f" {row['ghost_ms']:>9.2f} {ratios['ghost']:>6.2f} {row['auto']:>6} {ratios[row['auto']]:>6.2f}")
        figures[f"dp_step_ratio_{name}"] = round(ratios[row["auto"]], 2)
        figures[f"auto_clipping_{name}"] = row["auto"]
        for mode in MODES:
            figures[f"{mode}_step_ratio_{name}"] = round(ratios[mode], 2)
        for side in ("plain", *MODES):
            figures[f"{side}_step_ms_{name}"] = round(row[f"{side}_ms"], 3)
    print(f"Opacus's published overhead (Yousefpour et al. 2021): roughly 2–3× a plain step on small CNNs with "
          f"hooks; here the CNN takes {figures['dp_step_ratio_cnn']:.2f}× ({figures['auto_clipping_cnn']}), the MLP "
          f"{figures['dp_step_ratio_mlp']:.2f}× ({figures['auto_clipping_mlp']}: its plain step does almost nothing)")
    figures.update(distributed_noise(10**5 if args.quick else 10**6, repeats))
    figures.update(quick=args.quick, wall_seconds=round(time.perf_counter() - began, 1))
    print(json.dumps(figures))


def distributed_noise(d: int, repeats: int) -> dict:
    """A silo's Skellam share: draw and add, against its masking time for n silos."""
    from secagg import Limit, client_masking

    from fl_core.dp.distributed import SkellamShares, add_share, noise_rng
    from fl_core.secagg.quantize import Quantizer

    spec = SkellamShares(noise_multiplier=1.0, clip_norm=1.0, scale=Quantizer(bound=10.0, bits=24).scale, dimension=d,
                         threshold=3)
    rng = noise_rng()
    codes = np.random.default_rng(0).integers(0, 2**32, d + 1, dtype=np.uint64).astype(np.uint32)
    share = spec.sample(rng)
    draw = statistics.median(timed(lambda: spec.sample(rng)) for _ in range(max(repeats, 5)))
    add = statistics.median(timed(lambda: add_share(codes, share)) for _ in range(max(repeats, 20)))
    print(f"\ndistributed DP noise share, d = {d:.0e}: draw {draw * 1e3:.1f} ms (after training), "
          f"add {add * 1e3:.2f} ms (in the masked phase)")
    print(f"{'silos':>6} {'masking ms':>11} {'add/mask':>9} {'draw/mask':>10}")
    out = {"noise_draw_ms": round(draw * 1e3, 2), "noise_add_ms": round(add * 1e3, 3), "noise_d": d}
    limit = Limit()
    for n in (10, 50, 100):
        masking, _ = client_masking(n, d, repeats, limit)
        print(f"{n:>6} {masking * 1e3:>11.1f} {add / masking:>9.3f} {draw / masking:>10.2f}")
        out[f"masking_ms_{n}"] = round(masking * 1e3, 2)
        out[f"noise_add_ratio_to_masking_{n}"] = round(add / masking, 3)
        out[f"noise_draw_ratio_to_masking_{n}"] = round(draw / masking, 2)
    return out


if __name__ == "__main__":
    main()
