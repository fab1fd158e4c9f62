"""The exchange: where the coordinator and the silos leave artifacts for each other.

Layout (see DESIGN.md, "Exchange layout"):

    federations/<federation>/rounds/<r>/global.arrow          global model after round r (r = 0: initial)
    federations/<federation>/rounds/<r>/train/<silo>.arrow    a silo's update in round r
    federations/<federation>/rounds/<r>/evaluate/<silo>.json  a silo's evaluation report
    federations/<federation>/rounds/<r>/orders/<attempt>/<phase>.json   the coordinator's signed order for a phase
    federations/<federation>/rounds/<r>/manifests/<attempt>/<phase>/<silo>.json  a silo's signed answer to it
    federations/<federation>/rounds/<r>/round.json            the round record, written last (commit)
    federations/<federation>/rounds/<r>/round.json.sig        the coordinator's signature of the record

Vectors travel as Arrow IPC files with their binding (federation, round, silo, phase) in the
schema metadata. Every object is addressed by an `ObjectRef` (key, sha256, size): whoever reads it
checks the digest first, so a changed object is an `IntegrityError`, never silently used. The
references themselves travel signed: in the coordinator's signed orders and round records, in the
silos' signed manifests. A round record carries a detached signature (`put_signed_json`) over its
digest and its binding (federation, round, "record"), so a record rewritten behind the
coordinator's back — and with it the chain of global models — is refused when the job resumes.
Objects are written once; only an uncommitted round (a crashed attempt) is cleared and redone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from fl_core.errors import BadSignature, ConfigError, ExchangeError, IntegrityError, StaleMessage, WrongSender
from fl_core.messages import ObjectRef
from fl_core.secagg import crypto
from infra.stores import LocalObjectStore, ObjectStore

__all__ = ["Exchange", "LocalObjectStore", "ObjectRef", "ObjectStore", "exchange_for", "open_store"]


def open_store(location: str, *, endpoint_url: str | None = None, region: str | None = None) -> ObjectStore:
    """The store at `location`: a folder (a path or ``file://``) or an S3 bucket (``s3://bucket[/prefix]``,
    reached at `endpoint_url` in `region`, both defaulting to boto3's own configuration)."""
    if location.startswith("s3://"):
        from infra.s3_store import S3ObjectStore, parse_s3_url  # boto3 only when an S3 exchange is used

        bucket, prefix = parse_s3_url(location)
        return S3ObjectStore(bucket, prefix, endpoint_url=endpoint_url, region=region)
    if "://" in location and not location.startswith("file://"):
        scheme = location.split("://", 1)[0]
        raise ConfigError(f"storage.exchange = {location!r}: the {scheme}:// exchange is not available in this version")
    return LocalObjectStore(Path(location.removeprefix("file://")).expanduser())


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Exchange:
    """The federation's view of an object store, with the layout above."""

    def __init__(self, store: ObjectStore, federation: str):
        self.store = store
        self.federation = federation
        self.prefix = f"federations/{federation}"

    # -- keys ---------------------------------------------------------------------------------------
    def round_prefix(self, round_number: int) -> str:
        return f"{self.prefix}/rounds/{round_number}"

    def global_key(self, round_number: int) -> str:
        return f"{self.round_prefix(round_number)}/global.arrow"

    def server_key(self, round_number: int) -> str:
        """The server optimiser's state after round `round_number` (moments, SCAFFOLD's control variate)."""
        return f"{self.round_prefix(round_number)}/server.arrow"

    def update_key(self, round_number: int, silo: str) -> str:
        return f"{self.round_prefix(round_number)}/train/{silo}.arrow"

    def evaluation_key(self, round_number: int, silo: str) -> str:
        return f"{self.round_prefix(round_number)}/evaluate/{silo}.json"

    def manifests_prefix(self, round_number: int, attempt: str, phase: str) -> str:
        return f"{self.round_prefix(round_number)}/manifests/{attempt}/{phase}"

    def manifest_key(self, round_number: int, attempt: str, phase: str, silo: str) -> str:
        """A silo's signed manifest of one phase (federated mode: the coordinator reads it here)."""
        return f"{self.manifests_prefix(round_number, attempt, phase)}/{silo}.json"

    def orders_prefix(self, round_number: int, attempt: str) -> str:
        return f"{self.round_prefix(round_number)}/orders/{attempt}"

    def order_key(self, round_number: int, attempt: str, phase: str) -> str:
        """The coordinator's signed order for one phase (federated mode: the silos' runs read it here)."""
        return f"{self.orders_prefix(round_number, attempt)}/{phase}.json"

    def record_key(self, round_number: int) -> str:
        return f"{self.round_prefix(round_number)}/round.json"

    # -- objects ------------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> ObjectRef:
        self.store.put(key, data)
        return ObjectRef(key=key, sha256=_digest(data), size=len(data))

    def get_bytes(self, ref: ObjectRef) -> bytes:
        data = self.store.get(ref.key)
        if len(data) != ref.size or _digest(data) != ref.sha256:
            raise IntegrityError(f"{ref.key}: content does not match its published digest") from None
        return data

    def put_vector(self, key: str, vector: np.ndarray, binding: dict[str, str | int]) -> ObjectRef:
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        if vector.ndim != 1:
            raise ExchangeError(f"{key}: vectors must be 1-D, got shape {vector.shape}")
        table = pa.table({"values": pa.array(vector)})
        table = table.replace_schema_metadata({k: str(v) for k, v in binding.items()})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return self.put_bytes(key, sink.getvalue().to_pybytes())

    def get_vector(self, ref: ObjectRef, expect: dict[str, str | int] | None = None) -> np.ndarray:
        return self.get_vector_meta(ref, expect)[0]

    def get_vector_meta(self, ref: ObjectRef, expect: dict[str, str | int] | None = None) -> tuple[np.ndarray, dict]:
        """The vector at `ref` and the metadata it was bound with, after checking `expect` against it."""
        data = self.get_bytes(ref)
        try:
            table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
            vector = table.column("values").to_numpy().astype(np.float32, copy=True)  # writable, owned
        except (pa.ArrowException, OSError, KeyError):
            raise IntegrityError(f"{ref.key}: not a vector file") from None
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        for name, value in (expect or {}).items():
            if meta.get(name) != str(value):
                raise IntegrityError(f"{ref.key}: bound to {name}={meta.get(name)!r}, expected {value!r}") from None
        return vector, meta

    def put_json(self, key: str, payload: dict) -> ObjectRef:
        return self.put_bytes(key, json.dumps(payload, sort_keys=True, allow_nan=True).encode())

    def get_json(self, ref: ObjectRef) -> dict:
        try:
            return json.loads(self.get_bytes(ref))
        except json.JSONDecodeError:
            raise IntegrityError(f"{ref.key}: not a JSON document") from None

    def put_signed_json(self, key: str, payload: dict, identity, header: dict) -> ObjectRef:
        """`payload` at `key`, with ``<key>.sig``: `identity`'s signature over `header` (the binding) and
        the document's digest. The signature goes first: a document never stands unsigned."""
        data = json.dumps(payload, sort_keys=True, allow_nan=True).encode()
        envelope = crypto.seal(identity, header, {"key": key, "sha256": _digest(data)})
        self.store.put(f"{key}.sig", envelope.to_json().encode())
        return self.put_bytes(key, data)

    def read_signed_json(self, key: str, public: bytes, header: dict) -> dict:
        """The document at `key`, if its detached signature verifies with `public` and binds `header`."""
        data = self.store.get(key)
        try:
            envelope = crypto.Envelope.from_json(self.store.get(f"{key}.sig"))
            body = crypto.open_envelope(envelope, public, federation=header["federation"],
                                        round_number=header["round"], phase=header["phase"], sender=header["sender"])
        except ExchangeError:
            raise IntegrityError(f"{key}: has no signature") from None
        except (BadSignature, StaleMessage, WrongSender):
            raise IntegrityError(f"{key}: its signature does not verify") from None
        if body.get("key") != key or body.get("sha256") != _digest(data):
            raise IntegrityError(f"{key}: content does not match its signed digest")
        try:
            return json.loads(data)
        except json.JSONDecodeError:
            raise IntegrityError(f"{key}: not a JSON document") from None

    def read_json_key(self, key: str) -> dict:
        """Read a JSON object by key alone (for records the reader did not get a digest for)."""
        try:
            return json.loads(self.store.get(key))
        except json.JSONDecodeError:
            raise IntegrityError(f"{key}: not a JSON document") from None

    # -- rounds -------------------------------------------------------------------------------------
    def committed_rounds(self) -> list[int]:
        rounds = []
        for key in self.store.list(f"{self.prefix}/rounds"):
            parts = key.split("/")
            if parts[-1] == "round.json" and parts[-2].isdigit():
                rounds.append(int(parts[-2]))
        return sorted(rounds)

    def clear_uncommitted(self, round_number: int) -> bool:
        """Remove what a crashed attempt at `round_number` left behind; False if there was nothing."""
        if self.store.exists(self.record_key(round_number)):
            raise ExchangeError(f"round {round_number} is committed; it cannot be redone")
        if not self.store.list(self.round_prefix(round_number)):
            return False
        self.store.delete_prefix(self.round_prefix(round_number))
        return True


def exchange_for(config, state) -> Exchange:
    """The federation's exchange: ``storage.exchange`` (a folder or ``s3://bucket/prefix``) if set,
    else the state folder's."""
    storage = config.storage
    location = storage.exchange or str(state.exchange)
    return Exchange(open_store(location, endpoint_url=storage.endpoint_url, region=storage.region), config.federation)
