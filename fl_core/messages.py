"""What the coordinator and the silos say to each other, as typed, versioned messages.

Every message here is a frozen dataclass with one ``to_dict`` and one ``from_dict`` (JSON-ready
dicts; ``from_dict`` checks every field's type and raises `MalformedMessage` naming the message and
the field), and the reports know their own MLflow metrics and tags (``metrics()``, ``tags()``), so
that no module reads a silo's answer by string key or invents a metric name of its own.

- `Order`: the coordinator's signed order for one phase of one round — the silos it goes to and
  the objects (with digests) they act on. Signed with `seal_order`, opened with `open_order`, which
  checks the signature against the coordinator's pinned key and the binding (federation, round,
  phase) and that the order names the silo.
- `Manifest`: a silo's signed answer to one phase — status, row-free validation summary and the
  phase's result (`TrainResult`, `ProtocolResult`, `EvaluateResult`). Signed with `seal_manifest`,
  opened with `open_manifest` against the silo's key from the roster.
- Reports the coordinator keeps in the round record: `PrivacyRelease` (a silo's record-level
  DP-SGD spend), `FederationPrivacy` (silo-level DP-FedAvg), `SecAggStats`, `AnomalyReport`, and a
  silo's `EvaluationReport` (published to the exchange, referenced from its manifest) with its
  `GateIntervals` and `GroupReport`.

The format version is ``VERSION``; a message of another version is refused, never guessed at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fl_core.bootstrap import Interval
from fl_core.errors import BadSignature, MalformedMessage, StaleMessage, WrongSender
from fl_core.fairness import GroupCounts
from fl_core.secagg import crypto

VERSION = 1
COORDINATOR = "coordinator"
PHASES = ("train", "shares", "masked", "unmask", "evaluate")
PROTOCOL_PHASES = ("shares", "masked", "unmask")
END = "end"  # the coordinator's last word of a round: nothing more will be asked

Mode = Literal["secure", "bucketed", "trusted"]
Status = Literal["ok", "sat_out"]


def phases_for(mode: str) -> tuple[str, ...]:
    """The silo phases of a round, in order: trusted mode has no protocol phases."""
    return ("train", "evaluate") if mode == "trusted" else PHASES


# -- field readers ----------------------------------------------------------------------------------
def _bad(kind: str, name: str, value: Any, want: str) -> MalformedMessage:
    shown = type(value).__name__ if isinstance(value, (dict, list)) else repr(value)[:60]
    return MalformedMessage(f"{kind}: field {name!r} must be {want}, got {shown}")


def _mapping(raw: Any, kind: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise MalformedMessage(f"{kind}: expected an object, got {type(raw).__name__}")
    return raw


def _str(raw: Mapping, kind: str, name: str, default: Any = ...) -> str:
    value = raw.get(name, default)
    if value is ...:
        raise MalformedMessage(f"{kind}: field {name!r} is missing")
    if not isinstance(value, str):
        raise _bad(kind, name, value, "a string")
    return value


def _int(raw: Mapping, kind: str, name: str, default: Any = ...) -> int:
    value = raw.get(name, default)
    if value is ...:
        raise MalformedMessage(f"{kind}: field {name!r} is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(kind, name, value, "an integer")
    return value


def _float(raw: Mapping, kind: str, name: str, default: Any = ...) -> float:
    value = raw.get(name, default)
    if value is ...:
        raise MalformedMessage(f"{kind}: field {name!r} is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(kind, name, value, "a number")
    return float(value)


def _optional(raw: Mapping, name: str) -> bool:
    return raw.get(name) is not None


def _strs(raw: Mapping, kind: str, name: str, default: Any = ...) -> tuple[str, ...]:
    value = raw.get(name, default)
    if value is ...:
        raise MalformedMessage(f"{kind}: field {name!r} is missing")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _bad(kind, name, value, "a list of strings")
    return tuple(value)


def _floats(raw: Mapping, kind: str, name: str) -> dict[str, float]:
    value = raw.get(name, {})
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in value.items()):
        raise _bad(kind, name, value, "an object of numbers")
    return {k: float(v) for k, v in value.items()}


def _version(raw: Mapping, kind: str) -> None:
    version = raw.get("v", VERSION)
    if version != VERSION:
        raise MalformedMessage(f"{kind}: version {version!r}, this fedsilo reads version {VERSION}")


# -- object references ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectRef:
    """An object in the exchange: its key, and the sha256 and size its reader checks before use."""

    key: str
    sha256: str
    size: int

    def to_dict(self) -> dict:
        return {"key": self.key, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, raw: Any) -> ObjectRef:
        if not isinstance(raw, Mapping):
            raise MalformedMessage(f"malformed object reference: {raw!r:.60}")
        try:
            return cls(key=str(raw["key"]), sha256=str(raw["sha256"]), size=int(raw["size"]))
        except (KeyError, TypeError, ValueError):
            raise MalformedMessage(f"malformed object reference: {sorted(raw)}") from None


def _refs(raw: Mapping, kind: str, name: str) -> tuple[ObjectRef, ...]:
    value = raw.get(name, [])
    if not isinstance(value, list):
        raise _bad(kind, name, value, "a list of object references")
    return tuple(ObjectRef.from_dict(v) for v in value)


def _ref(raw: Mapping, kind: str, name: str) -> ObjectRef | None:
    value = raw.get(name)
    return None if value is None else ObjectRef.from_dict(value)


# -- the coordinator's order ------------------------------------------------------------------------
def header(federation: str, round_number: int, phase: str, sender: str) -> dict[str, Any]:
    """What a signature binds besides the body: federation, round, phase and sender."""
    return {"federation": federation, "round": round_number, "phase": phase, "sender": sender}


@dataclass(frozen=True, slots=True, kw_only=True)
class Order:
    """Phase `phase` of round `round` for `silos`, acting on `refs` (e.g. ``global``: the model to
    train from; ``candidate``/``champion``: the models to score). Phase ``end`` closes the round."""

    federation: str
    round: int
    phase: str
    silos: tuple[str, ...]
    refs: Mapping[str, ObjectRef] = field(default_factory=dict)
    attempt: str = ""  # which attempt at the round: a redone round's orders never reach an old attempt's runs

    def body(self) -> dict[str, Any]:
        return {"v": VERSION, "silos": sorted(self.silos), "attempt": self.attempt,
                "refs": {k: r.to_dict() for k, r in sorted(self.refs.items())}}

    def addressed_to(self, silo: str) -> bool:
        return silo in self.silos

    @classmethod
    def from_body(cls, federation: str, round_number: int, phase: str, body: Any) -> Order:
        body = _mapping(body, "order")
        _version(body, "order")
        refs = body.get("refs", {})
        if not isinstance(refs, Mapping):
            raise BadSignature("message rejected")
        return cls(federation=federation, round=round_number, phase=phase, silos=_strs(body, "order", "silos"),
                   refs={str(k): ObjectRef.from_dict(v) for k, v in refs.items()},
                   attempt=_str(body, "order", "attempt", ""))


def seal_order(identity, order: Order) -> dict[str, Any]:
    """The order signed by the coordinator, as a JSON-ready envelope."""
    return crypto.seal(identity, header(order.federation, order.round, order.phase, COORDINATOR), order.body()).to_dict()


def open_order(signed: Any, coordinator_public: bytes, federation: str, round_number: int, phase: str,
               silo: str | None = None, attempt: str | None = None) -> Order:
    """The order, if the coordinator signed it for this federation, round and phase (and, with
    `silo`, named that silo; with `attempt`, for that attempt at the round); otherwise a `SecAggError`
    subclass: `BadSignature` (forged, edited, unsigned), `StaleMessage` (another round, phase,
    federation or attempt), `WrongSender` (not addressed to `silo`). Nothing is to be done on a
    refused order."""
    envelope = crypto.Envelope.from_dict(signed)  # BadSignature if it is not an envelope
    body = crypto.open_envelope(envelope, coordinator_public, federation=federation, round_number=round_number,
                                phase=phase, sender=COORDINATOR)
    try:
        order = Order.from_body(federation, round_number, phase, body)
    except MalformedMessage:
        raise BadSignature("message rejected") from None
    if attempt is not None and order.attempt != attempt:
        raise StaleMessage(f"the coordinator's order for round {round_number} {phase} belongs to another attempt at "
                           "the round")
    if silo is not None and not order.addressed_to(silo):
        raise WrongSender(f"the coordinator's order for round {round_number} {phase} is not addressed to {silo}")
    return order


# -- a silo's record-level privacy release ----------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyRelease:
    """What one round of DP-SGD cost a silo, as its own ledger charged it."""

    epsilon: float
    budget: float
    delta: float
    accountant: str
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    clipped_fraction: float
    clipping: str = "hooks"

    def to_dict(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "budget": self.budget, "delta": self.delta, "accountant": self.accountant,
                "noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm,
                "sample_rate": self.sample_rate, "clipped_fraction": self.clipped_fraction, "clipping": self.clipping}

    @classmethod
    def from_dict(cls, raw: Any) -> PrivacyRelease:
        k = "privacy release"
        raw = _mapping(raw, k)
        return cls(epsilon=_float(raw, k, "epsilon"), budget=_float(raw, k, "budget"), delta=_float(raw, k, "delta"),
                   accountant=_str(raw, k, "accountant"), noise_multiplier=_float(raw, k, "noise_multiplier"),
                   max_grad_norm=_float(raw, k, "max_grad_norm"), sample_rate=_float(raw, k, "sample_rate", 1.0),
                   clipped_fraction=_float(raw, k, "clipped_fraction"), clipping=_str(raw, k, "clipping", "hooks"))

    def metrics(self, silo: str) -> dict[str, float]:
        return {f"dp.silo.{silo}.{name}": float(getattr(self, name))
                for name in ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "clipped_fraction")}

    def describe(self) -> str:
        return dp_line("record-level DP-SGD", self.epsilon, self.budget, self.delta, self.noise_multiplier,
                       self.max_grad_norm, self.accountant)


def dp_line(what: str, epsilon: float, budget: float, delta: float, z: float, clip: float, accountant: str) -> str:
    """One formatter for every DP line of the lineage."""
    return (f"{what}: epsilon {epsilon:.4f} of {budget:g} spent, delta {delta:g}, noise multiplier {z:.4f}, "
            f"clip {clip:g}, {accountant} accountant")


# -- phase results ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class TrainResult:
    """Training: how much, how well, what it cost in privacy; in trusted mode the update itself, in
    secure mode the silo's signed round keys (its update stays on its disk until it is masked)."""

    n_samples: int
    steps: int
    train_loss: float
    local_metrics: Mapping[str, float] = field(default_factory=dict)
    compute_s: float = 0.0
    privacy: PrivacyRelease | None = None
    update: ObjectRef | None = None
    objects: tuple[ObjectRef, ...] = ()
    bytes: int = 0
    crypto_s: float = 0.0
    planned_steps: int | None = None  # set when a time budget cut the round short (partial work)
    weight: float | None = None  # q-FFL: the silo's weight in the mean (n·F^q); unset: n_samples

    @property
    def aggregation_weight(self) -> float:
        """What the silo's update weighs in the mean: its q-FFL weight, else its training-set size."""
        return float(self.n_samples) if self.weight is None else self.weight

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise MalformedMessage(f"train result: field 'n_samples' must be >= 1, got {self.n_samples}")
        if self.weight is not None and not (math.isfinite(self.weight) and self.weight > 0):
            raise MalformedMessage(f"train result: field 'weight' must be a positive number, got {self.weight}")
        if self.planned_steps is not None and self.planned_steps < self.steps:
            raise MalformedMessage(f"train result: field 'planned_steps' ({self.planned_steps}) is below the steps "
                                   f"taken ({self.steps})")
        if not math.isfinite(self.train_loss):
            raise MalformedMessage(f"train result: field 'train_loss' must be finite, got {self.train_loss}")

    def to_dict(self) -> dict[str, Any]:
        out = {"n_samples": self.n_samples, "steps": self.steps, "train_loss": self.train_loss,
               "local_metrics": dict(self.local_metrics), "compute_s": self.compute_s,
               "objects": [r.to_dict() for r in self.objects], "bytes": self.bytes, "crypto_s": self.crypto_s}
        if self.privacy is not None:
            out["privacy"] = self.privacy.to_dict()
        if self.update is not None:
            out["update"] = self.update.to_dict()
        if self.planned_steps is not None:
            out["planned_steps"] = self.planned_steps
        if self.weight is not None:
            out["weight"] = self.weight
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> TrainResult:
        k = "train result"
        raw = _mapping(raw, k)
        return cls(n_samples=_int(raw, k, "n_samples"), steps=_int(raw, k, "steps"),
                   train_loss=_float(raw, k, "train_loss"), local_metrics=_floats(raw, k, "local_metrics"),
                   compute_s=_float(raw, k, "compute_s", 0.0),
                   privacy=PrivacyRelease.from_dict(raw["privacy"]) if _optional(raw, "privacy") else None,
                   update=_ref(raw, k, "update"), objects=_refs(raw, k, "objects"), bytes=_int(raw, k, "bytes", 0),
                   crypto_s=_float(raw, k, "crypto_s", 0.0),
                   planned_steps=_int(raw, k, "planned_steps") if _optional(raw, "planned_steps") else None,
                   weight=_float(raw, k, "weight") if _optional(raw, "weight") else None)

    def metrics(self, silo: str) -> dict[str, float]:
        return {f"silo.{silo}.train_loss": self.train_loss, f"silo.{silo}.n_train": float(self.n_samples)}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolResult:
    """A secure-aggregation phase: the signed messages it published, their size, its crypto time;
    in the masked phase whether the update was clipped and which peers' shares failed their checks."""

    objects: tuple[ObjectRef, ...] = ()
    bytes: int = 0
    crypto_s: float = 0.0
    clipped: bool = False
    bad_senders: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [r.to_dict() for r in self.objects], "bytes": self.bytes, "crypto_s": self.crypto_s,
                "clipped": self.clipped, "bad_senders": list(self.bad_senders)}

    @classmethod
    def from_dict(cls, raw: Any) -> ProtocolResult:
        k = "protocol result"
        raw = _mapping(raw, k)
        clipped = raw.get("clipped", False)
        if not isinstance(clipped, bool):
            raise _bad(k, "clipped", clipped, "true or false")
        return cls(objects=_refs(raw, k, "objects"), bytes=_int(raw, k, "bytes", 0),
                   crypto_s=_float(raw, k, "crypto_s", 0.0), clipped=clipped,
                   bad_senders=_strs(raw, k, "bad_senders", []))


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluateResult:
    report: ObjectRef
    compute_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"report": self.report.to_dict(), "compute_s": self.compute_s}

    @classmethod
    def from_dict(cls, raw: Any) -> EvaluateResult:
        k = "evaluate result"
        raw = _mapping(raw, k)
        report = _ref(raw, k, "report")
        if report is None:
            raise MalformedMessage(f"{k}: field 'report' is missing")
        return cls(report=report, compute_s=_float(raw, k, "compute_s", 0.0))


