"""DP utility benchmark: holdout accuracy against ε for record-level and silo-level differential privacy.

Question: what does differential privacy cost in accuracy on the example federation (the four
hospitals of UCI Heart Disease, logistic model, 20 rounds), at the two levels fedsilo offers, and
how many silos does silo-level DP need before it becomes usable?

Two levels, each trained with federated averaging for the config's ``training.rounds`` rounds:

- record level (each hospital protects its patients): every silo trains locally with DP-SGD
  (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) through
  ``fl_core.dp.dpsgd.train_local_dp`` with per-sample clipping C = 1.0. For a target ε per silo at
  δ = 1e-5 over all rounds, σ is what ``RecordPrivacy.dpsgd`` picks (``noise_for_epsilon`` at the
  silo's sample rate q = batch / n for steps-per-round x rounds steps), so it differs by silo size.
  The server averages the updates weighted by sample count, as the pipeline does.
- silo level (each hospital's participation is protected): DP-FedAvg (McMahan, Ramage, Talwar &
  Zhang, "Learning Differentially Private Recurrent Language Models", ICLR 2018) with every silo
  in every round (q = 1): silos train without DP, each update is clipped to L2 norm C, weights are
  uniform (1 per silo), Gaussian noise of std z·C is added to the sum and it is divided by the
  number of silos (``fl_core.dp.fedavg.dp_fedavg(C, z, denominator=len(silos))``), with
  z = ``noise_for_epsilon(ε, δ, 1.0, rounds)``. C is the median round-1 update norm of a
  non-private probe: a clip near the median of unclipped update norms is the usual starting point
  (McMahan et al.; Andrew, Thakkar, McMahan & Ramaswamy, "Differentially Private Learning with
  Adaptive Clipping", NeurIPS 2021, track that quantile during training). The probe is treated
  as a public hyperparameter choice and is not charged to the budget.

ε = ∞ rows keep each level's machinery without noise (record: Poisson batches and per-sample
clipping with σ = 0; silo: clipping and uniform weights with z = 0), which separates the cost of
clipping from the cost of noise. The non-private reference (horizontal line in the plot) is plain
sample-weighted FedAvg, ``fl_core.simulation.fedavg_rounds``, the pipeline's arithmetic.

Besides the heart federation, silo-level DP runs on a synthetic federation of many silos
(``infra.synthetic.write_synthetic_federation``: a shared logistic ground truth with per-silo
covariate shift, 200 rows and 8 features per silo, 30 % holdout; one local epoch of SGD at lr 0.5,
batch 32, per round) with the same rounds and silo-level ε grid: the noise on the mean update is
z·C / N, so it shrinks with the number of silos N. Record-level DP runs there too, on a shorter ε
grid (0.5 and 2: a hundred silos running Opacus every round is the slowest part of the run).

Seeding: every ML choice derives from the root seed ``config.seed + benchmark seed`` through
``fl_core.seeding`` exactly as ``fl_core.simulation`` does (initial weights ``("init",)``, a silo's
batches in round r ``("train", r, silo)``). The DP noise generators are seeded per run from the
root seed as well (``("benchmark-dp-noise", level)``), so the benchmark is reproducible; the
production silos and coordinator draw their noise seeds from ``os.urandom`` instead. Results are
the accuracy and ROC AUC of the final global model on the pooled holdout (every silo's holdout),
mean ± sd over seeds; the spread reflects initialisation, batching and DP noise, not the data
split, which is fixed.

Run from the repository root:

    python benchmarks/dp_utility.py            # full: 5 seeds (synthetic: 3), the config's rounds, full ε grids
    python benchmarks/dp_utility.py --quick    # smoke run: 2 seeds, 5 rounds, 50 synthetic silos,
                                               # 2 ε values per level (1 for record level on synthetic)

Output: a table per federation and level, a plot of accuracy against ε
(``benchmarks/results/dp_utility.png``; ``dp_utility_quick.png`` for ``--quick``), progress lines
on stderr, and as the last line one JSON object with the headline accuracies by ε.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _path in (REPO_ROOT, BENCH_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from heart import DEFAULT_CONFIG, load_silos, mean_sd, pooled_holdout, r4  # noqa: E402

from fl_core.aggregation import FedAvg  # noqa: E402
from fl_core.dp.accounting import GaussianEvent, epsilon, noise_for_epsilon  # noqa: E402
from fl_core.dp.dpsgd import DPSGDSpec, round_event, train_local_dp  # noqa: E402
from fl_core.dp.fedavg import capped_weights, dp_fedavg  # noqa: E402
from fl_core.dp.policy import RecordPrivacy  # noqa: E402
from fl_core.evaluation import Metrics, evaluate  # noqa: E402
from fl_core.models import build_model  # noqa: E402
from fl_core.params import flatten, load_flat_inplace  # noqa: E402
from fl_core.seeding import derive_seed, numpy_rng, torch_rng  # noqa: E402
from fl_core.simulation import SiloArrays, fedavg_rounds, initial_vector  # noqa: E402
from fl_core.training import TrainSpec, train_local  # noqa: E402
from infra.config import FederationConfig, load_config  # noqa: E402
from infra.silo_data import SiloData  # noqa: E402
from infra.synthetic import write_synthetic_federation  # noqa: E402

DELTA = 1e-5
MAX_GRAD_NORM = 1.0  # DP-SGD's per-sample clip, as in the example config
RECORD_EPS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
SILO_EPS = (1.0, 4.0, 8.0, 16.0, 64.0, 256.0)
SYNTHETIC_RECORD_EPS = (0.5, 2.0)  # 100 silos of DP-SGD per round: the slowest part of the run
QUICK_RECORD_EPS = (1.0, 8.0)
QUICK_SILO_EPS = (4.0, 64.0)
FULL_SEEDS = 5
SYNTHETIC_SEEDS = 3  # its pooled holdout is 20x the heart's; 100 silos of DP-SGD per round are the slow part
QUICK_SEEDS = 2
QUICK_ROUNDS = 5
SYNTHETIC_SILOS = 100
QUICK_SYNTHETIC_SILOS = 50
SYNTHETIC_ROWS = 200
SYNTHETIC_FEATURES = 8
# infra.synthetic's training with lr 0.5 instead of 0.1: the contract maps features from [-5, 5] to [-1, 1], and at
# lr 0.1 twenty one-epoch rounds stop well short of the ground truth (non-private 0.82 against 0.88 at lr 0.5).
SYNTHETIC_TRAINING = {"local_epochs": 1, "optimizer": "sgd", "lr": 0.5, "batch_size": 32}
RESULTS = BENCH_DIR / "results"

LocalTrain = Callable[[torch.nn.Module, str, SiloData, int], int]  # trains in place, returns n_samples
Aggregate = Callable[[np.ndarray, list[np.ndarray], list[int]], np.ndarray]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Federation:
    name: str
    config: FederationConfig
    silos: dict[str, SiloData]
    spec: TrainSpec  # the config's training, with rounds cut for --quick

    @property
    def server(self) -> FedAvg:
        return self.config.aggregation.fedavg()

    @property
    def n_inputs(self) -> int:
        return next(iter(self.silos.values())).x_train.shape[1]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One configuration's results over seeds."""

    eps: float  # target ε (math.inf: the level's machinery without noise)
    noise: str  # the noise multiplier(s), formatted
    eps_spent: float  # what the accountant says the run spends (max over silos at record level)
    noise_std: float | None  # silo level: noise std per coordinate of the mean update, z·C / N
    accuracy: tuple[float, float]
    roc_auc: tuple[float, float]


