"""Planning a round on the coordinator: what it starts from, who takes part, what the gate compares.

Who takes part is two sets: the silos eligible this round (configured, on the roster, not
offboarded), which all evaluate the candidate, and of them the ones drawn to train
(``aggregation.silos_per_round``; all of them when unset). A silo not drawn gets no train order, is
in no secure sum and is not a dropout: it is named in the round's sample, not among the silos out."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from fl_core.errors import ExchangeError, IntegrityError
from fl_core.messages import AnomalyReport, ObjectRef
from fl_core.sampling import SiloSample
from fl_core.secagg import crypto
from infra.config import FederationConfig
from infra.exchange import exchange_for
from infra.keystore import coordinator_identity
from infra.progress import reporter
from infra.roster import RosterStore, enrol_local, publish_coordinator
from infra.state import StateDir
from infra.tracking import CHAMPION, tracker_for
from tasks.common import record_header
from tasks.privacy import refuse_if_over


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundPlan:
    round_number: int
    n_parameters: int
    global_ref: ObjectRef
    parent_version: str | None
    champion_version: str | None
    champion_round: int | None
    champion_ref: ObjectRef | None
    anomaly_streaks: dict[str, int] = field(default_factory=dict)  # consecutive flagged rounds, from round r - 1
    # the roster as the round took it: who is dispatched to, with which keys, and who is left out (and why)
    silos: tuple[str, ...] = ()
    absent: dict[str, str] = field(default_factory=dict)
    keys: dict[str, bytes] = field(default_factory=dict, repr=False)
    roster_version: int = 0
    server_ref: ObjectRef | None = None  # the server optimiser's state after round r - 1, if it keeps one
    sample: SiloSample | None = None  # of `silos`, the ones drawn to train (None: all of them)

    @property
    def trainers(self) -> tuple[str, ...]:
        """The silos that get the train order and make up the round's sum."""
        return self.silos if self.sample is None else self.sample.sampled

    @property
    def sample_rate(self) -> float:
        """q = k / n: the fraction of the eligible silos drawn to train (silo-level DP's sampling rate)."""
        return 1.0 if self.sample is None else self.sample.rate


def read_record(config: FederationConfig, state: StateDir, exchange, round_number: int) -> dict:
    """Round `round_number`'s record, verified against the coordinator's signature."""
    public = crypto.identity_public(coordinator_identity(state))
    return exchange.read_signed_json(exchange.record_key(round_number), public,
                                     record_header(config.federation, round_number))


@task(name="plan", task_run_name="plan", cache_policy=NONE, persist_result=False)
def plan_round(config: FederationConfig, state: StateDir, round_number: int) -> RoundPlan:
    """Clear what an interrupted attempt left, take the roster and draw the round's trainers from it,
    refuse a round the federation's budget cannot pay for (before any silo trains), take the
    previous global model and the champion."""
    exchange = exchange_for(config, state)
    tracker = tracker_for(config, state).open()
    if exchange.clear_uncommitted(round_number):
        reporter().note(f"round {round_number}: cleared what an interrupted attempt left in the exchange")
    policy = config.policy()
    previous = read_record(config, state, exchange, round_number - 1)
    roster = (enrol_local(config, state, exchange) if config.dispatch.mode == "in_process"
              else RosterStore(state, config.federation).load())
    publish_coordinator(exchange, coordinator_identity(state))
    silos, absent = roster.participants(config)
    for silo, why in absent.items():
        reporter().note(f"round {round_number}: {silo} sits out: {why}")
    sample = None
    if policy.silos_per_round is not None:  # drawn from the seed and the round: a redone round draws the same
        sample = policy.sample(round_number, silos)
        get_run_logger().info("round %d: sampled %s to train; every eligible silo evaluates", round_number,
                              sample.describe())
    if policy.privacy is not None:  # the federation's budget: refuse before any silo trains
        refuse_if_over(config, state, policy.privacy, round_number, 1.0 if sample is None else sample.rate)
    champion = tracker.version_by_alias(CHAMPION)
    champion_ref = None
    if champion is not None and champion.round >= 0:
        try:
            champion_ref = ObjectRef.from_dict(read_record(config, state, exchange, champion.round)["global"])
        except IntegrityError:
            raise
        except ExchangeError:
            reporter().note(f"champion v{champion.version} (round {champion.round}) is not in this exchange; "
                            "the gate skips the regression check")
    return RoundPlan(
        round_number=round_number,
        n_parameters=policy.n_parameters,
        global_ref=ObjectRef.from_dict(previous["global"]),
        parent_version=previous.get("version"),
        champion_version=champion.version if champion else None,
        champion_round=champion.round if champion else None,
        champion_ref=champion_ref,
        anomaly_streaks=AnomalyReport.streaks_of(previous.get("anomaly")),
        silos=tuple(silos),
        absent=absent,
        keys={s: roster.members[s].public for s in silos},
        roster_version=roster.version,
        server_ref=ObjectRef.from_dict(previous["server"]) if previous.get("server") else None,
        sample=sample,
    )
