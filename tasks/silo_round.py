"""One silo's part in one round, phase by phase, on the silo's side.

A `SiloRound` lives for one round of one silo: in federated mode inside the silo's one flow run of
the round (`flows.silo.silo_flow`, on its own pool or served by the silo's runner), in embedded mode
inside the coordinator's process (`infra.dispatch.InProcessDispatcher`). Either way the coordinator
drives it with signed orders, one per phase, and it answers each with a signed manifest:

- ``train``: read its Parquet data, check it against the contract (`validate`), train from the
  global model the order names (`train`), and — secure aggregation — advertise its round keys
  (`keys`); the update stays on its disk, or (trusted mode) goes to the exchange;
- ``shares``, ``masked``, ``unmask``: the secure-aggregation steps (`tasks.secure_silo`);
- ``evaluate``: score the candidate (and the champion) the order names on its holdout.

Before acting on an order the silo verifies it with the coordinator's key it pinned (signature,
federation, round and phase, and that it is named): a refused order is answered ``sat_out`` with
the reason and nothing is done. A silo whose data fails the contract, or whose privacy budget
refuses the round, answers ``sat_out`` with the row-free reason. Its data is read and validated
once a round and kept for the evaluation.
"""

from __future__ import annotations

from dataclasses import replace

from fl_core.errors import FedsiloError, SecAggError
from fl_core.messages import Manifest, Order, open_order, seal_manifest
from infra.config import FederationConfig
from infra.exchange import exchange_for
from infra.keystore import silo_identity
from infra.secagg_channel import SecAggChannel, pinned_coordinator
from infra.state import StateDir


class SiloRound:
    def __init__(self, config: FederationConfig, state: StateDir, silo_id: str, round_number: int, attempt: str):
        config.silo(silo_id)  # a ConfigError naming the silos if it is not in the config
        self.config, self.state, self.silo, self.round_number = config, state, silo_id, round_number
        self.attempt = attempt
        self.exchange = exchange_for(config, state)
        self._coordinator: bytes | None = None
        self._identity = None
        self._data = None
        self._summary = None
        self._summary_dict: dict | None = None  # the summary as manifests carry it, made once
        self._session = None

    # -- keys ----------------------------------------------------------------------------------------
    def coordinator_key(self) -> bytes:
        """The coordinator's public key as this silo pinned it (at `fedsilo silo init`, or on first sight)."""
        if self._coordinator is None:
            self._coordinator = pinned_coordinator(SecAggChannel(self.exchange, 0),
                                                   self.state.silo(self.silo) / "trust")
        return self._coordinator

    def open(self, phase: str, signed_order: dict) -> Order:
        """The order for `phase`, verified; `SecAggError` if it is refused (WrongSender: not for this silo)."""
        return open_order(signed_order, self.coordinator_key(), self.config.federation, self.round_number, phase,
                          self.silo, self.attempt)

    def seal(self, manifest: Manifest) -> dict:
        if self._identity is None:
            self._identity = silo_identity(self.state, self.silo)
        return seal_manifest(self._identity, manifest)

    # -- one phase -----------------------------------------------------------------------------------
    def answer(self, phase: str, signed_order: dict) -> dict:
        """This silo's signed manifest for `phase`. A refused order, unusable data, a refused budget or
        a failed step (a `FedsiloError`) is a ``sat_out`` manifest with the reason; anything else
        propagates (the silo crashed in this phase)."""
        try:
            order = self.open(phase, signed_order)
        except SecAggError as exc:
            return self.seal(self._manifest(phase, status="sat_out",
                                            reason=f"order refused ({type(exc).__name__}: {exc})"))
        try:
            return self.seal(self.run(order))
        except FedsiloError as exc:
            return self.seal(self._manifest(phase, status="sat_out", reason=f"{type(exc).__name__}: {exc}"))

    def run(self, order: Order) -> Manifest:
        if order.phase == "train":
            return self._train(order)
        if order.phase == "evaluate":
            return self._evaluate(order)
        from tasks.secure_silo import mask_update, reveal_shares, share_keys

        step = {"shares": share_keys, "masked": mask_update, "unmask": reveal_shares}[order.phase]
        return self._manifest(order.phase, result=step(self._protocol(), self.silo))

    def _manifest(self, phase: str, **fields) -> Manifest:
        if self._summary is not None and self._summary_dict is None:
            self._summary_dict = self._summary.to_dict()
        return Manifest(federation=self.config.federation, round=self.round_number, phase=phase, silo=self.silo,
                        validation=self._summary_dict, **fields)

    def _validated(self):
        """The silo's data, read and checked against the contract once a round (None if unusable)."""
        if self._summary is None:
            from prefect.utilities.annotations import quote

            from tasks.silo import load_and_validate

            self._data, self._summary = load_and_validate(quote(self.config), self.silo, self.state)
        return self._data

    def _protocol(self):
        if self._session is None:
            from tasks.secure_silo import ProtocolSession

            self._session = ProtocolSession(self.config, self.silo, self.round_number, self.attempt, self.state,
                                            self.exchange, self.coordinator_key())
        return self._session

    def _train(self, order: Order) -> Manifest:
        from prefect.utilities.annotations import quote

        from tasks.silo import Refused, train_silo

        data = self._validated()
        if data is None:
            return self._manifest("train", status="sat_out", reason=self._summary.verdict())
        global_ref = order.refs.get("global")
        if global_ref is None:
            raise SecAggError("the coordinator's train order names no global model")
        if self.config.policy().is_secure:
            # the coordinator's plan (its sum's silos and draw, buckets, clip, DP) is checked before
            # training: a silo spends no compute, and none of its record-level budget, on a plan it refuses
            self._protocol()
        result = train_silo(quote(self.config), self.silo, self.round_number, self.attempt, global_ref, quote(data),
                            self.state, order.refs.get("server"))
        if isinstance(result, Refused):  # the silo's privacy budget: nothing was trained or charged
            return self._manifest("train", status="sat_out", reason=result.reason)
        if self.config.policy().is_secure:
            from tasks.secure_silo import advertise_keys

            keys = advertise_keys(self._protocol(), self.silo)
            result = replace(result, objects=keys.objects, bytes=keys.bytes, crypto_s=keys.crypto_s)
        return self._manifest("train", result=result)

    def _evaluate(self, order: Order) -> Manifest:
        from prefect.utilities.annotations import quote

        from tasks.silo import evaluate_models

        data = self._validated()
        if data is None:
            return self._manifest("evaluate", status="sat_out", reason=self._summary.verdict())
        models = {name: ref for name, ref in order.refs.items() if name in ("candidate", "champion")}
        if "candidate" not in models:
            raise SecAggError("the coordinator's evaluate order names no candidate model")
        result = evaluate_models(quote(self.config), self.silo, self.round_number, models, quote(data), self.state)
        return self._manifest("evaluate", result=result)