# -- federations -----------------------------------------------------------------------------------
def heart_federation(config_path: Path, rounds: int | None) -> Federation:
    config = load_config(config_path)
    spec = config.training if rounds is None else dataclasses.replace(config.training, rounds=rounds)
    return Federation(name=config.federation, config=config, silos=load_silos(config), spec=spec)


def synthetic_federation(folder: Path, n_silos: int, rounds: int, seed: int) -> Federation:
    path = write_synthetic_federation(
        folder, n_silos, rows=SYNTHETIC_ROWS, n_features=SYNTHETIC_FEATURES, seed=seed, federation=f"synthetic{n_silos}",
        overrides={"training": {"rounds": rounds, **SYNTHETIC_TRAINING}},
    )
    config = load_config(path)
    return Federation(name=config.federation, config=config, silos=load_silos(config), spec=config.training)


# -- federated training ----------------------------------------------------------------------------
def federate(fed: Federation, root: int, local: LocalTrain, aggregate: Aggregate) -> np.ndarray:
    """``fed.spec.rounds`` rounds over every silo in sorted id order, seeded like
    ``fl_core.simulation.fedavg_rounds``; `local` trains a silo, `aggregate` makes the next global."""
    vector = initial_vector(fed.config.model, fed.n_inputs, root)
    model = build_model(fed.config.model, fed.n_inputs, seed=0)
    for r in range(1, fed.spec.rounds + 1):
        deltas, n_samples = [], []
        for silo in sorted(fed.silos):
            load_flat_inplace(model, vector)
            n_samples.append(local(model, silo, fed.silos[silo], derive_seed(root, "train", r, silo)))
            deltas.append(flatten(model) - vector)
        vector = aggregate(vector, deltas, n_samples)
    return vector


