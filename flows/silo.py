"""The silo flow: what one silo does in one phase of one round, on its own side.

Phase ``train``: load and validate its data -> train from the global model -> evaluate the local
model -> hand back its update: in trusted mode the delta itself, in secure mode (the default) it
keeps the delta and advertises its round keys. Phases ``shares``, ``masked``, ``unmask``: the
secure-aggregation protocol (no data is read). Phase ``evaluate``: load and validate -> score the
candidate (and the champion) on its holdout. A silo whose data fails the contract sits the phase
out and says why, row-free. The flow accepts plain parameters only and returns a small JSON
manifest, signed with the silo's identity. Before acting it verifies the coordinator's signed order
(the phase, the silos it is addressed to, the references of the models it names) with the
coordinator's key this silo pinned; an order that fails is refused and nothing is done.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from fl_core.errors import ConfigError
from infra.config import FederationConfig, load_config
from infra.dispatch import silo_run_name as run_name
from infra.exchange import exchange_for
from infra.state import resolve_state_dir
from tasks.orders import sign_manifest, verify_order
from tasks.secure_silo import advertise_keys, mask_update, reveal_shares, share_keys

Phase = Literal["train", "shares", "masked", "unmask", "evaluate"]
PROTOCOL_TASKS = {"shares": share_keys, "masked": mask_update, "unmask": reveal_shares}


def silo_run_name() -> str:
    return run_name(flow_run.parameters)


def _own_deployment():
    """This run's deployment: set when a worker or runner started it from the silo's deployment, not
    when the coordinator called the flow in its own process (a subflow has none of its own, even in a
    deployed parent)."""
    context = FlowRunContext.get()
    return getattr(context.flow_run, "deployment_id", None) if context is not None else None


def silo_config(config_path: str, federation: str, silo_id: str) -> FederationConfig:
    """The silo's own config; the request must name this federation and a silo in it."""
    config = load_config(config_path)
    if config.federation != federation:
        raise ConfigError(f"request for federation {federation!r}, this silo belongs to {config.federation!r}")
    config.silo(silo_id)
    return config


@flow(name="silo", flow_run_name=silo_run_name, persist_result=False, result_serializer="json", log_prints=False)
def silo_flow(
    federation: str,
    silo_id: str,
    round_number: int,
    phase: Phase,
    order: dict,
    config_path: str,
) -> dict:
    config = silo_config(config_path, federation, silo_id)
    state = resolve_state_dir()
    exchange = exchange_for(config, state)
    refs = verify_order(exchange, state, silo_id, round_number, phase, order)
    signed = sign_manifest(state, silo_id, _run_phase(config, state, federation, silo_id, round_number, phase, refs))
    if _own_deployment() is not None:  # a run on the silo's pool: the coordinator reads this from the exchange
        exchange.put_json(exchange.manifest_key(round_number, phase, silo_id), signed)
    return signed


def _run_phase(config: FederationConfig, state, federation: str, silo_id: str, round_number: int, phase: str,
               refs: dict[str, dict]) -> dict:
    manifest = {"federation": federation, "round": round_number, "phase": phase, "silo": silo_id}
    # quote(): Prefect need not walk these objects to find upstream futures (there are none).
    if phase in PROTOCOL_TASKS:
        return {**manifest, "status": "ok", **PROTOCOL_TASKS[phase](quote(config), silo_id, round_number, state)}
    # here, not at the top: the protocol phases run in a fresh process each in federated mode, and
    # need neither torch nor the data tooling
    from tasks.silo import evaluate_models, load_and_validate, train_silo

    data, summary = load_and_validate(quote(config), silo_id, state)
    manifest["validation"] = summary.to_dict()
    if data is None:
        return {**manifest, "status": "sat_out", "reason": summary.verdict()}
    if phase == "evaluate":
        result = evaluate_models(quote(config), silo_id, round_number, refs, quote(data), state)
        return {**manifest, "status": "ok", **result}
    report = train_silo(quote(config), silo_id, round_number, refs["global"], quote(data), state)
    if "refused" in report:  # the silo's privacy budget: nothing was trained or charged
        return {**manifest, "status": "sat_out", "reason": report["refused"]}
    if config.aggregation.mode == "trusted":
        result = report
    else:
        keys = advertise_keys(quote(config), silo_id, round_number, state)
        result = {**report, "objects": keys["objects"], "bytes": keys["bytes"], "crypto_s": keys["crypto_s"]}
    return {**manifest, "status": "ok", **result}
