"""Attack bench: every robust aggregation rule against every attack, with and without bucketing.

Question: what does each Byzantine-robust rule of `fl_core.robust` buy, and what does it cost, when a
fifth of a non-IID federation attacks it? Every cell is the final global accuracy on the pooled
holdout (every silo's holdout) after federated training in which the malicious silos run one attack
of `fl_core.attacks` and the server aggregates the round's updates with one rule.

Federations:

- heart: the example's four hospitals (examples/heart/federation.yaml, its training settings: logistic
  model, 20 rounds of 2 local SGD epochs). 20 % of 4 silos rounds down to none, so here 1 hospital of
  4 is malicious (25 %). Rules whose guarantee cannot cover 1 Byzantine update among 4 inputs (Krum and
  Multi-Krum need n ≥ 2f + 3 = 5, Bulyan n ≥ 4f + 3 = 7; bucketed, 4 updates make only 2 bucket means)
  are shown as "n/a".
- synthetic: 25 silos of `infra.synthetic.write_synthetic_federation` (a shared logistic ground truth,
  per-silo covariate shift, so the silos' class balance ranges from ~10 % to ~99 % positive; 200 rows,
  8 features, 30 % holdout), logistic model, 20 rounds of one local SGD epoch at lr 0.5, batch 32
  (the settings of benchmarks/dp_utility.py), 5 malicious silos (20 %).

The malicious silos are drawn per seed by `pick_malicious` from a seeded generator. Each run follows
the pipeline's FedAvg arithmetic (`fl_core.simulation`: initial weights and every silo's training
seeded by `derive_seed(root, "init")` / `derive_seed(root, "train", r, silo)`, updates = local minus
global, sample-count weights, server learning rate 1), with the adversary's two hooks: `poison_data`
once on each malicious silo's training split before training starts, `poison_updates` on every
round's updates before aggregation. The aggregate replaces the weighted mean as the server's step.

Rules and their parameters (f = malicious silos; n_in = the number of inputs the rule sees: n, or
⌈n/2⌉ bucket means with bucketing):

- mean (federated averaging; McMahan et al., AISTATS 2017) — the undefended baseline;
- median and trimmed_mean, coordinate-wise (Yin, Chen, Ramchandran & Bartlett, ICML 2018): β = 0.2,
  raised to f / n_in where ⌊0.2·n_in⌋ < f so that the trim covers the malicious inputs (heart: β = 0.25,
  the mean of the middle two of four values; synthetic bucketed: β = 5/13);
- krum and multi_krum (Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017) with f, Multi-Krum's
  m = n_in − f; bulyan (El Mhamdi, Guerraoui & Rouault, ICML 2018) with f, n/a where n_in < 4f + 3;
- geometric_median (RFA; Pillutla, Kakade & Harchaoui, IEEE TSP 2022);
- centered_clipping (Karimireddy, He & Jaggi, ICML 2021): 3 iterations from the previous round's
  aggregate (zero in round 1), the paper's momentum-style start, with radius τ;
- norm_bounding (Sun, Kairouz, Suresh & McMahan, 2019) with bound M.

τ and M are the update scale S of the federation: the median L2 norm of the honest round-1 updates of a
clean probe (every silo trains once from the initial weights of seed 0), a choice a server can make
before the federation runs. A rule is run whenever `tolerated_faults(rule, n_in, …)` ≥ f; mean, norm
bounding and centred clipping have no f and always run (they bound influence rather than locate the
honest majority). Bucketing (Karimireddy, He & Jaggi, ICLR 2022): `Bucketed(rule, 2, rng)` averages
random pairs; f malicious updates contaminate at most f of the ⌈n/2⌉ bucket means, so the inner rule
keeps f and sees n_in = ⌈n/2⌉ inputs (synthetic: 13 buckets, f = 5 — Krum's n ≥ 2f + 3 just holds,
Bulyan's does not).

Attacks (`AttackSpec` kinds; papers cited in `fl_core.attacks`):

- none;
- label_flip: the malicious silos train on 1 − y (all rows; Tolpegin et al., ESORICS 2020);
- sign_flip: send −λ·u with λ = 10, enough for f silos to outweigh the n − f honest ones in a mean
  (λ > (n − f) / f) (Li et al., AAAI 2019);
- scaling: model replacement with a backdoor (Bagdasaryan et al., AISTATS 2020; Gu et al., BadNets
  2017): half of each malicious silo's rows get the trigger and label 1, and the update trained on them
  is boosted by W / W_m (the round's total over the malicious weight). The trigger sets two numeric
  features to an end of their contract range, valid inputs no silo's data comes near (heart: age = 18
  and resting blood pressure trestbps = 60 mm Hg, where the youngest patient is 28 and the lowest
  recorded pressure 80; synthetic: f0 = f5 = 5, the contract maximum, where one training row in 3,500
  has both above 3). Besides accuracy it reports the backdoor success rate (ASR): the fraction of the
  pooled holdout's class-0 rows, trigger stamped on, that the final model calls class 1
  (`backdoor_test_rows`, `backdoor_success_rate`); the ASR of the model trained without attack, on
  the same rows, is shown next to it;
- gaussian_noise: send N(0, σ² I) with σ·√d = 5·S, i.e. random vectors five times the norm of a
  typical honest update (Blanchard et al., NeurIPS 2017);
- alie: all send μ − z·σ of the honest updates, z = the paper's z_max for n and f (Baruch, Baruch &
  Goldberg, NeurIPS 2019); at n = 4, f = 1 z_max is 0, so on heart ALIE sends the honest mean;
- ipm: all send −ε·μ of the honest updates with ε = 0.5 (Xie, Koyejo & Gupta, UAI 2019).

Every random choice derives from the root seed config.seed + benchmark seed through `fl_core.seeding`.
Results are means over seeds (full: 3 seeds; --quick: 1 seed, 8 rounds, a subset of rules and
attacks, same code path, labelled).

    python benchmarks/attacks.py            # full: 3 seeds, 20 rounds, every rule × attack
    python benchmarks/attacks.py --quick    # smoke run (under a minute)

Output: per federation a table of accuracy (rows: rule, ± bucketing; columns: attacks), a table of the
backdoor ASR, plain FedAvg's accuracy on the same seeds (`fl_core.simulation.fedavg_rounds`; the
"mean × none" cell reproduces it), a one-line reading of the trade-offs, a heatmap
(benchmarks/results/attacks.png; attacks_quick.png for --quick), progress on stderr, and as the last
line one JSON object with every table value ({"heart": {row: {attack: accuracy}}, "synthetic": …,
"backdoor_asr": {federation: {row: ASR}}, "backdoor_asr_clean": …, …}).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _path in (REPO_ROOT, BENCH_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from dp_utility import (  # noqa: E402
    Federation,
    heart_federation,
    over_seeds,
    probe_clip,
    run_nonprivate,
    synthetic_federation,
)
from heart import DEFAULT_CONFIG, pooled_holdout, r4  # noqa: E402

from fl_core.aggregation import FedAvg  # noqa: E402
from fl_core.attacks import (  # noqa: E402
    Adversary,
    AttackSpec,
    Trigger,
    backdoor_success_rate,
    backdoor_test_rows,
    pick_malicious,
)
from fl_core.errors import TooFewUpdates  # noqa: E402
from fl_core.evaluation import accuracy, predict_proba  # noqa: E402
from fl_core.models import build_model  # noqa: E402
from fl_core.params import flatten, load_flat_inplace  # noqa: E402
from fl_core.preprocess import FeatureEncoder  # noqa: E402
from fl_core.robust import Bucketed, make_aggregator, tolerated_faults  # noqa: E402
from fl_core.seeding import derive_seed, numpy_rng  # noqa: E402
from fl_core.simulation import initial_vector  # noqa: E402
from fl_core.training import train_local  # noqa: E402

RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median",
         "centered_clipping", "norm_bounding")
ATTACKS = ("none", "label_flip", "sign_flip", "scaling", "gaussian_noise", "alie", "ipm")
QUICK_RULES = ("mean", "median", "krum", "centered_clipping")
QUICK_ATTACKS = ("none", "sign_flip", "scaling", "alie")
NO_F = ("mean", "centered_clipping", "norm_bounding")  # rules without an f: always run
F_RULES = ("krum", "multi_krum", "bulyan")  # rules configured with f

FRACTION = {"heart": 0.25, "synthetic": 0.2}  # heart: 20 % of 4 picks nobody, so 1 of 4
# The backdoor trigger: numeric features set to an end of their contract range (which encodes as -1 / +1).
TRIGGER = {"heart": (("age", "min"), ("trestbps", "min")), "synthetic": (("f0", "max"), ("f5", "max"))}
SYNTHETIC_SILOS = 25
ROUNDS = 20
QUICK_ROUNDS = 8
FULL_SEEDS = 3
QUICK_SEEDS = 1
BUCKET = 2
BETA = 0.2
SIGN_FLIP_MAGNITUDE = 10.0
NOISE_SCALE = 5.0  # gaussian_noise: σ·√d = NOISE_SCALE · S
IPM_EPSILON = 0.5
POISON_FRACTION = 0.5
TARGET = 1
RESULTS = BENCH_DIR / "results"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """A federation and what the bench derives for it once."""

    key: str  # "heart" / "synthetic"
    fed: Federation
    fraction: float
    scale: float  # S: median honest round-1 update norm of a clean probe (τ, M, and the noise's scale)
    dim: int  # d, the model's parameter count
    trigger: Trigger
    trigger_text: str
    reference: float  # plain FedAvg's accuracy over the bench's seeds: the "mean × none" cell must match it

    @property
    def n(self) -> int:
        return len(self.fed.silos)

    @property
    def f(self) -> int:
        return math.floor(self.fraction * self.n + 1e-9)  # what pick_malicious draws


@dataclasses.dataclass(frozen=True, slots=True)
class Cell:
    accuracy: float
    accuracy_sd: float
    asr: float


# -- setup -----------------------------------------------------------------------------------------
def make_setting(key: str, fed: Federation, seeds: list[int]) -> Setting:
    features = {f.name: f for f in fed.config.contract.features}
    names = FeatureEncoder(fed.config.contract.features).output_names
    ends = TRIGGER[key]
    trigger = Trigger(columns=tuple(names.index(c) for c, _ in ends),
                      values=tuple(-1.0 if end == "min" else 1.0 for _, end in ends))
    text = ", ".join(f"{c} = {getattr(features[c], end):g}" for c, end in ends)
    scale, _ = probe_clip(fed, fed.config.seed)
    dim = len(initial_vector(fed.config.model, fed.n_inputs, fed.config.seed))
    reference = over_seeds(fed, seeds, lambda root: run_nonprivate(fed, root))[0][0]
    return Setting(key=key, fed=fed, fraction=FRACTION[key], scale=scale, dim=dim, trigger=trigger,
                   trigger_text=text, reference=reference)


def rule_params(name: str, n_in: int, f: int, scale: float) -> dict | None:
    """Rule `name`'s parameters for n_in inputs of which f may be Byzantine; None when it cannot tolerate f."""
    if name in NO_F:
        return {"centered_clipping": {"tau": scale}, "norm_bounding": {"bound": scale}}.get(name, {})
    params: dict = {"f": f} if name in F_RULES else {}
    if name == "trimmed_mean":
        params["beta"] = max(BETA, f / n_in + 1e-9)
        if params["beta"] >= 0.5:
            return None
    try:
        return params if tolerated_faults(name, n_in, **params) >= f else None
    except TooFewUpdates:
        return None