def record_specs(fed: Federation, eps: float) -> dict[str, DPSGDSpec]:
    """Each silo's DP-SGD settings for target `eps` over the run, as its privacy policy picks them."""
    if math.isinf(eps):
        return {s: DPSGDSpec(noise_multiplier=0.0, max_grad_norm=MAX_GRAD_NORM) for s in fed.silos}
    policy = RecordPrivacy(epsilon=eps, delta=DELTA, max_grad_norm=MAX_GRAD_NORM, target_epsilon=eps)
    return {s: policy.dpsgd(len(d.y_train), fed.spec) for s, d in fed.silos.items()}


def run_record(fed: Federation, root: int, specs: dict[str, DPSGDSpec]) -> np.ndarray:
    noise = torch_rng(derive_seed(root, "benchmark-dp-noise", "record"))

    def local(model: torch.nn.Module, silo: str, data: SiloData, seed: int) -> int:
        return train_local_dp(model, data.x_train, data.y_train, fed.spec, specs[silo], seed, noise=noise).n_samples

    server = fed.server
    return federate(fed, root, local, lambda v, deltas, ns: server.step(v, deltas, ns))


def silo_noise_multiplier(fed: Federation, eps: float) -> float:
    return 0.0 if math.isinf(eps) else noise_for_epsilon(eps, DELTA, 1.0, fed.spec.rounds)


def run_silo(fed: Federation, root: int, z: float, clip: float) -> np.ndarray:
    aggregator = dp_fedavg(clip_norm=clip, noise_multiplier=z, denominator=len(fed.silos),
                           rng=numpy_rng(derive_seed(root, "benchmark-dp-noise", "silo")))
    server = fed.server

    def local(model: torch.nn.Module, silo: str, data: SiloData, seed: int) -> int:
        return train_local(model, data.x_train, data.y_train, fed.spec, seed=seed).n_samples

    def aggregate(vector: np.ndarray, deltas: list[np.ndarray], n_samples: list[int]) -> np.ndarray:
        return server.apply(vector, aggregator(deltas, capped_weights(n_samples, None)))

    return federate(fed, root, local, aggregate)


def run_nonprivate(fed: Federation, root: int) -> np.ndarray:
    arrays = {s: SiloArrays(x_train=d.x_train, y_train=d.y_train) for s, d in fed.silos.items()}
    return fedavg_rounds(arrays, fed.config.model, fed.spec, root, fed.spec.rounds, server=fed.server)


def probe_clip(fed: Federation, root: int) -> tuple[float, list[float]]:
    """The median L2 norm of the silos' non-private round-1 updates (and all of them)."""
    start = initial_vector(fed.config.model, fed.n_inputs, root)
    model = build_model(fed.config.model, fed.n_inputs, seed=0)
    norms = []
    for silo in sorted(fed.silos):
        data = fed.silos[silo]
        load_flat_inplace(model, start)
        train_local(model, data.x_train, data.y_train, fed.spec, seed=derive_seed(root, "train", 1, silo))
        norms.append(float(np.linalg.norm(flatten(model).astype(np.float64) - start)))
    return float(np.median(norms)), norms


# -- measuring -------------------------------------------------------------------------------------
class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.began = total, 0, time.perf_counter()

    def report(self, what: str, accuracy: tuple[float, float], seconds: float) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total}] {what}: accuracy {accuracy[0]:.3f} ± {accuracy[1]:.3f} "
              f"({seconds:.1f} s, {time.perf_counter() - self.began:.0f} s so far)", file=sys.stderr, flush=True)


