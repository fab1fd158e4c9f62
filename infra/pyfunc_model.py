"""The MLflow pyfunc model every round registers: it scores raw records.

This file is logged as "model from code" (MLflow runs it when the model is loaded; no pickle is
involved) and fedsilo's own code never imports it. ``fl_core`` travels with the model as a code
path, so ``mlflow.pyfunc.load_model("models:/<federation>@champion").predict(df)`` works for anyone
with the MLflow store and torch, numpy and pandas installed.

Input: a pandas DataFrame with the data contract's feature columns (extra columns are ignored,
missing values allowed where the contract allows them). Output: a DataFrame with ``probability``
(of the positive class) and ``prediction`` (the predicted class label).
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import set_model


class FederatedClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from fl_core.models import ModelSpec, build_model
        from fl_core.params import load_flat_inplace
        from fl_core.preprocess import FeatureEncoder
        from fl_core.schema import DataContract

        with open(context.artifacts["spec"]) as handle:
            spec = json.load(handle)
        self.contract = DataContract.from_json(json.dumps(spec["contract"]))
        self.encoder = FeatureEncoder(self.contract.features)
        model_spec = ModelSpec(
            kind=spec["model"]["kind"], hidden=tuple(spec["model"]["hidden"]), activation=spec["model"]["activation"]
        )
        self.model = build_model(model_spec, self.encoder.n_outputs, seed=0)
        load_flat_inplace(self.model, np.load(context.artifacts["weights"]))
        self.model.eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from fl_core.evaluation import predict_proba

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        missing = [f.name for f in self.contract.features if f.name not in model_input.columns]
        if missing:
            raise ValueError(f"input lacks the contract's columns: {missing}")
        columns = {f.name: model_input[f.name].to_numpy() for f in self.contract.features}
        probability = predict_proba(self.model, self.encoder.encode(columns))
        negative, positive = self.contract.label.classes
        return pd.DataFrame(
            {"probability": probability, "prediction": np.where(probability >= 0.5, positive, negative)},
            index=model_input.index,
        )


set_model(FederatedClassifier())
