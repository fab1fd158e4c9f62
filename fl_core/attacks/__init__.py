"""Byzantine and poisoning attacks, for experiments on robust aggregation: nothing here runs unless
an `AttackSpec` names the attack and its malicious silos.

Two layers, as elsewhere in fl_core:

- pure functions over arrays, one attack per module with its paper cited there —
  data level (a malicious silo's training data, before local training): `flip_labels`,
  `plant_backdoor` with `apply_trigger` / `backdoor_test_rows` / `backdoor_success_rate` to
  measure a backdoor; update level (a malicious silo's update vector, before aggregation):
  `sign_flip`, `scale_update` / `replacement_boost`, `gaussian_update`, `alie_update` /
  `alie_z_max`, `ipm_update`;
- `AttackSpec`, a validated config, and `Adversary`, whose hooks `poison_data` and
  `poison_updates` a simulation loop calls (identity for honest silos and with no spec);
  `pick_malicious` draws the malicious silos for a Byzantine fraction.

Randomness (which rows are poisoned, which silos are malicious, random updates) comes only from an
injected `np.random.Generator`.
"""

from __future__ import annotations

from fl_core.attacks.adversary import Adversary, pick_malicious
from fl_core.attacks.alie import alie_update, alie_z_max
from fl_core.attacks.backdoor import Trigger, apply_trigger, backdoor_success_rate, backdoor_test_rows, plant_backdoor
from fl_core.attacks.errors import AttackError, AttackParameterError
from fl_core.attacks.gaussian import gaussian_update
from fl_core.attacks.ipm import ipm_update
from fl_core.attacks.label_flip import flip_labels
from fl_core.attacks.scaling import replacement_boost, scale_update
from fl_core.attacks.sign_flip import sign_flip
from fl_core.attacks.spec import COLLUDING_KINDS, DATA_KINDS, KINDS, PARAMETERS, UPDATE_KINDS, AttackSpec

__all__ = [
    "COLLUDING_KINDS",
    "DATA_KINDS",
    "KINDS",
    "PARAMETERS",
    "UPDATE_KINDS",
    "Adversary",
    "AttackError",
    "AttackParameterError",
    "AttackSpec",
    "Trigger",
    "alie_update",
    "alie_z_max",
    "apply_trigger",
    "backdoor_success_rate",
    "backdoor_test_rows",
    "flip_labels",
    "gaussian_update",
    "ipm_update",
    "pick_malicious",
    "plant_backdoor",
    "replacement_boost",
    "scale_update",
    "sign_flip",
]