def over_seeds(fed: Federation, seeds: Sequence[int], train: Callable[[int], np.ndarray]) -> tuple[tuple, tuple]:
    """(accuracy, ROC AUC) mean ± sd on the pooled holdout of the models `train(root)` returns."""
    x_pool, y_pool = pooled_holdout(fed.silos)
    model = build_model(fed.config.model, fed.n_inputs, seed=0)
    results: list[Metrics] = []
    for seed in seeds:
        load_flat_inplace(model, train(fed.config.seed + seed))
        results.append(evaluate(model, x_pool, y_pool))
    return mean_sd([m.accuracy for m in results]), mean_sd([m.roc_auc for m in results])


def span(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.3g}" if math.isclose(low, high, rel_tol=1e-9) else f"{low:.3g}–{high:.3g}"


def record_level(fed: Federation, grid: Sequence[float], seeds: Sequence[int], progress: Progress) -> list[Row]:
    rows = []
    for eps in [*grid, math.inf]:
        began = time.perf_counter()
        specs = record_specs(fed, eps)
        spent = max(epsilon([round_event(len(d.y_train), fed.spec, specs[s].noise_multiplier)] * fed.spec.rounds, DELTA)
                    for s, d in fed.silos.items())
        acc, auc = over_seeds(fed, seeds, lambda root, specs=specs: run_record(fed, root, specs))
        rows.append(Row(eps=eps, noise=span([d.noise_multiplier for d in specs.values()]), eps_spent=spent,
                        noise_std=None, accuracy=acc, roc_auc=auc))
        progress.report(f"{fed.name} record level ε={eps:g}", acc, time.perf_counter() - began)
    return rows


def silo_level(fed: Federation, grid: Sequence[float], seeds: Sequence[int], clip: float, progress: Progress) -> list[Row]:
    rows = []
    for eps in [*grid, math.inf]:
        began = time.perf_counter()
        z = silo_noise_multiplier(fed, eps)
        spent = epsilon([GaussianEvent(z, 1.0, fed.spec.rounds)], DELTA)
        acc, auc = over_seeds(fed, seeds, lambda root, z=z: run_silo(fed, root, z, clip))
        rows.append(Row(eps=eps, noise=f"{z:.3g}", eps_spent=spent, noise_std=z * clip / len(fed.silos),
                        accuracy=acc, roc_auc=auc))
        progress.report(f"{fed.name} silo level ε={eps:g}", acc, time.perf_counter() - began)
    return rows


def majority_accuracy(fed: Federation) -> float:
    _, y = pooled_holdout(fed.silos)
    return float(max(y.mean(), 1 - y.mean()))


# -- reporting -------------------------------------------------------------------------------------
def fmt(stat: tuple[float, float]) -> str:
    return "n/a" if math.isnan(stat[0]) else f"{stat[0]:.3f} ± {stat[1]:.3f}"


