"""q-FFL: fairness-aware aggregation weights (Li, Sanjabi, Beirami & Smith, "Fair Resource
Allocation in Federated Learning", ICLR 2020).

q-FFL minimises Σ_k p_k F_k(w)^(q+1) / (q+1) instead of FedAvg's Σ_k p_k F_k(w): for q > 0 a silo
whose loss is high weighs more, which pulls the model towards the silos it serves worst and
narrows the spread of accuracy across silos (q = 0 is FedAvg). Its gradient is
Σ_k p_k F_k(w)^q ∇F_k(w), so one round of FedAvg whose silos are weighted by
``n_k · F_k(w_t)^q`` — each silo's training loss at the round's global model, measured before it
trains — follows it; this is the reweighting, with the server's learning rate as the step size
(the paper's q-FedAvg adds a Lipschitz-based step normalisation, which this leaves to the server
optimiser). The loss is a mean over the silo's training rows and travels as part of the weight,
the same place the training-set size travels today.
"""

from __future__ import annotations

import math

import numpy as np

# A loss of exactly 0 (a silo fitted perfectly) would get no weight at all; the floor keeps every
# silo in the average, as FedAvg does.
LOSS_FLOOR = 1e-6


def qffl_weight(n_samples: int, loss: float, q: float) -> float:
    """n · max(F, floor)^q: the silo's weight in a q-FFL round."""
    if not (math.isfinite(q) and q >= 0):
        raise ValueError(f"q must be a finite number >= 0, got {q!r}")
    if not math.isfinite(loss) or loss < 0:
        raise ValueError(f"a silo's loss must be a finite number >= 0, got {loss!r}")
    if n_samples < 1:
        raise ValueError(f"a silo needs at least one training row, got {n_samples!r}")
    return float(n_samples) * max(float(loss), LOSS_FLOOR) ** q


def mean_loss(model, x: np.ndarray, y: np.ndarray) -> float:
    """The mean training loss of `model` on (x, y): binary or softmax cross-entropy, as it trains."""
    import torch

    from fl_core.models import output_classes
    from fl_core.training import classification_loss, logits, training_tensors

    classes = output_classes(model)
    features, labels = training_tensors(x, y, classes)
    model.eval()
    with torch.no_grad():
        return float(classification_loss(classes)(logits(model(features), classes), labels))
