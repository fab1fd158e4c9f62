"""Evaluation metrics for a classifier: accuracy, ROC AUC, log loss.

ROC AUC is the Mann–Whitney statistic with mid-ranks for ties (Hanley & McNeil, Radiology 1982);
it is undefined (NaN) when the labels hold one class, which happens on small, skewed silos: the
caller must treat NaN as "not measurable here", not as zero. For more than two classes
(probabilities of shape (rows, classes)) accuracy is that of the most probable class, log loss is
the cross-entropy, and ROC AUC is the unweighted mean of the one-vs-rest AUCs of the classes
present with both labels (Hand & Till's setting, Machine Learning 2001, in its simpler
one-vs-rest form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn

METRICS = ("accuracy", "roc_auc", "log_loss")
HIGHER_IS_BETTER = {"accuracy": True, "roc_auc": True, "log_loss": False}


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    n: int
    accuracy: float
    roc_auc: float
    log_loss: float

    def get(self, name: str) -> float:
        if name not in METRICS:
            raise KeyError(name)
        return float(getattr(self, name))

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "accuracy": self.accuracy, "roc_auc": self.roc_auc, "log_loss": self.log_loss}


def accuracy(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    if len(y) == 0:
        return math.nan
    p = np.asarray(p)
    predicted = p.argmax(axis=1) if p.ndim == 2 else (p >= threshold).astype(np.int64)
    return float(np.mean(predicted == np.asarray(y).astype(np.int64)))


def _midranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(values)]))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of 1-based ranks start+1..end
    return ranks


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2; NaN for one class."""
    y = np.asarray(y).astype(np.int64)
    n_pos = int(np.sum(y == 1))
    n_neg = int(np.sum(y == 0))
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _midranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def multiclass_roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes whose one-vs-rest split has both labels; NaN if none."""
    y = np.asarray(y).astype(np.int64)
    aucs = [roc_auc((y == c).astype(np.int64), p[:, c]) for c in range(p.shape[1])]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else math.nan


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    if len(y) == 0:
        return math.nan
    if np.ndim(p) == 2:  # cross-entropy of the true class's probability
        rows = np.arange(len(y))
        return float(-np.mean(np.log(np.clip(np.asarray(p, dtype=np.float64)[rows, np.asarray(y, dtype=np.int64)],
                                             eps, 1.0))))
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """P(class 1) per row, shape (rows,), for a one-logit model; softmax probabilities, shape
    (rows, classes), for a model with one logit per class."""
    import torch  # here: the metrics and the gate do not need it

    model.eval()
    with torch.no_grad():
        outputs = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        if outputs.shape[-1] == 1:
            return torch.sigmoid(outputs.squeeze(-1)).double().numpy()
        return torch.softmax(outputs.double(), dim=-1).numpy()


def scores(y: np.ndarray, p: np.ndarray) -> Metrics:
    """Every metric of predicted probabilities `p` against labels `y`."""
    auc = multiclass_roc_auc(y, p) if np.ndim(p) == 2 else roc_auc(y, p)
    return Metrics(n=int(len(y)), accuracy=accuracy(y, p), roc_auc=auc, log_loss=log_loss(y, p))


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> Metrics:
    return scores(y, predict_proba(model, x))


def pooled(metrics: dict[str, Metrics]) -> dict[str, float]:
    """Federation-wide figures from per-silo ones: accuracy and log loss weighted by holdout size
    (exact for the pooled holdout), ROC AUC as the mean over silos where it is defined (AUC does
    not pool from per-silo values)."""
    total = sum(m.n for m in metrics.values())
    if total == 0:
        return {"accuracy": math.nan, "log_loss": math.nan, "roc_auc_mean": math.nan}
    aucs = [m.roc_auc for m in metrics.values() if not math.isnan(m.roc_auc)]
    return {
        "accuracy": sum(m.accuracy * m.n for m in metrics.values()) / total,
        "log_loss": sum(m.log_loss * m.n for m in metrics.values()) / total,
        "roc_auc_mean": float(np.mean(aucs)) if aucs else math.nan,
    }