def print_rows(title: str, noise_header: str, rows: list[Row]) -> None:
    header = ["ε target", "ε spent", noise_header, *(["noise std / coord"] if rows[0].noise_std is not None else []),
              "accuracy", "roc auc"]
    cells = []
    for row in rows:
        target = "∞ (no noise)" if math.isinf(row.eps) else f"{row.eps:g}"
        spent = "∞" if math.isinf(row.eps_spent) else f"{row.eps_spent:.2f}"
        std = [] if row.noise_std is None else [f"{row.noise_std:.4f}"]
        cells.append([target, spent, row.noise, *std, fmt(row.accuracy), fmt(row.roc_auc)])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print(title)
    print("  " + "  ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for c in cells:
        print("  " + "  ".join(f"{v:>{w}}" for v, w in zip(c, widths)))


def by_eps(rows: list[Row], index: int = 0, field: str = "accuracy") -> dict[str, float | None]:
    return {("inf" if math.isinf(r.eps) else f"{r.eps:g}"): r4(getattr(r, field)[index]) for r in rows}


def plot(path: Path, panels: list[dict], quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.6), squeeze=False)
    colours = {"record": "tab:blue", "silo": "tab:red"}
    labels = {"record": "record level (DP-SGD per silo)", "silo": "silo level (DP-FedAvg)"}
    for ax, panel in zip(axes[0], panels):
        for level, rows in panel["levels"].items():
            finite = [r for r in rows if math.isfinite(r.eps)]
            ax.errorbar([r.eps for r in finite], [r.accuracy[0] for r in finite], yerr=[r.accuracy[1] for r in finite],
                        marker="o", capsize=3, color=colours[level], label=labels[level])
            no_noise = [r for r in rows if math.isinf(r.eps)]
            if no_noise:
                ax.axhline(no_noise[0].accuracy[0], color=colours[level], linestyle="--", linewidth=1,
                           label=f"{level} level, no noise (ε = ∞)")
        ax.axhline(panel["nonprivate"][0], color="black", linewidth=1.2, label="non-private FedAvg")
        ax.axhline(panel["majority"], color="grey", linestyle=":", linewidth=1, label="majority class")
        ax.set_xscale("log")
        ax.set_xlabel(f"ε (δ = {DELTA:g}, {panel['rounds']} rounds)")
        ax.set_ylabel("pooled holdout accuracy")
        ax.set_title(panel["title"])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Accuracy vs ε" + (" (quick run)" if quick else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="federation config (default: the heart example)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SEEDS} seeds, at most {QUICK_ROUNDS} rounds, 2 ε values per level, "
                        f"{QUICK_SYNTHETIC_SILOS} synthetic silos")
    parser.add_argument("--synthetic-silos", type=int, default=None,
                        help=f"silos in the synthetic federation (default {SYNTHETIC_SILOS}, {QUICK_SYNTHETIC_SILOS} with --quick)")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    torch.set_num_threads(1)
    heart = heart_federation(args.config, min(QUICK_ROUNDS, load_config(args.config).training.rounds) if args.quick else None)
    rounds = heart.spec.rounds
    heart_seeds = list(range(QUICK_SEEDS if args.quick else FULL_SEEDS))
    synthetic_seeds = list(range(QUICK_SEEDS if args.quick else SYNTHETIC_SEEDS))
    record_grid = QUICK_RECORD_EPS if args.quick else RECORD_EPS
    silo_grid = QUICK_SILO_EPS if args.quick else SILO_EPS
    synthetic_record_grid = QUICK_RECORD_EPS[:1] if args.quick else SYNTHETIC_RECORD_EPS
    n_configs = 2 * (1 + len(silo_grid) + 1) + len(record_grid) + 1 + len(synthetic_record_grid) + 1
    progress = Progress(n_configs)

    n_synthetic = args.synthetic_silos or (QUICK_SYNTHETIC_SILOS if args.quick else SYNTHETIC_SILOS)
    with tempfile.TemporaryDirectory(prefix="dp-utility-") as folder:
        synthetic = synthetic_federation(Path(folder), n_synthetic, rounds, heart.config.seed)

    label = "QUICK RUN (smoke test, not for quoting): " if args.quick else ""
    print(f"{label}DP utility benchmark: model {heart.config.model.kind}, {rounds} rounds, δ = {DELTA:g}, "
          f"seeds {heart_seeds} for {heart.name}, {synthetic_seeds} for {synthetic.name} (root seed = config seed + seed); "
          "metrics on the pooled holdout, mean ± sd over seeds")
    results: dict[str, dict] = {}
    for fed, grid, seeds in ((heart, record_grid, heart_seeds), (synthetic, synthetic_record_grid, synthetic_seeds)):
        t = fed.spec
        clip, norms = probe_clip(fed, fed.config.seed + seeds[0])
        print(f"\n== {fed.name}: {len(fed.silos)} silos, {sum(len(d.y_train) for d in fed.silos.values())} training / "
              f"{sum(len(d.y_holdout) for d in fed.silos.values())} holdout rows; local {t.local_epochs} epoch(s), "
              f"{t.optimizer} lr={t.lr} momentum={t.momentum} batch={t.batch_size}")
        print(f"   silo-level clip C = {clip:.4f}: median round-1 update norm of a non-private probe "
              f"(norms {min(norms):.3f}–{max(norms):.3f})")
        began_fed = time.perf_counter()
        nonprivate = over_seeds(fed, seeds, lambda root, fed=fed: run_nonprivate(fed, root))
        progress.report(f"{fed.name} non-private FedAvg", nonprivate[0], time.perf_counter() - began_fed)
        record = record_level(fed, grid, seeds, progress)
        silo = silo_level(fed, silo_grid, seeds, clip, progress)
        majority = majority_accuracy(fed)
        print(f"   non-private FedAvg (sample-weighted): accuracy {fmt(nonprivate[0])}, roc auc {fmt(nonprivate[1])}; "
              f"majority class {majority:.3f}")
        print_rows(f"-- {fed.name} · record level: DP-SGD in every silo, per-sample clip {MAX_GRAD_NORM:g}, "
                   "sample-weighted FedAvg", "σ (range over silos)", record)
        print_rows(f"-- {fed.name} · silo level: DP-FedAvg, q = 1, clip C = {clip:.4f}, uniform weights, "
                   f"noise z·C on the sum / {len(fed.silos)}", "z", silo)
        results[fed.name] = {"fed": fed, "clip": clip, "nonprivate": nonprivate, "record": record, "silo": silo,
                             "majority": majority, "seeds": seeds}

    h, s = results[heart.name], results[synthetic.name]
    figure = RESULTS / ("dp_utility_quick.png" if args.quick else "dp_utility.png")
    plot(figure, [
        {"title": f"{heart.name}: {len(heart.silos)} hospitals", "levels": {"record": h["record"], "silo": h["silo"]},
         "nonprivate": h["nonprivate"][0], "majority": h["majority"], "rounds": rounds},
        {"title": f"synthetic: {len(synthetic.silos)} silos", "levels": {"record": s["record"], "silo": s["silo"]},
         "nonprivate": s["nonprivate"][0], "majority": s["majority"], "rounds": rounds},
    ], args.quick)

    def best_eps(rows: list[Row], nonprivate: float, within: float = 0.02) -> float | None:
        """The smallest ε on the grid whose mean accuracy is within `within` of non-private."""
        ok = [r.eps for r in rows if math.isfinite(r.eps) and r.accuracy[0] >= nonprivate - within]
        return min(ok) if ok else None

    print()
    for name, res in results.items():
        base = res["nonprivate"][0][0]
        for level in ("record", "silo"):
            eps = best_eps(res[level], base)
            reach = f"ε = {eps:g} is the smallest ε on the grid that comes" if eps is not None else "no ε on the grid comes"
            no_noise = next(r.accuracy[0] for r in res[level] if math.isinf(r.eps))
            print(f"reading: {name} {level} level: {reach} within 0.02 of non-private accuracy ({base:.3f}; "
                  f"this level without noise: {no_noise:.3f})")
    print(f"plot: {figure.relative_to(REPO_ROOT)}")

    headline = {
        "record_level_heart": by_eps(h["record"]),
        "silo_level_heart": by_eps(h["silo"]),
        "record_level_synthetic": by_eps(s["record"]),
        "silo_level_synthetic": by_eps(s["silo"]),
        "nonprivate_heart": r4(h["nonprivate"][0][0]),
        "nonprivate_synthetic": r4(s["nonprivate"][0][0]),
        "majority_heart": r4(h["majority"]),
        "majority_synthetic": r4(s["majority"]),
        "sd": {
            "record_level_heart": by_eps(h["record"], 1), "silo_level_heart": by_eps(h["silo"], 1),
            "record_level_synthetic": by_eps(s["record"], 1), "silo_level_synthetic": by_eps(s["silo"], 1),
            "nonprivate_heart": r4(h["nonprivate"][0][1]), "nonprivate_synthetic": r4(s["nonprivate"][0][1]),
        },
        "roc_auc": {
            "record_level_heart": by_eps(h["record"], field="roc_auc"),
            "silo_level_heart": by_eps(h["silo"], field="roc_auc"),
            "record_level_synthetic": by_eps(s["record"], field="roc_auc"),
            "silo_level_synthetic": by_eps(s["silo"], field="roc_auc"),
            "nonprivate_heart": r4(h["nonprivate"][1][0]), "nonprivate_synthetic": r4(s["nonprivate"][1][0]),
        },
        "clip_norm_heart": round(h["clip"], 4),
        "clip_norm_synthetic": round(s["clip"], 4),
        "record_max_grad_norm": MAX_GRAD_NORM,
        "delta": DELTA,
        "synthetic_silos": len(synthetic.silos),
        "rounds": rounds,
        "seeds_heart": len(h["seeds"]),
        "seeds_synthetic": len(s["seeds"]),
        "quick": args.quick,
        "plot": str(figure.relative_to(REPO_ROOT)),
        "wall_seconds": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