def attack_spec(attack: str, setting: Setting, malicious: tuple[str, ...]) -> AttackSpec | None:
    params = {
        "none": None,
        "label_flip": {"kind": "label_flip"},
        "sign_flip": {"kind": "sign_flip", "magnitude": SIGN_FLIP_MAGNITUDE},
        "scaling": {"kind": "model_replacement", "trigger_columns": setting.trigger.columns,
                    "trigger_values": setting.trigger.values, "target": TARGET, "poison_fraction": POISON_FRACTION},
        "gaussian_noise": {"kind": "gaussian_noise", "std": NOISE_SCALE * setting.scale / math.sqrt(setting.dim)},
        "alie": {"kind": "alie"},
        "ipm": {"kind": "ipm", "epsilon": IPM_EPSILON},
    }[attack]
    return None if params is None else AttackSpec(silos=malicious, **params)


def malicious_silos(setting: Setting, root: int) -> tuple[str, ...]:
    return pick_malicious(list(setting.fed.silos), setting.fraction, numpy_rng(derive_seed(root, "bench-malicious")))


# -- one run ---------------------------------------------------------------------------------------
def run(setting: Setting, rule: str, params: dict, bucketed: bool, attack: str, rounds: int,
        seed: int) -> tuple[float, float]:
    """Final (accuracy, backdoor ASR) on the pooled holdout after `rounds` attacked rounds."""
    fed = setting.fed
    root = fed.config.seed + seed
    adversary = Adversary(attack_spec(attack, setting, malicious_silos(setting, root)))
    data = {s: adversary.poison_data(s, d.x_train, d.y_train, numpy_rng(derive_seed(root, "bench-poison", s)))
            for s, d in sorted(fed.silos.items())}
    attack_rng = numpy_rng(derive_seed(root, "bench-attack"))
    bucket_rng = numpy_rng(derive_seed(root, "bench-buckets"))
    server = FedAvg()
    vector = initial_vector(fed.config.model, fed.n_inputs, root)
    model = build_model(fed.config.model, fed.n_inputs, seed=0)
    previous = np.zeros_like(vector)  # centred clipping's start: the last aggregate
    for r in range(1, rounds + 1):
        updates, weights = {}, {}
        for silo, (x, y) in data.items():
            load_flat_inplace(model, vector)
            weights[silo] = train_local(model, x, y, fed.spec, seed=derive_seed(root, "train", r, silo)).n_samples
            updates[silo] = flatten(model) - vector
        updates = adversary.poison_updates(updates, weights, attack_rng)
        inner = make_aggregator(rule, **({**params, "start": previous} if rule == "centered_clipping" else params))
        aggregate = Bucketed(inner, BUCKET, bucket_rng) if bucketed else inner
        previous = aggregate([updates[s] for s in data], [weights[s] for s in data])
        vector = server.apply(vector, previous)
    load_flat_inplace(model, vector)
    x_pool, y_pool = pooled_holdout(fed.silos)
    triggered = backdoor_test_rows(x_pool, y_pool, setting.trigger, TARGET)
    return (accuracy(y_pool, predict_proba(model, x_pool)),
            backdoor_success_rate(predict_proba(model, triggered), TARGET))


