"""Hypothesis strategies shared by the unit tests."""

from __future__ import annotations

from hypothesis import strategies as st

from fl_core.models import ModelSpec

# Every model the config can build: logistic regression, or an MLP of up to three small layers.
model_specs = st.one_of(
    st.just(ModelSpec()),
    st.builds(
        ModelSpec,
        kind=st.just("mlp"),
        hidden=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
        activation=st.sampled_from(["relu", "tanh"]),
    ),
)
