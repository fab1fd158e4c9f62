"""The adversary a simulation loop consults: two hooks, identity unless an `AttackSpec` says otherwise.

A loop calls `Adversary.poison_data` on each silo's training split before local training and
`Adversary.poison_updates` on the round's updates before aggregation. Both return their inputs
unchanged for honest silos, for attacks of the other level, and when the adversary has no spec
(``Adversary()``), so a loop can always call them and nothing is attacked unless a spec names the
attack and its silos.

Colluding attacks (``alie``, ``ipm``) read the other silos' updates of the round — an omniscient
attacker with ``knowledge: honest`` — which is why `poison_updates` takes every update of the
round and not only the malicious silos'.

`pick_malicious` draws the malicious silos for a Byzantine fraction from an injected generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fl_core.attacks._checks import check_fraction, float_dtype
from fl_core.attacks.alie import alie_update, alie_z_max
from fl_core.attacks.backdoor import plant_backdoor
from fl_core.attacks.errors import AttackError
from fl_core.attacks.gaussian import gaussian_update
from fl_core.attacks.ipm import ipm_update
from fl_core.attacks.label_flip import flip_labels
from fl_core.attacks.scaling import replacement_boost, scale_update
from fl_core.attacks.sign_flip import sign_flip
from fl_core.attacks.spec import DATA_KINDS, UPDATE_KINDS, AttackSpec


def pick_malicious(silo_ids: Sequence[str], fraction: float, rng: np.random.Generator) -> tuple[str, ...]:
    """⌊fraction · n⌋ of the n silos, drawn by `rng` without replacement, in sorted order. Never
    more than the fraction asked for (a bench promising "at most 20 % Byzantine" stays true); the
    draw does not depend on the order of `silo_ids`. Refuses a fraction that picks no silo."""
    check_fraction(fraction, "fraction")
    ids = sorted(silo_ids)
    if len(set(ids)) != len(ids):
        raise AttackError(f"silo ids must be distinct, got {list(silo_ids)!r}")
    count = math.floor(fraction * len(ids) + 1e-9)  # tolerant of 0.29 · 100 = 28.999…
    if count == 0:
        raise AttackError(f"a Byzantine fraction of {fraction} of {len(ids)} silos picks no silo")
    return tuple(sorted(ids[i] for i in rng.choice(len(ids), size=count, replace=False)))


@dataclass(frozen=True, slots=True)
class Adversary:
    """The attack `spec` applied by two hooks; ``Adversary()`` attacks nothing."""

    spec: AttackSpec | None = None

    @property
    def malicious(self) -> tuple[str, ...]:
        return () if self.spec is None else self.spec.silos

    def is_malicious(self, silo_id: str) -> bool:
        return silo_id in self.malicious

    def poison_data(self, silo_id: str, x: np.ndarray, y: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A malicious silo's training split as its data-level attack leaves it (new arrays); the
        same (x, y) objects for an honest silo, an update-level attack or no attack."""
        spec = self.spec
        if spec is None or spec.kind not in DATA_KINDS or silo_id not in spec.silos:
            return x, y
        if spec.kind == "label_flip":
            return x, flip_labels(y, spec.flip_fraction, rng)
        return plant_backdoor(x, y, spec.trigger, spec.target, spec.poison_fraction, rng)

    def poison_updates(self, updates: Mapping[str, np.ndarray], weights: Mapping[str, float],
                       rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A new dict of the round's updates in which the malicious silos taking part send what
        their update-level attack makes them send; honest silos' arrays are passed through (not
        copied). `weights` holds each silo's aggregation weight (the same keys as `updates`);
        `rng` draws the random updates of ``gaussian_noise``, one silo after another in sorted id
        order. Identity for a data-level attack, no attack, or no malicious silo in the round."""
        out = dict(updates)
        spec = self.spec
        if spec is None or spec.kind not in UPDATE_KINDS:
            return out
        malicious = sorted(s for s in updates if s in spec.silos)
        if not malicious:
            return out
        if set(weights) != set(updates):
            raise AttackError(f"weights are for silos {sorted(weights)}, updates for {sorted(updates)}")
        if spec.kind == "sign_flip":
            for s in malicious:
                out[s] = sign_flip(updates[s], spec.magnitude)
        elif spec.kind in ("scaling", "model_replacement"):
            boost = spec.boost if spec.boost is not None else self._replacement_boost(weights, malicious)
            for s in malicious:
                out[s] = scale_update(updates[s], boost)
        elif spec.kind == "gaussian_noise":
            for s in malicious:
                out[s] = gaussian_update(updates[s], spec.std, rng)
        else:
            reference = self._reference(updates, malicious)
            if spec.kind == "alie":
                z = spec.z if spec.z is not None else alie_z_max(len(updates), len(malicious))
                vector = alie_update(reference, z)
            else:
                vector = ipm_update(reference, spec.epsilon)
            for s in malicious:
                out[s] = vector.astype(float_dtype(np.asarray(updates[s])))
        return out

    def _replacement_boost(self, weights: Mapping[str, float], malicious: list[str]) -> float:
        total = float(sum(weights.values()))
        own = float(sum(weights[s] for s in malicious))
        if not (math.isfinite(total) and own > 0):
            shown = {s: weights[s] for s in malicious}
            raise AttackError(f"the model-replacement boost needs positive weights for the malicious silos, "
                              f"got {shown} of a total {total}")
        return replacement_boost(total, own, self.spec.server_lr)

    def _reference(self, updates: Mapping[str, np.ndarray], malicious: list[str]) -> list[np.ndarray]:
        """The benign updates a colluding attack computes its statistics from, in sorted id order."""
        knowledge = self.spec.knowledge
        if knowledge == "own":
            chosen = malicious
        elif knowledge == "all":
            chosen = sorted(updates)
        else:
            chosen = sorted(s for s in updates if s not in malicious)
            if not chosen:
                raise AttackError(f"{self.spec.kind} with knowledge 'honest' needs an honest update in the round; "
                                  f"every silo taking part is malicious ({malicious})")
        return [updates[s] for s in chosen]