Result = TrainResult | ProtocolResult | EvaluateResult
_RESULTS: dict[str, type] = {"train": TrainResult, "evaluate": EvaluateResult,
                             **{p: ProtocolResult for p in PROTOCOL_PHASES}}


# -- a silo's manifest ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """A silo's answer to one phase: ``ok`` with the phase's result, or ``sat_out`` with the reason
    (its data failed the contract, its privacy budget refused the round, it refused the order)."""

    federation: str
    round: int
    phase: str
    silo: str
    status: Status = "ok"
    reason: str = ""
    validation: Mapping[str, Any] | None = None  # the row-free validation summary (validation.summary)
    result: Result | None = None

    def __post_init__(self) -> None:
        if self.phase not in _RESULTS:
            raise MalformedMessage(f"manifest: unknown phase {self.phase!r}")
        if self.status not in ("ok", "sat_out"):
            raise MalformedMessage(f"manifest: unknown status {self.status!r}")
        if self.status == "ok" and not isinstance(self.result, _RESULTS[self.phase]):
            raise MalformedMessage(f"manifest: a completed {self.phase} phase needs a {_RESULTS[self.phase].__name__}, "
                                   f"got {type(self.result).__name__}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def binding(self) -> tuple[str, int, str, str]:
        return self.federation, self.round, self.phase, self.silo

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": VERSION, "federation": self.federation, "round": self.round, "phase": self.phase,
                               "silo": self.silo, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.validation is not None:
            out["validation"] = dict(self.validation)
        if self.result is not None:
            out["result"] = self.result.to_dict()
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> Manifest:
        k = "manifest"
        raw = _mapping(raw, k)
        _version(raw, k)
        phase = _str(raw, k, "phase")
        if phase not in _RESULTS:
            raise MalformedMessage(f"{k}: unknown phase {phase!r}")
        validation = raw.get("validation")
        if validation is not None and not isinstance(validation, Mapping):
            raise _bad(k, "validation", validation, "an object")
        result = raw.get("result")
        return cls(federation=_str(raw, k, "federation"), round=_int(raw, k, "round"), phase=phase,
                   silo=_str(raw, k, "silo"), status=_str(raw, k, "status"), reason=_str(raw, k, "reason", ""),
                   validation=validation, result=None if result is None else _RESULTS[phase].from_dict(result))


def seal_manifest(identity, manifest: Manifest) -> dict[str, Any]:
    """The manifest signed by its silo and bound to its own (federation, round, phase, silo)."""
    return crypto.seal(identity, header(*manifest.binding()), manifest.to_dict()).to_dict()


def open_manifest(signed: Any, silo_public: bytes, federation: str, round_number: int, phase: str,
                  silo: str) -> Manifest:
    """The manifest, if `silo` signed it for this federation, round and phase and its body is bound
    to the same; otherwise `BadSignature` / `StaleMessage` / `WrongSender` (or `MalformedMessage`
    for a signed body that is not a manifest)."""
    envelope = crypto.Envelope.from_dict(signed)
    body = crypto.open_envelope(envelope, silo_public, federation=federation, round_number=round_number, phase=phase,
                                sender=silo)
    manifest = Manifest.from_dict(body)
    if manifest.binding() != (federation, round_number, phase, silo):
        raise StaleMessage("the manifest's body is bound to another round, phase or silo than its signature")
    return manifest


# -- a silo's evaluation report ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationReport:
    """The metrics a silo measured on its own holdout for each model it was asked to score, the
    bootstrap intervals of the gate's metric (`GateIntervals`) and, when the gate checks groups, the
    candidate's group counts (`GroupReport`): aggregates only, never rows."""

    federation: str
    round: int
    silo: str
    metrics: Mapping[str, Mapping[str, float]]  # model name (candidate, champion) -> metric -> value
    intervals: GateIntervals | None = None
    groups: GroupReport | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"v": VERSION, "federation": self.federation, "round": self.round, "silo": self.silo,
               "metrics": {name: dict(m) for name, m in self.metrics.items()}}
        if self.intervals is not None:
            out["intervals"] = self.intervals.to_dict()
        if self.groups is not None:
            out["groups"] = self.groups.to_dict()
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> EvaluationReport:
        k = "evaluation report"
        raw = _mapping(raw, k)
        _version(raw, k)
        metrics = raw.get("metrics")
        if not isinstance(metrics, Mapping) or "candidate" not in metrics:
            raise MalformedMessage(f"{k}: field 'metrics' must hold the candidate's metrics")
        intervals = raw.get("intervals")
        groups = raw.get("groups")
        return cls(federation=_str(raw, k, "federation"), round=_int(raw, k, "round"), silo=_str(raw, k, "silo"),
                   metrics={str(name): _floats(metrics, k, name) for name in metrics},
                   intervals=None if intervals is None else GateIntervals.from_dict(intervals),
                   groups=None if groups is None else GroupReport.from_dict(groups))


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupReport:
    """A silo's confusion counts of the candidate's predictions ``p >= threshold`` per group of the
    sensitive `column` on its holdout (`fl_core.fairness`), after small-cell suppression: no group
    under `min_group_size` rows is in `counts`, and `suppressed` says how many groups were withheld
    (never their values). A report with a group under `min_group_size` is refused."""

    column: str
    threshold: float
    min_group_size: int
    counts: Mapping[str, GroupCounts]
    suppressed: int = 0

    def __post_init__(self) -> None:
        if self.suppressed < 0:
            raise MalformedMessage(f"group report: field 'suppressed' must be >= 0, got {self.suppressed}")
        small = sorted(g for g, c in self.counts.items() if c.n < self.min_group_size)
        if small:
            raise MalformedMessage(f"group report: groups {small} are under min_group_size {self.min_group_size} "
                                   "and must be withheld")

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "threshold": self.threshold, "min_group_size": self.min_group_size,
                "counts": {g: c.to_dict() for g, c in sorted(self.counts.items())}, "suppressed": self.suppressed}

    @classmethod
    def from_dict(cls, raw: Any) -> GroupReport:
        k = "group report"
        raw = _mapping(raw, k)
        counts = raw.get("counts", {})
        if not isinstance(counts, Mapping):
            raise _bad(k, "counts", counts, "an object of group counts")
        parsed = {}
        for group, fields in counts.items():
            where = f"counts.{group}"
            fields = _mapping(fields, f"{k} {where}")
            try:
                parsed[str(group)] = GroupCounts.from_dict({name: _int(fields, f"{k} {where}", name)
                                                            for name in GroupCounts.__dataclass_fields__})
            except ValueError as exc:
                raise MalformedMessage(f"{k}: field {where!r}: {exc}") from None
        return cls(column=_str(raw, k, "column"), threshold=_float(raw, k, "threshold"),
                   min_group_size=_int(raw, k, "min_group_size"), counts=parsed,
                   suppressed=_int(raw, k, "suppressed", 0))


