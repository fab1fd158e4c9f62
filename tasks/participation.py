"""Who answered a phase: the verified manifests of the silos that delivered, and why the others did not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fl_core.messages import Manifest, PrivacyRelease, TrainResult
from infra.dispatch import SiloOutcome


@dataclass(frozen=True, slots=True, kw_only=True)
class Participation:
    """Which silos answered a phase, which sat out and why, and their row-free summaries."""

    manifests: Mapping[str, Manifest]
    out: Mapping[str, str]
    validations: Mapping[str, dict] = field(default_factory=dict)

    @property
    def silos_in(self) -> list[str]:
        return sorted(self.manifests)

    def without(self, reasons: Mapping[str, str]) -> Participation:
        """The same, with the silos in `reasons` moved out for those reasons."""
        return Participation(manifests={s: m for s, m in self.manifests.items() if s not in reasons},
                             out={**self.out, **reasons}, validations=self.validations)

    def train(self, silo: str) -> TrainResult:
        result = self.manifests[silo].result
        if not isinstance(result, TrainResult):
            raise TypeError(f"{silo}'s manifest is not a training manifest")
        return result


def sort_outcomes(outcomes: Sequence[SiloOutcome]) -> Participation:
    """Split a phase's verified outcomes into silos that delivered and silos that sat out (with reasons)."""
    manifests, out, validations = {}, {}, {}
    for outcome in outcomes:
        manifest = outcome.manifest
        if manifest is None:
            out[outcome.silo_id] = outcome.error or "no answer"
            continue
        if manifest.validation is not None:
            validations[outcome.silo_id] = dict(manifest.validation)
        if not manifest.ok:
            out[outcome.silo_id] = manifest.reason or "sat out"
            continue
        manifests[outcome.silo_id] = manifest
    return Participation(manifests=manifests, out=out, validations=validations)


def privacy_spent(training: Participation) -> dict[str, PrivacyRelease]:
    """The record-level DP release of every silo that trained: a silo that charged its ledger and then
    dropped out of the sum (or had its update rejected) still spent its ε."""
    spent = {}
    for silo in training.manifests:
        release = training.train(silo).privacy
        if release is not None:
            spent[silo] = release
    return spent
