"""Which attack a federation suffers and where: one small, validated config object.

`AttackSpec` names the attack (`kind`), the malicious silos and the attack's parameters, each
with a default. A parameter that the kind does not use must stay at its default: ``kind: sign_flip``
with ``epsilon: 5`` is refused instead of silently running a different experiment.

Kinds, their level, what the malicious silos do, and the parameters each reads:

- ``label_flip`` (data): train on 1 − y for a fraction of their rows — flip_fraction;
- ``backdoor`` (data): stamp a trigger on a fraction of their rows and label them with the target
  class — trigger_columns, trigger_values, target, poison_fraction;
- ``model_replacement`` (data and update): ``backdoor``'s data, then ``scaling``'s boost on the
  update trained on it (Bagdasaryan et al.'s attack whole) — the parameters of both;
- ``sign_flip`` (update): send −λ·u — magnitude (λ);
- ``scaling`` (update): send γ·u — boost (γ), server_lr (η);
- ``gaussian_noise`` (update): send a draw from N(0, σ² I) — std (σ);
- ``alie`` (update, colluding): all send μ − z·σ of the benign updates — z, knowledge;
- ``ipm`` (update, colluding): all send −ε·μ of the benign updates — epsilon (ε), knowledge.

The papers behind each are cited in their modules (`label_flip`, `backdoor`, `sign_flip`,
`scaling`, `gaussian`, `alie`, `ipm`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from fl_core.attacks._checks import (
    check_fraction,
    check_label,
    check_non_negative,
    check_positive,
)
from fl_core.attacks.backdoor import Trigger, check_trigger
from fl_core.attacks.errors import AttackParameterError

AttackKind = Literal[
    "label_flip", "backdoor", "model_replacement", "sign_flip", "scaling", "gaussian_noise", "alie", "ipm"
]
Knowledge = Literal["honest", "all", "own"]

# The parameters each kind reads; every other parameter must keep its default.
PARAMETERS: dict[str, tuple[str, ...]] = {
    "label_flip": ("flip_fraction",),
    "backdoor": ("trigger_columns", "trigger_values", "target", "poison_fraction"),
    "model_replacement": ("trigger_columns", "trigger_values", "target", "poison_fraction", "boost", "server_lr"),
    "sign_flip": ("magnitude",),
    "scaling": ("boost", "server_lr"),
    "gaussian_noise": ("std",),
    "alie": ("z", "knowledge"),
    "ipm": ("epsilon", "knowledge"),
}
KINDS: tuple[str, ...] = tuple(PARAMETERS)
# Kinds that change a malicious silo's training data, and kinds that change its update.
DATA_KINDS = frozenset({"label_flip", "backdoor", "model_replacement"})
UPDATE_KINDS = frozenset({"model_replacement", "sign_flip", "scaling", "gaussian_noise", "alie", "ipm"})
# Kinds whose malicious silos send one shared vector computed from other silos' updates.
COLLUDING_KINDS = frozenset({"alie", "ipm"})
KNOWLEDGE: tuple[str, ...] = ("honest", "all", "own")


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackSpec:
    """One attack on a federation, for experiments: nothing is attacked unless a spec names it.

    ``kind``: the attack (see the module docstring); ``silos``: the ids of the malicious silos (at
    least one; `pick_malicious` draws them for a Byzantine fraction);
    ``flip_fraction``: the fraction of a malicious silo's rows whose label is flipped;
    ``trigger_columns`` / ``trigger_values``: the backdoor trigger, feature ``trigger_columns[i]``
    set to ``trigger_values[i]``; ``target``: the class the backdoor sends triggered rows to;
    ``poison_fraction``: the fraction of a malicious silo's rows that get the trigger;
    ``magnitude``: λ in −λ·u; ``boost``: γ in γ·u, or None for the model-replacement boost
    W / (η · W_m) computed from the round's weights; ``server_lr``: the η the attacker assumes;
    ``std``: σ of the random update; ``z``: ALIE's z, or None for the paper's z_max for the round's
    n and f; ``epsilon``: IPM's ε; ``knowledge``: which benign updates a colluding attack computes
    its statistics from — ``honest`` (every honest silo's update of the round: an omniscient
    attacker), ``all`` (the honest updates and the malicious silos' own benign updates), ``own``
    (only the malicious silos' own benign updates, as the ALIE paper's attacker estimates them).
    """

    __pydantic_config__ = {"extra": "forbid"}

    kind: AttackKind
    silos: tuple[str, ...]
    flip_fraction: float = 1.0
    trigger_columns: tuple[int, ...] = ()
    trigger_values: tuple[float, ...] = ()
    target: int = 1
    poison_fraction: float = 0.2
    magnitude: float = 1.0
    boost: float | None = None
    server_lr: float = 1.0
    std: float = 1.0
    z: float | None = None
    epsilon: float = 0.1
    knowledge: Knowledge = "honest"

    def __post_init__(self) -> None:
        if self.kind not in PARAMETERS:
            raise AttackParameterError("kind", f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        self._check_silos()
        for name in ("trigger_columns", "trigger_values"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        used = PARAMETERS[self.kind]
        for f in fields(self):
            if f.name in ("kind", "silos") or f.name in used:
                continue
            if getattr(self, f.name) != f.default:
                raise AttackParameterError(
                    f.name, f"{f.name} is not a parameter of {self.kind} attacks (theirs: {', '.join(used)}), "
                            f"got {f.name}={getattr(self, f.name)!r}")
        check_fraction(self.flip_fraction, "flip_fraction")
        check_fraction(self.poison_fraction, "poison_fraction")
        check_label(self.target, "target")
        if self.kind in ("backdoor", "model_replacement"):
            check_trigger(self.trigger_columns, self.trigger_values, "trigger_columns", "trigger_values")
        check_positive(self.magnitude, "magnitude")
        if self.boost is not None:
            check_positive(self.boost, "boost")
        check_positive(self.server_lr, "server_lr")
        check_positive(self.std, "std")
        if self.z is not None:
            check_non_negative(self.z, "z")
        check_positive(self.epsilon, "epsilon")
        if self.knowledge not in KNOWLEDGE:
            raise AttackParameterError("knowledge", f"knowledge must be one of {list(KNOWLEDGE)}, got {self.knowledge!r}")

    def _check_silos(self) -> None:
        silos = self.silos
        if isinstance(silos, str) or not isinstance(silos, (tuple, list)):
            raise AttackParameterError("silos", f"silos must be a list of silo ids, got {silos!r}")
        if not silos:
            raise AttackParameterError("silos", "silos must name at least one malicious silo, got none")
        if any(not isinstance(s, str) or not s for s in silos):
            raise AttackParameterError("silos", f"silos must be non-empty silo id strings, got {list(silos)!r}")
        if len(set(silos)) != len(silos):
            raise AttackParameterError("silos", f"silos names a silo twice: {list(silos)!r}")
        object.__setattr__(self, "silos", tuple(silos))

    @property
    def trigger(self) -> Trigger | None:
        """The backdoor trigger of a ``backdoor`` or ``model_replacement`` attack, else None."""
        if self.kind not in ("backdoor", "model_replacement"):
            return None
        return Trigger(columns=self.trigger_columns, values=self.trigger_values)
