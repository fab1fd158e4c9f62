"""The contract as a Great Expectations suite.

Each expectation carries, in its ``meta``, the risk it guards against (what goes wrong in
federated training if a silo's data slips through), so a failed check explains itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fl_core.schema import SPLITS, DataContract

if TYPE_CHECKING:
    import great_expectations as gx


def build_suite(contract: DataContract, name: str = "federation-contract") -> gx.ExpectationSuite:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=name)

    def add(expectation, guards: str) -> None:
        expectation.meta = {"guards": guards}
        suite.add_expectation(expectation)

    add(
        gxe.ExpectTableRowCountToBeBetween(min_value=contract.min_train_rows + contract.min_holdout_rows),
        "a silo too small to train and evaluate would add noise, not signal, and its metrics would be meaningless",
    )
    for f in contract.features:
        if f.max_missing < 1.0:
            add(
                gxe.ExpectColumnValuesToNotBeNull(column=f.name, mostly=1.0 - f.max_missing),
                f"more than {f.max_missing:.0%} missing {f.name} means the silo's population differs from what the "
                "federation agreed on; its missing-indicator would dominate",
            )
        if f.kind == "numeric":
            add(
                gxe.ExpectColumnValuesToBeBetween(column=f.name, min_value=f.min, max_value=f.max),
                f"{f.name} outside [{f.min:g}, {f.max:g}] signals a unit change or a missing-value code; the encoder "
                "would clip it silently",
            )
        elif f.kind == "categorical":
            add(
                gxe.ExpectColumnValuesToBeInSet(column=f.name, value_set=list(f.categories)),
                f"an unknown {f.name} category would encode as 'none of the above' and bias the model",
            )
    add(
        gxe.ExpectColumnValuesToNotBeNull(column=contract.label.column),
        "a row without a label cannot be trained or scored",
    )
    add(
        gxe.ExpectColumnValuesToBeInSet(column=contract.label.column, value_set=list(contract.label.classes)),
        "a label outside the agreed classes (e.g. a severity grade instead of 0/1) would be trained as noise",
    )
    add(
        gxe.ExpectColumnValuesToNotBeNull(column=contract.split_column),
        "a row in no split would leak between training and evaluation",
    )
    add(
        gxe.ExpectColumnValuesToBeInSet(column=contract.split_column, value_set=list(SPLITS)),
        "rows must be either train or holdout, or federated evaluation is not a holdout evaluation",
    )
    return suite