@dataclass(frozen=True, slots=True, kw_only=True)
class GateIntervals:
    """A silo's bootstrap intervals of the gate's metric on its holdout (`fl_core.bootstrap`): the
    candidate's value, and its paired gain over the champion (positive is better) when it scored both."""

    metric: str
    confidence: float
    candidate: Interval
    gain: Interval | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "confidence": self.confidence, "candidate": self.candidate.to_dict(),
                "gain": None if self.gain is None else self.gain.to_dict()}

    @classmethod
    def from_dict(cls, raw: Any) -> GateIntervals:
        k = "gate intervals"
        raw = _mapping(raw, k)

        def interval(name: str) -> Interval | None:
            value = raw.get(name)
            if value is None and name == "gain":
                return None
            fields = _floats(raw, k, name)
            try:
                return Interval.from_dict(fields)
            except KeyError as exc:
                raise _bad(k, name, value, f"an interval with {exc}") from None

        return cls(metric=_str(raw, k, "metric"), confidence=_float(raw, k, "confidence"),
                   candidate=interval("candidate"), gain=interval("gain"))


# -- the coordinator's reports ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class FederationPrivacy:
    """Silo-level DP-FedAvg in one round: the federation's ledger after the charge."""

    epsilon: float
    budget: float
    delta: float
    accountant: str
    placement: str
    noise_multiplier: float
    clip_norm: float
    clipped_fraction: float
    noise_shares: int | None = None  # distributed placement: the Skellam shares in the sum
    sample_rate: float = 1.0  # q = k / n of the eligible silos drawn to train this round (as charged)
    # with sampling: ε of the same charges at q = 1, the bound for a party that knows who was sampled
    epsilon_without_sampling: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"epsilon": self.epsilon, "budget": self.budget, "delta": self.delta, "accountant": self.accountant,
               "placement": self.placement, "noise_multiplier": self.noise_multiplier, "clip_norm": self.clip_norm,
               "clipped_fraction": self.clipped_fraction}
        if self.noise_shares is not None:
            out["noise_shares"] = self.noise_shares
        if self.sample_rate != 1.0 or self.epsilon_without_sampling is not None:
            out["sample_rate"] = self.sample_rate
            out["epsilon_without_sampling"] = self.epsilon_without_sampling
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> FederationPrivacy:
        k = "federation privacy"
        raw = _mapping(raw, k)
        return cls(epsilon=_float(raw, k, "epsilon"), budget=_float(raw, k, "budget"), delta=_float(raw, k, "delta"),
                   accountant=_str(raw, k, "accountant"), placement=_str(raw, k, "placement"),
                   noise_multiplier=_float(raw, k, "noise_multiplier"), clip_norm=_float(raw, k, "clip_norm"),
                   clipped_fraction=_float(raw, k, "clipped_fraction"),
                   noise_shares=_int(raw, k, "noise_shares") if _optional(raw, "noise_shares") else None,
                   sample_rate=_float(raw, k, "sample_rate", 1.0),
                   epsilon_without_sampling=(_float(raw, k, "epsilon_without_sampling")
                                             if _optional(raw, "epsilon_without_sampling") else None))

    def metrics(self) -> dict[str, float]:
        out = {f"dp.{name}": float(getattr(self, name))
               for name in ("epsilon", "delta", "noise_multiplier", "clip_norm", "clipped_fraction")}
        if self.noise_shares is not None:
            out["dp.noise_shares"] = float(self.noise_shares)
        if self.sample_rate != 1.0 or self.epsilon_without_sampling is not None:
            out["dp.sample_rate"] = float(self.sample_rate)
        if self.epsilon_without_sampling is not None:
            out["dp.epsilon_without_sampling"] = float(self.epsilon_without_sampling)
        return out

    def describe(self) -> str:
        line = dp_line(f"silo-level DP-FedAvg, {self.placement} noise", self.epsilon, self.budget, self.delta,
                       self.noise_multiplier, self.clip_norm, self.accountant)
        line += f", {self.noise_shares} noise shares" if self.noise_shares is not None else ""
        if self.epsilon_without_sampling is not None:
            line += (f", silos sampled at q {self.sample_rate:.4g} (epsilon {self.epsilon_without_sampling:.4f} "
                     "against a party that knows the sample)")
        return line


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketSum:
    silos: tuple[str, ...]
    threshold: int
    summed: tuple[str, ...]
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return {"silos": list(self.silos), "threshold": self.threshold, "summed": list(self.summed),
                "weight": round(self.weight, 3)}


