"""The typed coordinator-silo messages: every one round-trips through JSON, a malformed one is refused
naming the message and the field, a message of another format version is refused, and each report
names its own MLflow metrics and tags."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.bootstrap import Interval
from fl_core.errors import MalformedMessage
from fl_core.fairness import GroupCounts
from fl_core.messages import (
    AnomalyReport,
    BucketSum,
    EvaluateResult,
    EvaluationReport,
    FederationPrivacy,
    GateIntervals,
    GroupReport,
    Manifest,
    ObjectRef,
    Order,
    PrivacyRelease,
    ProtocolResult,
    SecAggStats,
    TrainResult,
    phases_for,
)

REF = ObjectRef(key="federations/f/rounds/1/train/s0.arrow", sha256="ab" * 32, size=123)
RELEASE = PrivacyRelease(epsilon=0.9, budget=8.0, delta=1e-5, accountant="rdp", noise_multiplier=2.2,
                         max_grad_norm=1.0, sample_rate=0.08, clipped_fraction=0.4, clipping="ghost")
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def via_json(message):
    return type(message).from_dict(json.loads(json.dumps(message.to_dict())))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 10**6), steps=st.integers(0, 10**4), loss=finite, secure=st.booleans(),
       private=st.booleans(), metrics=st.dictionaries(st.sampled_from(["accuracy", "roc_auc", "log_loss"]), finite))
def test_a_train_result_round_trips_through_json(n, steps, loss, secure, private, metrics):
    result = TrainResult(n_samples=n, steps=steps, train_loss=loss, local_metrics=metrics, compute_s=0.5,
                         privacy=RELEASE if private else None, update=None if secure else REF,
                         objects=(REF,) if secure else (), bytes=123 if secure else 0, crypto_s=0.01)
    assert via_json(result) == result


@pytest.mark.parametrize("result", [
    TrainResult(n_samples=5, steps=1, train_loss=0.5, update=REF),
    ProtocolResult(objects=(REF, REF), bytes=246, crypto_s=0.1, clipped=True, bad_senders=("s3",)),
    EvaluateResult(report=REF, compute_s=0.2),
])
def test_every_phase_result_round_trips_inside_its_manifest(result):
    phase = {TrainResult: "train", ProtocolResult: "masked", EvaluateResult: "evaluate"}[type(result)]
    manifest = Manifest(federation="f", round=3, phase=phase, silo="s0", validation={"passed": True}, result=result)
    assert via_json(manifest) == manifest
    assert manifest.to_dict()["v"] == 1


def test_a_manifest_that_sat_out_carries_its_reason_and_no_result():
    manifest = Manifest(federation="f", round=3, phase="train", silo="s0", status="sat_out", reason="budget")
    again = via_json(manifest)
    assert again == manifest and not again.ok and again.result is None


@pytest.mark.parametrize(("change", "field"), [
    ({"result": {"n_samples": "7", "steps": 1, "train_loss": 0.5}}, "n_samples"),
    ({"result": {"n_samples": 7, "steps": 1}}, "train_loss"),
    ({"result": {"n_samples": True, "steps": 1, "train_loss": 0.5}}, "n_samples"),
    ({"result": {"n_samples": 0, "steps": 1, "train_loss": 0.5}}, "n_samples"),
    ({"result": {"n_samples": 7, "steps": 1, "train_loss": math.inf}}, "train_loss"),
    ({"result": {"n_samples": 7, "steps": 1, "train_loss": 0.5, "update": {"key": "k"}}}, "object reference"),
    ({"phase": "gossip"}, "phase"),
    ({"status": "maybe"}, "status"),
    ({"round": "3"}, "round"),
    ({"result": None}, "needs a TrainResult"),
    ({"validation": [1, 2]}, "validation"),
])
def test_a_malformed_manifest_is_refused_naming_what_is_wrong(change, field):
    raw = {"v": 1, "federation": "f", "round": 3, "phase": "train", "silo": "s0", "status": "ok",
           "result": {"n_samples": 7, "steps": 1, "train_loss": 0.5}} | change
    with pytest.raises(MalformedMessage, match=field):
        Manifest.from_dict(raw)


def test_a_message_of_another_format_version_is_refused():
    raw = Manifest(federation="f", round=3, phase="evaluate", silo="s0", result=EvaluateResult(report=REF)).to_dict()
    with pytest.raises(MalformedMessage, match="version 2"):
        Manifest.from_dict({**raw, "v": 2})
    report = EvaluationReport(federation="f", round=3, silo="s0", metrics={"candidate": {"accuracy": 0.8}})
    with pytest.raises(MalformedMessage, match="version"):
        EvaluationReport.from_dict({**report.to_dict(), "v": 0})
    with pytest.raises(MalformedMessage, match="candidate"):
        EvaluationReport.from_dict({**report.to_dict(), "metrics": {"champion": {"accuracy": 0.8}}})


GROUPS = GroupReport(column="sex", threshold=0.5, min_group_size=10, suppressed=1, counts={
    "Female": GroupCounts(n=29, predicted=6, positive=8, true_positive=6, false_positive=0),
    "Male": GroupCounts(n=62, predicted=35, positive=34, true_positive=25, false_positive=10)})


@pytest.mark.parametrize("groups", [None, GROUPS, GroupReport(column="sex", threshold=0.6, min_group_size=10,
                                                               counts={}, suppressed=2)], ids=["none", "two", "withheld"])
def test_an_evaluation_report_round_trips_with_its_group_counts(groups):
    interval = Interval(estimate=0.8, low=0.7, high=0.9, sd=0.05, replicates=1000)
    report = EvaluationReport(federation="f", round=3, silo="s0", metrics={"candidate": {"accuracy": 0.8, "n": 91.0}},
                              intervals=GateIntervals(metric="accuracy", confidence=0.95, candidate=interval),
                              groups=groups)
    assert via_json(report) == report
    assert ("groups" in report.to_dict()) == (groups is not None)


@pytest.mark.parametrize(("change", "field"), [
    ({"counts": {"Female": {"n": 29, "predicted": 6, "positive": 8, "true_positive": 6}}}, "false_positive"),
    ({"counts": {"Female": {"n": "29", "predicted": 6, "positive": 8, "true_positive": 6, "false_positive": 0}}}, "'n'"),
    ({"counts": {"Female": {"n": 29, "predicted": 6, "positive": 8, "true_positive": 5, "false_positive": 0}}},
     "counts.Female"),
    ({"counts": {"Female": {"n": 4, "predicted": 1, "positive": 1, "true_positive": 1, "false_positive": 0}}},
     "under min_group_size 10"),
    ({"counts": [1, 2]}, "counts"),
    ({"suppressed": -1}, "suppressed"),
    ({"min_group_size": 10.5}, "min_group_size"),
    ({"column": None}, "column"),
])
def test_a_malformed_group_report_is_refused_naming_what_is_wrong(change, field):
    raw = {**GROUPS.to_dict(), **change}
    with pytest.raises(MalformedMessage, match=field):
        GroupReport.from_dict(raw)
    report = EvaluationReport(federation="f", round=3, silo="s0", metrics={"candidate": {"accuracy": 0.8}}).to_dict()
    with pytest.raises(MalformedMessage, match="group report"):
        EvaluationReport.from_dict({**report, "groups": raw})


def test_an_order_carries_its_attempt_and_references_in_its_signed_body():
    order = Order(federation="f", round=2, phase="evaluate", silos=("s1", "s0"), refs={"candidate": REF},
                  attempt="0123456789abcdef")
    body = order.body()
    assert body["silos"] == ["s0", "s1"] and body["attempt"] == "0123456789abcdef"
    assert Order.from_body("f", 2, "evaluate", json.loads(json.dumps(body))) == Order(
        federation="f", round=2, phase="evaluate", silos=("s0", "s1"), refs={"candidate": REF},
        attempt="0123456789abcdef")


def test_the_reports_name_their_own_metrics_and_tags():
    assert RELEASE.metrics("s0") == {"dp.silo.s0.epsilon": 0.9, "dp.silo.s0.delta": 1e-5,
                                     "dp.silo.s0.noise_multiplier": 2.2, "dp.silo.s0.max_grad_norm": 1.0,
                                     "dp.silo.s0.clipped_fraction": 0.4}
    assert "epsilon 0.9000 of 8 spent" in RELEASE.describe()
    train = TrainResult(n_samples=40, steps=3, train_loss=0.25)
    assert train.metrics("s1") == {"silo.s1.train_loss": 0.25, "silo.s1.n_train": 40.0}
    federation = FederationPrivacy(epsilon=3.0, budget=8.0, delta=1e-5, accountant="rdp", placement="distributed",
                                   noise_multiplier=1.1, clip_norm=1.0, clipped_fraction=0.5, noise_shares=3)
    assert federation.metrics()["dp.noise_shares"] == 3.0 and federation.describe().endswith("3 noise shares")
    assert via_json(federation) == federation
    stats = SecAggStats(masked=3, dropped=1, recovered_silos=("s2",), threshold={"bucket-0": 2},
                        bytes={"s0": 10}, clipped=(), buckets={"bucket-0": BucketSum(silos=("s0", "s1", "s2"),
                                                                                       threshold=2, summed=("s0", "s1"),
                                                                                       weight=12.0)},
                        lost={"bucket-1": "fell below its threshold"})
    metrics = stats.metrics()
    assert metrics["secagg.recovered"] == 1.0 and metrics["secagg.buckets_lost"] == 1.0
    assert metrics["secagg.bytes.s0"] == 10.0
    tags = stats.tags("fedsilo.")
    assert tags["fedsilo.secagg"].startswith("threshold per bucket") and "lost fell below" in tags["fedsilo.buckets"]
    anomaly = AnomalyReport(scores={"s0": {"norm": 1.0, "cosine": 0.9, "distance": 0.1, "norm_z": None,
                                           "distance_z": 0.2, "flags": ["norm"]}},
                            flagged=("s0",), streaks={"s0": 2}, reported=(), excluded=())
    assert "anomaly.s0.norm_z" not in anomaly.metrics() and anomaly.metrics()["anomaly.s0.flagged"] == 1.0
    assert AnomalyReport.streaks_of(anomaly.to_dict()) == {"s0": 2} and AnomalyReport.streaks_of(None) == {}


def test_the_phases_of_a_round_follow_the_mode():
    assert phases_for("trusted") == ("train", "evaluate")
    assert phases_for("secure") == phases_for("bucketed") == ("train", "shares", "masked", "unmask", "evaluate")