def bench(setting: Setting, rules: tuple[str, ...], attacks: tuple[str, ...], rounds: int, seeds: list[int],
          progress: Progress) -> dict[str, dict[str, Cell | None]]:
    table: dict[str, dict[str, Cell | None]] = {}
    for bucketed in (False, True):
        n_in = math.ceil(setting.n / BUCKET) if bucketed else setting.n
        for rule in rules:
            params = rule_params(rule, n_in, setting.f, setting.scale)
            row = table[row_label(rule, bucketed)] = {}
            for attack in attacks:
                if params is None:
                    row[attack] = None
                    continue
                began = time.perf_counter()
                acc, asr = zip(*(run(setting, rule, params, bucketed, attack, rounds, s) for s in seeds))
                row[attack] = Cell(float(np.mean(acc)), float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
                                   float(np.mean(asr)))
                progress.report(f"{setting.key} {row_label(rule, bucketed)} × {attack}: "
                                f"accuracy {row[attack].accuracy:.3f} asr {row[attack].asr:.3f}",
                                time.perf_counter() - began)
    return table


class Progress:
    def __init__(self) -> None:
        self.done, self.began = 0, time.perf_counter()

    def report(self, what: str, seconds: float) -> None:
        self.done += 1
        print(f"[{self.done}] {what} ({seconds:.1f} s, {time.perf_counter() - self.began:.0f} s so far)",
              file=sys.stderr, flush=True)