@dataclass(frozen=True, slots=True, kw_only=True)
class SecAggStats:
    """What secure aggregation did in a round: who was masked, dropped, recovered, clipped, how many
    bytes each silo published; in bucketed mode each bucket's sum and the buckets that were lost."""

    masked: int
    dropped: int
    recovered_silos: tuple[str, ...]
    threshold: int | Mapping[str, int]
    bytes: Mapping[str, int]
    clipped: tuple[str, ...]
    buckets: Mapping[str, BucketSum] | None = None
    lost: Mapping[str, str] | None = None

    @property
    def recovered(self) -> int:
        return len(self.recovered_silos)

    def to_dict(self) -> dict[str, Any]:
        out = {"masked": self.masked, "dropped": self.dropped, "recovered": self.recovered,
               "recovered_silos": list(self.recovered_silos),
               "threshold": self.threshold if isinstance(self.threshold, int) else dict(self.threshold),
               "bytes": dict(self.bytes), "clipped": list(self.clipped)}
        if self.buckets is not None:
            out["buckets"] = {name: b.to_dict() for name, b in self.buckets.items()}
            out["lost"] = dict(self.lost or {})
        return out

    def metrics(self) -> dict[str, float]:
        out = {"secagg.masked": float(self.masked), "secagg.dropped": float(self.dropped),
               "secagg.recovered": float(self.recovered), "secagg.clipped": float(len(self.clipped))}
        if self.buckets is not None:
            out["secagg.buckets"] = float(len(self.buckets))
            out["secagg.buckets_lost"] = float(len(self.lost or {}))
        out.update({f"secagg.bytes.{silo}": float(sent) for silo, sent in self.bytes.items()})
        return out

    def tags(self, prefix: str) -> dict[str, str]:
        threshold = self.threshold if isinstance(self.threshold, int) else "per bucket"
        tags = {f"{prefix}secagg": f"threshold {threshold}, masked {self.masked}, dropped {self.dropped}, "
                                   f"recovered {','.join(self.recovered_silos) or 'none'}"}
        if self.buckets is not None:  # which silos were summed together, and which buckets were lost
            tags[f"{prefix}buckets"] = "; ".join(
                [f"{name}: {','.join(b.summed)} of {','.join(b.silos)} (threshold {b.threshold})"
                 for name, b in self.buckets.items()] + [f"lost {why}" for why in (self.lost or {}).values()])
        return tags


