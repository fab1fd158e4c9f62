"""The silo flow: one silo's part in one round, as one flow run of the silo's own deployment
(``<federation>/r<round>/<silo>``, on its ``silo-<id>`` pool or served by the silo's runner).

The run lives for the round. For each phase of the round in turn (train, then in secure mode the
protocol's shares, masked and unmask, then evaluate) it waits for the coordinator's signed order in
the exchange, verifies it with the coordinator's key this silo pinned, runs the phase's steps as
task runs (``cleveland/validate``, ``cleveland/train``, ``cleveland/keys``, ...) and leaves its
signed manifest in the exchange (`infra.mailbox`). An order that names other silos is skipped (this
silo was dropped from that phase); a refused order is answered ``sat_out`` with the reason. The run
ends after its last phase, when the coordinator ends the round, when it is cancelled, or when no
order comes in time. It accepts plain parameters only and returns a small JSON summary; nothing it
computes is a Prefect result.
"""

from __future__ import annotations

import re
import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from fl_core.errors import ConfigError, ExchangeError, SecAggError, WrongSender
from fl_core.messages import phases_for
from infra.config import FederationConfig, load_config
from infra.doorbell import MANIFEST, ORDER, Doorbell
from infra.mailbox import Backoff, SiloMailbox
from infra.state import resolve_state_dir
from tasks.silo_round import SiloRound

CANCEL_CHECK_S = 2.0
ATTEMPT = re.compile(r"[0-9a-f]{8,32}")  # a round attempt's id: it becomes part of object keys


def silo_run_name() -> str:
    p = flow_run.parameters
    return f"{p['federation']}/r{p['round_number']:03d}/{p['silo_id']}"


def silo_config(config_path: str, federation: str, silo_id: str) -> FederationConfig:
    """The silo's own config; the request must name this federation and a silo in it."""
    config = load_config(config_path)
    if config.federation != federation:
        raise ConfigError(f"request for federation {federation!r}, this silo belongs to {config.federation!r}")
    config.silo(silo_id)
    return config


class _CancelWatch:
    """Whether this run has been asked to cancel (read from the Prefect server every few seconds):
    a run served in the silo's own process is not interrupted by its runner, so it looks itself."""

    def __init__(self) -> None:
        self.run_id = flow_run.id
        self.checked = time.monotonic()

    def __call__(self) -> bool:
        if self.run_id is None or time.monotonic() - self.checked < CANCEL_CHECK_S:
            return False
        self.checked = time.monotonic()
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(self.run_id).state
        except Exception:  # the server is unreachable for a moment: keep waiting for the order
            return False
        return state is not None and (state.is_cancelling() or state.is_cancelled())


@flow(name="silo", flow_run_name=silo_run_name, persist_result=False, result_serializer="json", log_prints=False)
def silo_flow(federation: str, silo_id: str, round_number: int, attempt: str, config_path: str) -> dict:
    config = silo_config(config_path, federation, silo_id)
    if not ATTEMPT.fullmatch(attempt):
        raise ConfigError(f"attempt {attempt!r} is not an attempt id")
    state = resolve_state_dir()
    party = SiloRound(config, state, silo_id, round_number, attempt)
    dispatch = config.dispatch
    bell = Doorbell(federation, round_number, attempt, listen_to=ORDER, rings=MANIFEST).start()
    mailbox = SiloMailbox(party.exchange, round_number, attempt, silo_id, backoff=Backoff(cap_s=dispatch.poll_s),
                          timeout_s=dispatch.phase_timeout_s + 60.0, stopped=_CancelWatch(), bell=bell)
    try:
        return _take_part(party, mailbox, config, round_number)
    finally:
        bell.close()


def _take_part(party: SiloRound, mailbox: SiloMailbox, config: FederationConfig, round_number: int) -> dict:
    logger = get_run_logger()
    answered, skipped = [], []
    for phase in phases_for(config.aggregation.mode):
        signed = mailbox.wait(phase)
        if signed is None:
            logger.info("round %d: no %s order (the round ended, or the run was stopped)", round_number, phase)
            break
        try:
            party.open(phase, signed)
        except WrongSender:  # the order is for other silos: this one was dropped from the phase
            skipped.append(phase)
            continue
        except SecAggError as exc:
            logger.warning("round %d: refusing the %s order: %s: %s", round_number, phase, type(exc).__name__, exc)
        try:
            mailbox.post(phase, party.answer(phase, signed))
        except ExchangeError as exc:
            logger.warning("round %d: could not leave the %s manifest: %s", round_number, phase, exc)
            break
        answered.append(phase)
    return {"federation": config.federation, "round": round_number, "silo": mailbox.silo, "answered": answered,
            "skipped": skipped}
