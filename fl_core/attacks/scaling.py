"""Scaling and model replacement, after Bagdasaryan, Veit, Hua, Estrin & Shmatikov, "How To
Backdoor Federated Learning" (AISTATS 2020).

Averaging dilutes one silo's update by its share of the total weight (and the server learning
rate η). The attacker boosts its update u = X − G (its backdoored model X minus the global model G)
by γ so that, when the honest updates roughly cancel out (near convergence), the aggregate step
replaces G by X: γ = n / η for n equally weighted silos (the paper's formula).

Under fedsilo's sample-weighted FedAvg, with W the total weight of the round and W_m that of the
malicious silos taking part, γ = W / (η · W_m) makes the malicious silos together replace the
global model by the weighted mean of their backdoored models; with one malicious silo of weight w
this is W / (η · w), and n / η when every silo weighs the same (`replacement_boost`).

Needs knowledge of the round's weights (the sample counts FedAvg uses) and of η.
"""

from __future__ import annotations

import numpy as np

from fl_core.attacks._checks import as_update, check_positive, float_dtype
from fl_core.attacks.errors import AttackParameterError


def replacement_boost(total_weight: float, malicious_weight: float, server_lr: float = 1.0) -> float:
    """γ = W / (η · W_m): the boost under which the malicious silos' weighted updates move the
    global model by their own (unboosted) weighted mean update, undiluted."""
    check_positive(total_weight, "total_weight")
    check_positive(malicious_weight, "malicious_weight")
    check_positive(server_lr, "server_lr")
    if malicious_weight > total_weight:
        raise AttackParameterError(
            "malicious_weight", f"malicious_weight {malicious_weight!r} exceeds total_weight {total_weight!r}")
    return total_weight / (server_lr * malicious_weight)


def scale_update(update: np.ndarray, boost: float) -> np.ndarray:
    """boost · update, as a new array of the update's (floating) dtype."""
    check_positive(boost, "boost")
    u = as_update(update)
    return (boost * u.astype(np.float64)).astype(float_dtype(u))
