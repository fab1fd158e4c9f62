"""What a round does with the silos' updates, decided once: the round's aggregation policy.

`RoundPolicy` is built once from the federation's settings (`build_policy`) and passed to every
party that needs it — the coordinator's merge and unmask steps, each silo's masking step — so that
no decision is re-derived where it is used. It holds:

- the aggregation: ``trusted`` (each update merged by the rule), ``secure`` (one secure sum of all
  silos, Bonawitz et al., CCS 2017) or ``bucketed`` (one secure sum per seeded bucket of at least
  ``min_bucket`` silos, the rule over the bucket means: Karimireddy, He & Jaggi, ICLR 2022);
- the combiner that merges what the coordinator sees — single updates or decoded bucket means —
  composed of wrappers: `RuleMerge` (the weighted mean or a Byzantine-robust rule of
  `fl_core.robust`), `Screened` (anomaly scores, streaks and optional exclusion, `fl_core.anomaly`)
  and, in trusted mode, `TrustedDPFedAvg` (DP-FedAvg, McMahan et al., ICLR 2018: clipping, capped
  weights, a fixed denominator and Gaussian noise, through `fl_core.dp.fedavg`);
- silo-level DP as `SiloLevel` (the noise multiplier, per-layer clipping, distributed Skellam
  shares after Agarwal, Kairouz & Liu, NeurIPS 2021), derived once, and what a round with only
  some of the silos sampled is charged;
- which silos train in a round (`sample`: k of the eligible, `fl_core.sampling`), recomputed alike
  by the coordinator and every silo;
- the quantiser of the secure sum and the server step (`fl_core.server_opt`: FedAvg with a server
  learning rate, FedAvgM, FedAdagrad, FedAdam, FedYogi, whose state the coordinator keeps);
- with SCAFFOLD (`fl_core.objectives`), the layout of what each silo contributes: its model update
  and its control-variate delta side by side, each clipped to the same bound, through the same
  (secure) sum, weighted alike; the server step moves the server's control variate too.

Nothing here knows about Prefect, MLflow or the exchange: the tasks load, call and save.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from fl_core import robust
from fl_core.aggregation import weighted_mean
from fl_core.anomaly import AnomalySpec, reported, score_updates, streaks
from fl_core.dp.accounting import Event, GaussianEvent
from fl_core.dp.distributed import SkellamShares, add_share
from fl_core.dp.fedavg import Aggregator, FixedDenominatorMean, GaussianNoised, capped_weights, clip_update
from fl_core.dp.policy import SiloPrivacy
from fl_core.errors import AggregationError, ConfigError, HeadroomError, StateError, TooFewUpdates
from fl_core.messages import AnomalyReport
from fl_core.objectives import scaffold_server_control
from fl_core.sampling import SiloSample
from fl_core.secagg.quantize import Quantizer, clip_by_norm
from fl_core.secagg.spec import SecureSpec
from fl_core.secagg.weighting import contribution, mean_update
from fl_core.seeding import derive_seed, numpy_rng
from fl_core.server_opt import ServerOptimizer, ServerOptimizerSpec, ServerState

Mode = Literal["secure", "bucketed", "trusted"]


# -- silo-level DP, derived once ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class SiloLevel:
    """Silo-level DP of a federation as every party derives it alike: z at the configured placement
    (distributed: with `threshold` shares in the sum), the layer sizes for per-layer clipping, each
    silo's Skellam share, and the sensitivity of the sum.

    The neighbouring relation is zero-out: one silo's update replaced by zero, while who may take
    part and each silo's weight stay as they are (they are public to the coordinator). The noise
    is z·C on the weighted *sum*, whatever the number of silos in it, and the sum is divided by the
    summed weight of the silos actually in it — public under zero-out, so no expected count of
    participants enters the calibration, and sampling k of n silos changes nothing there.

    Sampling (``aggregation.silos_per_round``, `fl_core.sampling`). A round whose k trainers are
    drawn from n eligible silos is charged, with central noise, as the sampled Gaussian mechanism
    at q = k / n: ``GaussianEvent(z, k / n, 1)`` (DP-FedAvg's accounting, McMahan et al., ICLR
    2018; the sampled Gaussian's RDP, Mironov, Talwar & Zhang 2019; PRV alike); with a
    ``target_epsilon``, z is chosen for that q (`of`). What this assumes:

    - Under zero-out adjacency and *Poisson* sampling (each silo drawn on its own with probability
      q), the round is exactly the mechanism those accountants bound. The draw here is not Poisson:
      it is exactly k without replacement. Amplification for that scheme is proven under the
      substitution relation (Balle, Barthe & Gaboardi, "Privacy Amplification by Subsampling:
      Tight Analyses via Couplings and Divergences", NeurIPS 2018; Wang, Balle & Kasiviswanathan,
      "Subsampled Rényi Differential Privacy and Analytical Moments Accountant", AISTATS 2019),
      where swapping one silo for another moves the sum by up to 2C, not C. Charging exact-k rounds
      with the Poisson accountant at q = k / n is the approximation in common use, not a proof, and
      may understate ε (Lebeda et al., "Avoiding Pitfalls for Privacy Accounting of Subsampled
      Mechanisms under Composition", 2024). Exact k is kept because every round's secure sum then
      has the size its threshold and headroom were checked for; a Poisson draw too small for the
      sum would fail its round on every redo (the draw is seeded), and redrawing until it is large
      enough would condition on the size, which the Poisson analysis does not cover.
    - Amplification needs the draw to be hidden from whoever the guarantee is held against. The
      draw follows from the config's seed and is published in the round record: the amplified ε
      speaks of parties that see only the released models, not of the coordinator or the silos.
      For anyone who knows the draw, a round is the plain Gaussian mechanism on the silos drawn;
      ε with every charge taken at q = 1 (`fl_core.dp.ledger.Ledger.spent_without_sampling`) bounds
      it for any draw that does not look at the data (Rényi divergence is jointly quasi-convex:
      van Erven & Harremoës, IEEE Trans. Inf. Theory 2014, Thm 13), and is recorded beside ε.
    - Distributed (Skellam) noise is charged without amplification: the Skellam bound used here
      has no subsampled form. Sampling can only lower the true cost, so the charge stays an upper
      bound; the shares are sized for the threshold of a sum of k silos.
    """

    policy: SiloPrivacy
    noise_multiplier: float
    layers: tuple[int, ...] | None
    shares: SkellamShares | None
    sensitivity: float  # the L2 bound of one silo's influence on the sum, in update units

    @classmethod
    def of(cls, policy: SiloPrivacy, *, secure: bool, rounds: int, scale: float, n_parameters: int,
           layers: tuple[int, ...], threshold: int, sample_rate: float = 1.0) -> SiloLevel:
        """`threshold`: of the secure sum of one round's silos; `sample_rate`: the planned k / n,
        at which a ``target_epsilon`` is met under central noise (distributed noise is charged at 1)."""
        shares = None
        if policy.placement == "distributed":
            shares = policy.skellam_shares(rounds, scale, n_parameters, threshold)
            z = shares.noise_multiplier
        else:
            z = policy.resolved_noise_multiplier(rounds, sample_rate)
        # Stochastic rounding moves each coordinate of a securely summed update by < one step.
        sensitivity = policy.clip_norm + (math.sqrt(n_parameters) / scale if secure else 0.0)
        return cls(policy=policy, noise_multiplier=z, layers=layers if policy.clipping == "per_layer" else None,
                   shares=shares, sensitivity=sensitivity)

    def weight(self, n_samples: int) -> float:
        return capped_weights([n_samples], self.policy.weight_cap)[0]

    def clip(self, delta: np.ndarray) -> tuple[np.ndarray, bool]:
        return clip_update(delta, self.policy.clip_norm, self.layers)

    def plan(self) -> dict:
        """What the coordinator's signed plan states, for every silo to check against its own."""
        return {"placement": self.policy.placement, "clip_norm": self.policy.clip_norm,
                "noise_multiplier": self.noise_multiplier, "clipping": self.policy.clipping,
                "weight_cap": self.policy.weight_cap}

    def central_std(self) -> float:
        """The std of the coordinator's Gaussian noise on the weighted sum (0 when distributed)."""
        return 0.0 if self.shares is not None else self.noise_multiplier * self.sensitivity

    def event(self, shares_in_sum: int | None = None, sample_rate: float = 1.0) -> Event:
        """A round's release: Gaussian (central) on a sample of rate `sample_rate` (k / n of the
        eligible silos trained), or Skellam with the shares actually summed (not amplified by the
        sampling: see the class's docstring)."""
        if self.shares is None:
            return GaussianEvent(self.noise_multiplier, float(sample_rate), 1)
        return self.shares.event(self.shares.threshold if shares_in_sum is None else shares_in_sum)

    def noise_shares(self, event: Event) -> int | None:
        """How many Skellam shares `event` carries (None for central noise)."""
        return None if self.shares is None else round(event.variance / self.shares.share_variance)


# -- what the merge sees, and what it gives back --------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Contribution:
    """One vector the coordinator merges: a silo's update (trusted mode) or the mean of one secure
    sum with the summed weight (secure, bucketed); `members` are the silos inside it."""

    name: str
    vector: np.ndarray = field(repr=False)
    weight: float
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Merged:
    mean_delta: np.ndarray = field(repr=False)
    kept: tuple[str, ...]  # names of the contributions in the merge
    excluded: tuple[str, ...] = ()
    anomaly: AnomalyReport | None = None
    release: Event | None = None  # silo-level DP: what this merge released
    clipped_fraction: float | None = None  # trusted DP-FedAvg: the fraction of updates clipped


class Combiner(Protocol):
    def __call__(self, inputs: Sequence[Contribution], streaks: Mapping[str, int]) -> Merged: ...


@dataclass(frozen=True, slots=True)
class RuleMerge:
    """The rule over the inputs' vectors and weights (the sample-weighted mean, or a robust rule)."""

    rule: Aggregator

    def __call__(self, inputs: Sequence[Contribution], streaks: Mapping[str, int]) -> Merged:
        if not inputs:
            raise AggregationError("nothing to aggregate: no updates")
        mean = self.rule([c.vector for c in inputs], [c.weight for c in inputs])
        return Merged(mean_delta=mean, kept=tuple(c.name for c in inputs))


@dataclass(frozen=True, slots=True)
class Screened:
    """`inner`, then anomaly scores of every input against its result; streaks carried from the
    previous round (a silo inside a flagged bucket counts as flagged); with ``exclude`` — and only if
    `min_silos` silos are left and the rule can still run — the merge redone without the flagged."""

    inner: Combiner
    spec: AnomalySpec
    min_silos: int
    per_silo: bool  # True: each input is one silo (trusted); False: inputs are bucket means

    def __call__(self, inputs: Sequence[Contribution], previous: Mapping[str, int]) -> Merged:
        merged = self.inner(inputs, previous)
        scores = score_updates({c.name: c.vector for c in inputs}, merged.mean_delta, self.spec)
        by_silo = {s: scores[c.name] for c in inputs for s in c.members}
        counts = streaks(previous, by_silo)
        flagged = tuple(sorted(name for name, score in scores.items() if score.flags))
        left = sum(len(c.members) for c in inputs if c.name not in flagged)
        excluded: tuple[str, ...] = ()
        if self.spec.exclude and flagged and left >= self.min_silos:
            try:
                merged = self.inner([c for c in inputs if c.name not in flagged], previous)
                excluded = flagged
            except AggregationError:  # the rule cannot run on what is left: every vector stays in
                excluded = ()
        report = AnomalyReport(
            scores={name: score.to_dict() for name, score in scores.items()}, flagged=flagged, streaks=counts,
            reported=tuple(reported(counts, self.spec)), excluded=excluded,
            members=None if self.per_silo else {c.name: c.members for c in inputs},
        )
        return Merged(mean_delta=merged.mean_delta, kept=merged.kept, excluded=excluded, anomaly=report,
                      release=merged.release, clipped_fraction=merged.clipped_fraction)


@dataclass(frozen=True, slots=True)
class TrustedDPFedAvg:
    """DP-FedAvg over single updates: each clipped to C (flat or per layer), weights capped at 1,
    Σ wᵢ uᵢ / D with D = Σ wᵢ, Gaussian noise of std z·C / D. Only over the weighted mean: the
    accounting assumes it (a config with a robust rule and silo-level DP is refused)."""

    level: SiloLevel
    rng: np.random.Generator = field(repr=False)
    sample_rate: float = 1.0  # k / n of the eligible silos were sampled to train this round

    def __call__(self, inputs: Sequence[Contribution], streaks: Mapping[str, int]) -> Merged:
        if not inputs:
            raise AggregationError("nothing to aggregate: no updates")
        capped = [self.level.weight(int(c.weight)) for c in inputs]
        pairs = [self.level.clip(c.vector) for c in inputs]
        denominator = sum(capped)
        noised = GaussianNoised(FixedDenominatorMean(denominator), self.level.noise_multiplier, self.level.sensitivity,
                                denominator, self.rng)
        mean = noised([p[0] for p in pairs], capped)
        return Merged(mean_delta=mean, kept=tuple(c.name for c in inputs),
                      release=self.level.event(sample_rate=self.sample_rate),
                      clipped_fraction=sum(p[1] for p in pairs) / len(pairs))


# -- one secure-aggregation instance ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    """The whole roster (secure mode, ``index`` None) or bucket ``index`` (bucketed mode)."""

    index: int | None
    silos: tuple[str, ...]
    threshold: int

    @property
    def name(self) -> str:
        return "sum" if self.index is None else f"bucket-{self.index}"


# -- the policy -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class RoundPolicy:
    mode: Mode
    rule: str
    merge_rule: Aggregator = field(repr=False)
    anomaly: AnomalySpec | None
    server: ServerOptimizer
    min_silos: int
    seed: int
    n_parameters: int
    n_silos: int = 1  # the federation's N (SCAFFOLD's server control moves by |S| / N)
    control: bool = False  # SCAFFOLD: each update carries the silo's control-variate delta
    secure: SecureSpec | None = None  # secure and bucketed modes
    quantizer: Quantizer | None = None
    min_bucket: int | None = None  # bucketed mode
    robust_params: Mapping[str, float | int | None] = field(default_factory=dict)
    privacy: SiloLevel | None = None
    silos_per_round: int | None = None  # k silos sampled to train each round (None: every eligible silo)

    # -- who sums with whom ---------------------------------------------------------------------------
    @property
    def is_secure(self) -> bool:
        return self.mode != "trusted"

    @property
    def stateful(self) -> bool:
        """Whether the server carries state from round to round (an optimiser's moments, SCAFFOLD's c)."""
        return self.server.spec.stateful or self.control

    @property
    def update_length(self) -> int:
        """What one silo's update holds: the model delta, and with SCAFFOLD its control-variate delta."""
        return self.n_parameters * (2 if self.control else 1)

    @property
    def length(self) -> int:
        """The secure sum's vector: the weighted update and the weight."""
        return self.update_length + 1

    def parts(self, update: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(model delta, control-variate delta or None) of an update of `update_length` values."""
        if len(update) != self.update_length:
            raise AggregationError(f"an update of {len(update)} values, the round's is {self.update_length}")
        if not self.control:
            return update, None
        return update[:self.n_parameters], update[self.n_parameters:]

    def clip_parts(self, update: np.ndarray, clip_norm: float) -> tuple[np.ndarray, bool]:
        """Each part of `update` clipped to `clip_norm` on its own (so every coordinate stays within the
        quantiser's bound); and whether any was."""
        model, control = self.parts(update)
        model, clipped = clip_by_norm(model, clip_norm)
        if control is None:
            return model, clipped
        control, control_clipped = clip_by_norm(control, clip_norm)
        return np.concatenate([model, control]), clipped or control_clipped

    def buckets(self, round_number: int, silos: Sequence[str]) -> list[tuple[str, ...]]:
        """Bucketed mode: round `round_number`'s buckets of `silos`, a shuffle seeded by the federation's
        seed and the round, so that every silo can recompute (and check) what the coordinator announces."""
        rng = numpy_rng(derive_seed(self.seed, "buckets", round_number))
        return robust.assign_buckets(list(silos), self.min_bucket, rng)

    def sample(self, round_number: int, eligible: Sequence[str]) -> SiloSample:
        """Round `round_number`'s trainers: ``silos_per_round`` of the `eligible` silos (the roster's,
        not offboarded), drawn from the federation's seed and the round only, so that a redone round
        draws the same and every silo can recompute (and check) what the coordinator announces."""
        return SiloSample.draw(eligible, self.silos_per_round, self.seed, round_number)

    def instances(self, round_number: int, silos: Sequence[str]) -> tuple[Instance, ...]:
        if not self.is_secure:
            return ()
        if self.mode == "bucketed":
            return tuple(Instance(index=k, silos=members, threshold=self.secure.threshold_for(len(members)))
                         for k, members in enumerate(self.buckets(round_number, silos)))
        return (Instance(index=None, silos=tuple(silos), threshold=self.secure.threshold_for(len(silos))),)

    def tolerated(self, units: int) -> None:
        """Raise `TooFewUpdates` if the rule cannot run on `units` inputs with the configured f."""
        if self.rule == "fedavg":
            return
        tolerated = robust.tolerated_faults(self.rule, units, **self.robust_params)
        f = self.robust_params.get("f")
        if f is not None and f > tolerated:
            raise TooFewUpdates(f"{self.rule} with f = {f} needs more than {units} inputs")

    def plan_privacy(self) -> dict | None:
        return None if self.privacy is None else self.privacy.plan()

    # -- a silo's side ----------------------------------------------------------------------------------
    def noise_share(self, rng: np.random.Generator) -> np.ndarray | None:
        """Distributed DP: this silo's Skellam share (drawn once training is done), else None."""
        if self.privacy is None or self.privacy.shares is None:
            return None
        return self.privacy.shares.sample(rng)

    def encode(self, delta: np.ndarray, n_samples: int, weight_scale: float, rng: np.random.Generator,
               noise: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """What a silo feeds the secure sum: ``[clip(Δ)·w/W, w/W]`` quantised with stochastic rounding
        (`rng`, seeded per silo and round), plus its noise share under distributed DP; and whether the
        update was clipped. Under silo-level DP the clip is the DP bound and the weight is capped."""
        spec, level = self.secure, self.privacy
        if level is None:
            delta, part_clipped = self.clip_parts(delta, spec.clip_norm)
            values, clipped = contribution(delta, n_samples, weight_scale, math.inf)
            clipped = clipped or part_clipped
        else:  # DP-FedAvg: clipped to the DP bound, weight capped at 1 (so one silo moves the sum by <= C)
            delta, dp_clipped = level.clip(delta)
            values, clipped = contribution(delta, level.weight(n_samples), 1.0, spec.clip_norm)
            clipped = clipped or dp_clipped
        codes = self.quantizer.encode(values, rng)
        if level is not None and level.shares is not None:
            if noise is None or noise.shape[0] != len(delta):
                raise StateError(f"no noise share for this round's {len(delta)} parameters on this silo")
            codes = add_share(codes, noise)
        return codes, bool(clipped)

    def weight_scale_for(self, n_samples: Sequence[float]) -> float:
        """W, the public bound on a round's weights: the largest training-set size announced (1 under
        silo-level DP, whose weights are capped at 1)."""
        return 1.0 if self.privacy is not None else max(float(n) for n in n_samples)

    # -- the coordinator's side -------------------------------------------------------------------------
    def decode(self, instance: Instance, total: np.ndarray, weight_scale: float, members: Sequence[str],
               rng: np.random.Generator) -> Contribution:
        """The mean update and summed weight of one instance's secure sum. Central silo-level DP adds
        its Gaussian noise here, to the decoded weighted sum, before it is divided by the weight."""
        decoded = self.quantizer.decode_sum(total)
        if self.privacy is not None and self.privacy.central_std() > 0:
            decoded[:-1] += rng.normal(0.0, self.privacy.central_std(), size=len(decoded) - 1)
        mean, weight = mean_update(decoded)
        return Contribution(name=instance.name, vector=mean, weight=weight * weight_scale, members=tuple(members))

    def combiner(self, rng: np.random.Generator, sample_rate: float = 1.0) -> Combiner:
        """How the round's contributions merge, wrappers included (built per round: it holds the
        round's noise generator and, for the privacy charge, the round's sampling rate k / n)."""
        if self.mode == "secure":
            return _SingleSum(self.privacy, sample_rate)
        if self.mode == "trusted" and self.privacy is not None:
            return TrustedDPFedAvg(self.privacy, rng, sample_rate)
        inner: Combiner = RuleMerge(self.merge_rule)
        if self.anomaly is not None:
            inner = Screened(inner, self.anomaly, self.min_silos, per_silo=self.mode == "trusted")
        return inner

    def merge(self, inputs: Sequence[Contribution], streaks: Mapping[str, int], rng: np.random.Generator,
              sample_rate: float = 1.0) -> Merged:
        return self.combiner(rng, sample_rate)(inputs, streaks)

    def step(self, start: np.ndarray, merged: Merged, state: ServerState, round_number: int,
             silos_in: Sequence[str]) -> tuple[np.ndarray, ServerState]:
        """The new global model and server state: the server optimiser's step from the merged update
        and, with SCAFFOLD, the server's control variate moved by the silos' (`silos_in`: those whose
        contributions are in the merge, whose control variates the silos now count from this round)."""
        model_delta, control_delta = self.parts(merged.mean_delta)
        new_global, new_state = self.server.step(start, model_delta, state)
        if control_delta is None:
            return new_global, new_state
        control = new_state.slots.get("control")
        control = np.zeros(self.n_parameters, dtype=np.float32) if control is None else control
        control = scaffold_server_control(control, control_delta, len(silos_in), self.n_silos)
        accepted = {**new_state.accepted, **{silo: round_number for silo in silos_in}}
        return new_global, ServerState(steps=new_state.steps, slots={**new_state.slots, "control": control},
                                       accepted=accepted)


@dataclass(frozen=True, slots=True)
class _SingleSum:
    """Secure mode: the one sum is the merge (its noise, if any, was added when it was decoded)."""

    level: SiloLevel | None
    sample_rate: float = 1.0

    def __call__(self, inputs: Sequence[Contribution], streaks: Mapping[str, int]) -> Merged:
        if len(inputs) != 1:
            raise AggregationError(f"secure mode merges one sum, got {len(inputs)}")
        (only,) = inputs
        release = None if self.level is None else self.level.event(len(only.members), self.sample_rate)
        return Merged(mean_delta=only.vector, kept=(only.name,), release=release)


def build_policy(*, mode: Mode, rule: str, robust_params: Mapping[str, float | int | None], server_lr: float,
                 min_silos: int, min_bucket: int, secure: SecureSpec, privacy: SiloPrivacy | None,
                 anomaly: AnomalySpec | None, seed: int, rounds: int, layers: Sequence[int],
                 n_silos: int, server_optimizer: ServerOptimizerSpec | None = None,
                 control: bool = False, silos_per_round: int | None = None) -> RoundPolicy:
    """The round's policy from the federation's settings (`layers`: the model's parameter sizes in
    flattening order; `control`: the silos train with SCAFFOLD; `silos_per_round`: k of the
    `n_silos` trained each round, None for all). Raises `ConfigError` for settings that cannot serve
    `n_silos` silos, `silos_per_round` of them at a time."""
    if silos_per_round is not None and (isinstance(silos_per_round, bool) or silos_per_round < 1):
        raise ConfigError(f"aggregation.silos_per_round: must be >= 1 (or unset for every silo), got {silos_per_round!r}")
    per_round = n_silos if silos_per_round is None else min(silos_per_round, n_silos)
    if control and privacy is not None:
        raise ConfigError("training.objective: scaffold with silo-level DP (aggregation.privacy) is refused: "
                          "DP-FedAvg's clipping and noise, and its accounting, cover the model update, not the "
                          "control variates that SCAFFOLD sends beside it")
    n_parameters = int(sum(layers))
    merge_rule = weighted_mean if rule == "fedavg" else robust.make_aggregator(rule, **dict(robust_params))
    level = None
    quantizer = secure.quantizer() if mode != "trusted" else None
    if privacy is not None:
        try:  # the Skellam shares are sized for the threshold of one round's sum: its k silos
            threshold = secure.threshold_for(per_round)
        except ValueError as exc:
            raise ConfigError(f"aggregation.secure: {exc}") from None
        level = SiloLevel.of(privacy, secure=mode == "secure", rounds=rounds,
                             scale=secure.quantizer().scale, n_parameters=n_parameters, layers=tuple(layers),
                             threshold=threshold, sample_rate=per_round / n_silos)
        if level.shares is not None:
            try:
                level.shares.check_headroom(per_round, secure.bits)
            except HeadroomError as exc:
                raise ConfigError(f"aggregation.privacy: {exc}") from None
    return RoundPolicy(
        mode=mode, rule=rule, merge_rule=merge_rule, anomaly=anomaly,
        server=ServerOptimizer(spec=server_optimizer or ServerOptimizerSpec(), lr=server_lr),
        min_silos=min_silos, seed=seed, n_parameters=n_parameters, n_silos=n_silos, control=control,
        secure=secure if mode != "trusted" else None, quantizer=quantizer,
        min_bucket=min_bucket if mode == "bucketed" else None, robust_params=dict(robust_params), privacy=level,
        silos_per_round=silos_per_round,
    )