@dataclass(frozen=True, slots=True, kw_only=True)
class AnomalyReport:
    """Anomaly scores of a round's updates (trusted) or bucket means (bucketed), the names flagged,
    every silo's streak of flagged rounds, the silos reported and the names left out of the merge."""

    scores: Mapping[str, Mapping[str, Any]]
    flagged: tuple[str, ...]
    streaks: Mapping[str, int]
    reported: tuple[str, ...]
    excluded: tuple[str, ...]
    members: Mapping[str, tuple[str, ...]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"scores": {n: dict(s) for n, s in self.scores.items()}, "flagged": list(self.flagged),
               "streaks": dict(self.streaks), "reported": list(self.reported), "excluded": list(self.excluded)}
        if self.members is not None:
            out["members"] = {name: list(silos) for name, silos in self.members.items()}
        return out

    @classmethod
    def streaks_of(cls, raw: Any) -> dict[str, int]:
        """The streaks of a previous round's report (as its record holds it), {} if there was none."""
        if not isinstance(raw, Mapping):
            return {}
        streaks = raw.get("streaks", {})
        if not isinstance(streaks, Mapping):
            raise MalformedMessage("anomaly report: field 'streaks' must be an object")
        return {str(k): int(v) for k, v in streaks.items()}

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, score in self.scores.items():
            for metric in ("norm", "cosine", "distance", "norm_z", "distance_z"):
                if score.get(metric) is not None:
                    out[f"anomaly.{name}.{metric}"] = float(score[metric])
            out[f"anomaly.{name}.flagged"] = 1.0 if score.get("flags") else 0.0
        out["anomaly.flagged"] = float(len(self.flagged))
        out["anomaly.reported"] = float(len(self.reported))
        out["anomaly.excluded"] = float(len(self.excluded))
        return out

    def describe(self) -> str:
        return (f"flagged {','.join(self.flagged) or 'none'}; excluded {','.join(self.excluded) or 'none'}; "
                f"reported {','.join(self.reported) or 'none'}")
