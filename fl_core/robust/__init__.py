"""Byzantine-robust aggregation: rules that combine n updates so that a minority of bad ones (faulty or
malicious silos) cannot drag the result anywhere they like.

Two layers, as elsewhere in fl_core:

- pure functions over arrays, one rule per module with its paper cited there — `coordinate_median` and
  `coordinate_trimmed_mean` (`coordinate`), `krum` / `multi_krum` / `pairwise_sq_distances` (`krum`),
  `bulyan`, `geometric_median`, `centered_clipping`, `norm_bounded_mean`;
- small frozen dataclasses, each callable as ``agg(updates, weights) -> np.ndarray`` like
  `fl_core.dp.fedavg`'s aggregators, so that wrappers compose (``Clipped(TrimmedMean(beta=0.2), C)``):
  `Mean`, `Median`, `TrimmedMean`, `Krum`, `MultiKrum`, `Bulyan`, `GeometricMedian`,
  `CenteredClipping`, `NormBounding`, and the wrapper `Bucketed(inner, bucket_size, rng)`;
- `make_aggregator(name, **params)` and `tolerated_faults(name, n)` for configs.

Every rule takes n flat updates (a sequence of 1-D arrays or an (n, d) array, read as float32) and n
non-negative weights; rank- and distance-based rules ignore the weights (a Byzantine silo could claim
any weight) but still check them. Each returns a new float32 vector, states its breakdown point and its
order-invariance tolerance, and refuses what it cannot handle with an `AggregationError` subclass:
`TooFewUpdates` (none, or n too small for f), `ShapeMismatch`, `NonFiniteUpdate`, `BadWeights`;
`UnknownAggregator` for a name the registry does not know.
"""

from __future__ import annotations

from fl_core.robust.bucketing import Bucketed, assign_buckets
from fl_core.robust.bulyan import Bulyan, bulyan
from fl_core.robust.centered_clipping import CenteredClipping, centered_clipping
from fl_core.robust.coordinate import Median, TrimmedMean, coordinate_median, coordinate_trimmed_mean
from fl_core.robust.geometric_median import GeometricMedian, geometric_median
from fl_core.robust.krum import Krum, MultiKrum, krum, krum_scores, krum_select, multi_krum, pairwise_sq_distances
from fl_core.robust.mean import Mean
from fl_core.robust.norm_bounding import NormBounding, norm_bounded_mean
from fl_core.robust.registry import NAMES, make_aggregator, parameters, tolerated_faults

__all__ = [
    "NAMES",
    "Bucketed",
    "Bulyan",
    "CenteredClipping",
    "GeometricMedian",
    "Krum",
    "Mean",
    "Median",
    "MultiKrum",
    "NormBounding",
    "TrimmedMean",
    "assign_buckets",
    "bulyan",
    "centered_clipping",
    "coordinate_median",
    "coordinate_trimmed_mean",
    "geometric_median",
    "krum",
    "krum_scores",
    "krum_select",
    "make_aggregator",
    "multi_krum",
    "norm_bounded_mean",
    "pairwise_sq_distances",
    "parameters",
    "tolerated_faults",
]
