"""Secure-aggregation messages in the exchange.

    federations/<f>/coordinator.json                       the coordinator's identity (public key)
    federations/<f>/rounds/<r>/secagg/<name>.json          the coordinator's signed sets: plan, u1, u2, u3
    federations/<f>/rounds/<r>/secagg/<phase>/<silo>.json  a silo's signed message of a phase
    federations/<f>/rounds/<r>/secagg/masked/<silo>.arrow  a silo's masked vector (uint32, Arrow IPC)
    federations/<f>/rounds/<r>/secagg/forwarded/<silo>.json  the coordinator's signed bundle of the
                                                           shares addressed to that silo

A silo's shares message (its commitment and one ciphertext per peer) is read by the coordinator
only; each silo reads its own bundle, so a round's share traffic is O(n) bytes per silo, not O(n²).

In bucketed mode each bucket k runs its own instance of the protocol under
``rounds/<r>/secagg/bucket-<k>/`` (its sets u1, u2, u3, its silos' messages and bundles), next to the round's
one signed plan that lists the buckets. Every message of bucket k is bound to the instance name
``<f>:bucket-<k>`` (`instance_name`) in place of the federation id — in its signed header, its key
derivations and its share encryption — so nothing of one bucket can be replayed into another.

The silos' identity keys come from the coordinator's signed roster (`infra.roster`), never from
the exchange. The coordinator's key is published once and never replaced (the exchange refuses
overwrites); each silo pins it — given at `fedsilo silo init`, or the first time it sees it (trust
on first use) — and refuses a different one afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from fl_core.errors import BadSignature, ExchangeError, StateError
from fl_core.secagg import client, crypto
from infra.exchange import Exchange, ObjectRef

COORDINATOR = client.COORDINATOR


def instance_name(federation: str, bucket: int | None) -> str:
    """The name a secure-aggregation instance binds its messages to: the federation id, or
    ``<federation>:bucket-<k>`` for bucket k (':' cannot occur in a federation id)."""
    return federation if bucket is None else f"{federation}:bucket-{bucket}"


class SecAggChannel:
    def __init__(self, exchange: Exchange, round_number: int, bucket: int | None = None):
        self.exchange = exchange
        self.round_number = round_number
        self.bucket = bucket
        self.base = f"{exchange.round_prefix(round_number)}/secagg" + ("" if bucket is None else f"/bucket-{bucket}")

    # -- the coordinator's identity -----------------------------------------------------------------
    @property
    def _coordinator_key(self) -> str:
        return f"{self.exchange.prefix}/coordinator.json"

    def publish_coordinator(self, public: bytes) -> None:
        """Publish the coordinator's public key once; a later, different key is refused."""
        if self.exchange.store.exists(self._coordinator_key):
            if self.coordinator() != public:
                raise StateError(
                    "the coordinator's identity in the exchange differs from the key in its state folder; "
                    "a coordinator cannot be re-keyed silently"
                )
            return
        self.exchange.put_json(self._coordinator_key, {"party": COORDINATOR, "ed25519": crypto.b64(public)})

    def coordinator(self) -> bytes:
        raw = self.exchange.read_json_key(self._coordinator_key)
        if raw.get("party") != COORDINATOR:
            raise BadSignature("identity record rejected")
        return crypto.unb64(raw.get("ed25519", ""), 32)

    # -- envelopes ----------------------------------------------------------------------------------
    def _message_key(self, phase: str, silo: str) -> str:
        return f"{self.base}/{phase}/{silo}.json"

    def publish(self, phase: str, silo: str, envelope: crypto.Envelope) -> ObjectRef:
        return self.exchange.put_bytes(self._message_key(phase, silo), envelope.to_json().encode())

    def read(self, phase: str, silos: list[str]) -> dict[str, crypto.Envelope]:
        """The envelopes present for `silos` (absent silos are simply missing from the result;
        an unparseable one is kept as an envelope that will fail verification)."""
        found = {}
        for silo in silos:
            key = self._message_key(phase, silo)
            if not self.exchange.store.exists(key):
                continue
            try:
                found[silo] = crypto.Envelope.from_json(self.exchange.store.get(key))
            except BadSignature:
                found[silo] = crypto.Envelope(header={}, body={}, signature=b"")
        return found

    def publish_masked(self, silo: str, envelope: crypto.Envelope, vector: np.ndarray) -> list[ObjectRef]:
        table = pa.table({"values": pa.array(np.asarray(vector, dtype=np.uint32))})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        vector_ref = self.exchange.put_bytes(f"{self.base}/masked/{silo}.arrow", sink.getvalue().to_pybytes())
        return [self.publish("masked", silo, envelope), vector_ref]

    def read_masked(self, silos: list[str]) -> dict[str, tuple[crypto.Envelope, np.ndarray | None]]:
        envelopes = self.read("masked", silos)
        found = {}
        for silo, envelope in envelopes.items():
            key = f"{self.base}/masked/{silo}.arrow"
            try:
                table = pa.ipc.open_file(pa.BufferReader(self.exchange.store.get(key))).read_all()
                vector = table.column("values").to_numpy().astype(np.uint32, copy=True)
            except (ExchangeError, pa.ArrowException, OSError, KeyError):
                vector = None  # missing or unreadable: the coordinator refuses the silo
            found[silo] = (envelope, vector)
        return found

    # -- the coordinator's bundles of forwarded shares ----------------------------------------------
    def _forwarded_key(self, recipient: str) -> str:
        return self._message_key(client.FORWARDED, recipient)

    def publish_forwarded(self, recipient: str, envelope: crypto.Envelope) -> ObjectRef:
        """Publish the coordinator's signed bundle of `recipient`'s shares (`server.seal_forwarded`)."""
        return self.exchange.put_bytes(self._forwarded_key(recipient), envelope.to_json().encode())

    def read_forwarded(self, recipient: str, coordinator_public: bytes, federation: str) -> dict[str, str]:
        """sender -> ciphertext for `recipient`, from a bundle the coordinator signed for this
        federation (or bucket instance), round and recipient (`client.open_forwarded`)."""
        envelope = crypto.Envelope.from_json(self.exchange.store.get(self._forwarded_key(recipient)))
        return client.open_forwarded(envelope, coordinator_public, federation=federation,
                                     round_number=self.round_number, recipient=recipient)

    # -- the coordinator's signed sets --------------------------------------------------------------
    def publish_set(self, name: str, envelope: crypto.Envelope) -> ObjectRef:
        return self.exchange.put_bytes(f"{self.base}/{name}.json", envelope.to_json().encode())

    def read_set(self, name: str, coordinator_public: bytes, federation: str) -> dict:
        key = f"{self.base}/{name}.json"
        envelope = crypto.Envelope.from_json(self.exchange.store.get(key))
        return crypto.open_envelope(
            envelope, coordinator_public, federation=federation, round_number=self.round_number, phase=name,
            sender=COORDINATOR,
        )


def pin_coordinator(trust_folder: Path, public: bytes) -> None:
    """Record the coordinator's key a silo was given (at `fedsilo silo init`); a different pin is refused."""
    pin = trust_folder / "coordinator.json"
    if pin.exists():
        if crypto.unb64(json.loads(pin.read_text())["ed25519"], 32) != public:
            raise StateError(f"{pin} pins another coordinator key; remove it first to trust a new coordinator")
        return
    trust_folder.mkdir(parents=True, exist_ok=True)
    pin.write_text(json.dumps({"ed25519": crypto.b64(public)}))


def pinned_coordinator(channel: SecAggChannel, trust_folder: Path) -> bytes:
    """The coordinator's public key as this silo pinned it (given at `silo init`, or as it first saw
    it in the exchange); a different key in the exchange is refused."""
    published = channel.coordinator()
    pin = trust_folder / "coordinator.json"
    if pin.exists():
        pinned = crypto.unb64(json.loads(pin.read_text())["ed25519"], 32)
        if pinned != published:
            raise StateError("the coordinator's identity changed since this silo pinned it; refusing its messages")
        return pinned
    pin_coordinator(trust_folder, published)
    return published