# -- reporting -------------------------------------------------------------------------------------
def row_label(rule: str, bucketed: bool) -> str:
    return f"{rule}+bucketing" if bucketed else rule


def print_table(title: str, table: dict[str, dict[str, Cell | None]], columns: list[str], value) -> None:
    cells = {r: ["n/a" if row[a] is None else f"{value(row[a]):.3f}" for a in columns] for r, row in table.items()}
    name_width = max(len(r) for r in [title, *table])
    widths = [max(len(h), 5) for h in columns]
    print(f"{title:<{name_width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(columns, widths)))
    for r, line in cells.items():
        print(f"{r:<{name_width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(line, widths)))


def reading(key: str, table: dict[str, dict[str, Cell | None]], attacks: tuple[str, ...]) -> str:
    def acc(row: str, attack: str) -> float:
        cell = table.get(row, {}).get(attack)
        return math.nan if cell is None else cell.accuracy

    mean_worst = min(attacks, key=lambda a: acc("mean", a))
    worst = {r: min(c.accuracy for c in row.values()) for r, row in table.items() if all(row.values())}
    best = max(worst, key=worst.get)
    parts = [f"mean {acc('mean', 'none'):.3f} without attack, {acc('mean', mean_worst):.3f} under {mean_worst}"]
    clean = [f"{r} {acc(r, 'none'):.3f}" + ("" if math.isnan(acc(row_label(r, True), "none"))
                                            else f" (bucketed {acc(row_label(r, True), 'none'):.3f})")
             for r in ("median", "krum") if not math.isnan(acc(r, "none"))]
    if clean:
        parts.append("without attack " + ", ".join(clean))
    parts.append(f"best worst case over attacks: {best} {worst[best]:.3f}")
    pairs = [r for r in RULES if r != "mean" and r in worst and row_label(r, True) in worst]
    if pairs:
        gain = np.mean([acc(row_label(r, True), "none") - acc(r, "none") for r in pairs])
        loss = np.mean([worst[row_label(r, True)] - worst[r] for r in pairs])
        parts.append(f"bucketing moves accuracy by {gain:+.3f} without attack and the worst case by {loss:+.3f} "
                     f"(mean over {len(pairs)} rule{'s' * (len(pairs) > 1)})")
    if "scaling" in attacks:
        asr = {r: row["scaling"].asr for r, row in table.items() if row["scaling"] is not None}
        low = min(asr, key=asr.get)
        parts.append(f"backdoor ASR {asr['mean']:.2f} under mean, lowest {low} {asr[low]:.2f}")
    return f"reading ({key}): " + "; ".join(parts)


def plot(path: Path, tables: dict[str, dict], attacks: tuple[str, ...], quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(tables)
    rows = max(len(t) for t in tables.values())
    fig, axes = plt.subplots(1, 2 * len(keys), figsize=(5.5 * len(keys) + 2, 0.38 * rows + 2.2), squeeze=False,
                             gridspec_kw={"width_ratios": [len(attacks), 1.2] * len(keys)})
    for i, key in enumerate(keys):
        table = tables[key]
        labels = list(table)
        acc = np.array([[np.nan if c is None else c.accuracy for c in table[r].values()] for r in labels])
        asr = np.array([[np.nan if table[r].get("scaling") is None else table[r]["scaling"].asr] for r in labels])
        for ax, values, columns, cmap in ((axes[0, 2 * i], acc, attacks, "RdYlGn"),
                                          (axes[0, 2 * i + 1], asr, ("backdoor ASR\n(scaling)",), "Reds")):
            shown = np.ma.masked_invalid(values)
            colours = plt.get_cmap(cmap).copy()
            colours.set_bad("lightgrey")
            ax.imshow(shown, cmap=colours, vmin=0.0 if cmap == "Reds" else 0.3, vmax=1.0, aspect="auto")
            for (y, x), v in np.ndenumerate(values):
                ax.text(x, y, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if cmap == "Reds" and v > 0.6 else "black")
            ax.set_xticks(range(len(columns)), columns, rotation=35, ha="right", fontsize=8)
            ax.set_yticks(range(len(labels)), labels if ax is axes[0, 0] else [], fontsize=8)
        axes[0, 2 * i].set_title(f"{key}: final accuracy", fontsize=10)
    fig.suptitle("Robust aggregation × attacks" + (" (quick run)" if quick else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SEEDS} seed, {QUICK_ROUNDS} rounds, rules {QUICK_RULES}, attacks {QUICK_ATTACKS}")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    torch.set_num_threads(1)
    rounds = QUICK_ROUNDS if args.quick else ROUNDS
    seeds = list(range(QUICK_SEEDS if args.quick else FULL_SEEDS))
    rules, attacks = (QUICK_RULES, QUICK_ATTACKS) if args.quick else (RULES, ATTACKS)
    heart = heart_federation(DEFAULT_CONFIG, rounds)
    with tempfile.TemporaryDirectory(prefix="attacks-") as folder:
        synthetic = synthetic_federation(Path(folder), SYNTHETIC_SILOS, rounds, heart.config.seed)
    settings = [make_setting("heart", heart, seeds), make_setting("synthetic", synthetic, seeds)]

    label = "QUICK RUN (smoke test, not for quoting): " if args.quick else ""
    print(f"{label}attack bench: logistic model, {rounds} rounds, seeds {seeds} (root seed = config seed + seed), "
          f"final accuracy on the pooled holdout, mean over seeds; bucket size {BUCKET}")
    progress = Progress()
    tables: dict[str, dict] = {}
    for s in settings:
        t = s.fed.spec
        draws = [malicious_silos(s, s.fed.config.seed + seed) for seed in seeds]
        print(f"\n== {s.key}: {s.n} silos, {s.f} malicious ({s.f / s.n:.0%}; per seed: "
              f"{'; '.join(', '.join(d) for d in draws)}); local {t.local_epochs} epoch(s) {t.optimizer} lr={t.lr} "
              f"momentum={t.momentum} batch={t.batch_size}")
        print(f"   update scale S = {s.scale:.4f} (median honest round-1 update norm): centred clipping τ = S, "
              f"norm bound M = S, gaussian σ = {NOISE_SCALE:g}·S/√d; trigger {s.trigger_text} → class {TARGET}")
        tables[s.key] = bench(s, rules, attacks, rounds, seeds, progress)
        table = tables[s.key]
        print_table(f"-- {s.key}: accuracy", table, list(attacks), lambda c: c.accuracy)
        if "scaling" in attacks:
            asr = {r: {"clean": row["none"], "scaling": row["scaling"]} for r, row in table.items()}
            print_table(f"-- {s.key}: backdoor ASR", asr, ["clean", "scaling"], lambda c: c.asr)
        sd, where = max((c.accuracy_sd, f"{r} × {a}") for r, row in table.items()
                        for a, c in row.items() if c is not None)
        spread = f"; largest sd over seeds: {sd:.3f} ({where})" if len(seeds) > 1 else ""
        print(f"   FedAvg reference (fl_core.simulation.fedavg_rounds, same seeds): accuracy {s.reference:.3f}{spread}")
        print(reading(s.key, table, attacks))

    figure = RESULTS / ("attacks_quick.png" if args.quick else "attacks.png")
    plot(figure, tables, attacks, args.quick)
    print(f"plot: {figure.relative_to(REPO_ROOT)}")

    def values(table: dict, field: str, columns: tuple[str, ...]) -> dict:
        return {r: {a: None if row[a] is None else r4(getattr(row[a], field)) for a in columns}
                for r, row in table.items()}

    result: dict = {key: values(table, "accuracy", attacks) for key, table in tables.items()}
    if "scaling" in attacks:
        result["backdoor_asr"] = {key: {r: v["scaling"] for r, v in values(t, "asr", attacks).items()}
                                  for key, t in tables.items()}
        result["backdoor_asr_clean"] = {key: {r: v["none"] for r, v in values(t, "asr", attacks).items()}
                                        for key, t in tables.items()}
    result.update({
        "malicious": {s.key: s.f for s in settings}, "silos": {s.key: s.n for s in settings},
        "fedavg_reference": {s.key: r4(s.reference) for s in settings},
        "update_scale": {s.key: round(s.scale, 4) for s in settings}, "rounds": rounds, "seeds": len(seeds),
        "quick": args.quick, "wall_seconds": round(time.perf_counter() - began, 1),
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
