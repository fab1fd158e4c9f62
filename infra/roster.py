"""The federation's roster: which silos may take part, with which identity key and on which pool,
signed by the coordinator.

A silo makes its Ed25519 identity on its own side (`fedsilo silo init`: the private key never
leaves the silo's state folder, 0600) and hands its public key to the coordinator by whatever
channel the federation trusts; the coordinator enrols it (`fedsilo silo add`) and may later
offboard it (`fedsilo silo remove`). Each change writes a new version of the roster, signed with
the coordinator's identity:

    <coordinator state>/coordinator/roster/<federation>.json     the current version (the coordinator's copy)
    federations/<federation>/roster/v<NNNN>.json                  every version, write-once, for silos and auditors

A round takes the roster as it stands when the round is planned: the silos it dispatches to, the keys
it verifies their signed manifests and protocol messages with, and the version it records in the
lineage. A change made while a round runs takes effect from the next round. A silo listed in the
config but not on the roster sits the round out, named with the reason; its messages, like those of
an offboarded silo, are refused.

In embedded mode every party shares one machine: the coordinator enrols each configured silo from
the silo's own state folder when it plans a round (`enrol_local`), unless the silo was offboarded.
In federated mode nothing is enrolled implicitly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from fl_core.errors import BadSignature, EnrolmentError, ExchangeError, StaleMessage, WrongLength, WrongSender
from fl_core.secagg import crypto
from infra.config import FederationConfig
from infra.exchange import Exchange
from infra.keystore import coordinator_identity, silo_identity, write_private
from infra.secagg_channel import SecAggChannel
from infra.state import StateDir

COORDINATOR = "coordinator"
PHASE = "roster"


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    silo: str
    public: bytes = field(repr=False)
    pool: str
    enrolled_at: float

    @property
    def fingerprint(self) -> str:
        return crypto.fingerprint(self.public)

    def to_dict(self) -> dict:
        return {"ed25519": crypto.b64(self.public), "pool": self.pool, "enrolled_at": self.enrolled_at}


@dataclass(frozen=True, slots=True, kw_only=True)
class Roster:
    federation: str
    version: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    removed: dict[str, float] = field(default_factory=dict)  # offboarded silo -> when

    def keys(self) -> dict[str, bytes]:
        return {s: m.public for s, m in self.members.items()}

    def body(self) -> dict:
        return {"federation": self.federation, "version": self.version,
                "members": {s: m.to_dict() for s, m in sorted(self.members.items())},
                "removed": dict(sorted(self.removed.items()))}

    @classmethod
    def from_body(cls, body: dict) -> Roster:
        try:
            members = {
                str(s): Member(silo=str(s), public=crypto.unb64(m["ed25519"], 32), pool=str(m["pool"]),
                               enrolled_at=float(m["enrolled_at"]))
                for s, m in body["members"].items()
            }
            return cls(federation=str(body["federation"]), version=int(body["version"]), members=members,
                       removed={str(s): float(t) for s, t in body["removed"].items()})
        except (KeyError, TypeError, ValueError, AttributeError, WrongLength):
            raise EnrolmentError("the roster's body is malformed") from None

    def header(self) -> dict:
        return {"federation": self.federation, "round": 0, "phase": PHASE, "sender": COORDINATOR}

    def participants(self, config: FederationConfig) -> tuple[list[str], dict[str, str]]:
        """The configured silos on this roster, in config order, and why each other one is left out."""
        absent = {}
        for silo in config.silo_ids:
            if silo in self.members:
                continue
            absent[silo] = (f"offboarded from the roster (v{self.version})" if silo in self.removed else
                            f"not enrolled in the roster (v{self.version}); the coordinator runs `fedsilo silo add`")
        return [s for s in config.silo_ids if s in self.members], absent


def signed_roster(raw: bytes | str, coordinator_public: bytes, federation: str, where: str) -> Roster:
    """A roster document verified against the coordinator's key and bound to `federation`."""
    try:
        envelope = crypto.Envelope.from_json(raw)
        body = crypto.open_envelope(envelope, coordinator_public, federation=federation, round_number=0, phase=PHASE,
                                    sender=COORDINATOR)
    except (BadSignature, StaleMessage, WrongSender):
        raise EnrolmentError(f"{where}: the roster fails the coordinator's signature; it is not used") from None
    roster = Roster.from_body(body)
    if roster.federation != federation:
        raise EnrolmentError(f"{where}: a roster of federation {roster.federation!r}, expected {federation!r}")
    return roster


class RosterStore:
    """The coordinator's copy of the roster, and its publication to the exchange."""

    def __init__(self, state: StateDir, federation: str):
        self.state, self.federation = state, federation
        self.path = state.root / "coordinator" / "roster" / f"{federation}.json"

    def _identity(self):
        return coordinator_identity(self.state)

    def load(self) -> Roster:
        if not self.path.exists():
            return Roster(federation=self.federation)
        public = crypto.identity_public(self._identity())
        return signed_roster(self.path.read_bytes(), public, self.federation, str(self.path))

    def save(self, roster: Roster, exchange: Exchange) -> Roster:
        """Sign `roster` as the next version, publish it to the exchange, then keep it as current."""
        identity = self._identity()
        roster = replace(roster, version=roster.version + 1)
        envelope = crypto.seal(identity, roster.header(), roster.body())
        data = envelope.to_json().encode()
        key = roster_key(exchange, roster.version)
        if exchange.store.exists(key):  # a version left by an interrupted save: only the very same document may stand
            if exchange.store.get(key) != data:
                raise EnrolmentError(f"{key} already holds another roster; the exchange and {self.path} disagree")
        else:
            exchange.put_bytes(key, data)
        publish_coordinator(exchange, identity)
        write_private(self.path, data)
        return roster


def roster_key(exchange: Exchange, version: int) -> str:
    return f"{exchange.prefix}/roster/v{version:04d}.json"


def publish_coordinator(exchange: Exchange, identity) -> None:
    """The coordinator's public key, where silos that did not pin it at `silo init` first see it."""
    SecAggChannel(exchange, 0).publish_coordinator(crypto.identity_public(identity))


def parse_public_key(text: str) -> bytes:
    """A silo's public key as `silo init` printed it (base64), or the path of the file it wrote."""
    value = text.strip()
    path = Path(value).expanduser()
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            value = raw["ed25519"]
        except (OSError, ValueError, KeyError, TypeError):
            raise EnrolmentError(f"{path}: not a key file written by `fedsilo silo init`") from None
    try:
        return crypto.unb64(value, 32)
    except WrongLength:
        raise EnrolmentError(f"{text!r} is neither a base64 Ed25519 public key (32 bytes) nor a key file") from None


def enrol(config: FederationConfig, state: StateDir, exchange: Exchange, silo: str, public: bytes,
          rekey: bool = False) -> tuple[Roster, bool]:
    """Put `silo` on the roster with `public` (from the next round on). Returns the roster and whether
    it changed. A silo already enrolled with another key is refused unless `rekey`."""
    entry = config.silo(silo)  # a ConfigError naming the silos if it is not in the config
    store = RosterStore(state, config.federation)
    roster = store.load()
    current = roster.members.get(silo)
    if current is not None and current.public == public and current.pool == entry.pool_name:
        return roster, False
    if current is not None and current.public != public and not rekey:
        raise EnrolmentError(f"silo {silo} is enrolled with key {current.fingerprint}, not "
                             f"{crypto.fingerprint(public)}; re-key it explicitly (--rekey) if the silo made a new key")
    members = {**roster.members, silo: Member(silo=silo, public=public, pool=entry.pool_name, enrolled_at=time.time())}
    removed = {s: t for s, t in roster.removed.items() if s != silo}
    return store.save(replace(roster, members=members, removed=removed), exchange), True


def offboard(config: FederationConfig, state: StateDir, exchange: Exchange, silo: str) -> tuple[Roster, bool]:
    """Take `silo` off the roster (from the next round on); its messages are refused from then."""
    store = RosterStore(state, config.federation)
    roster = store.load()
    if silo not in roster.members:
        if silo in roster.removed:
            return roster, False
        raise EnrolmentError(f"silo {silo} is not on federation {config.federation}'s roster "
                             f"(enrolled: {sorted(roster.members) or 'none'})")
    members = {s: m for s, m in roster.members.items() if s != silo}
    removed = {**roster.removed, silo: time.time()}
    return store.save(replace(roster, members=members, removed=removed), exchange), True


def enrol_local(config: FederationConfig, state: StateDir, exchange: Exchange) -> Roster:
    """Embedded mode: enrol every configured silo not on the roster (and not offboarded) with the
    identity in its state folder on this machine, made there if it has none yet."""
    store = RosterStore(state, config.federation)
    roster = store.load()
    missing = [s for s in config.silo_ids if s not in roster.members and s not in roster.removed]
    if not missing:
        return roster
    members = dict(roster.members)
    for silo in missing:
        public = crypto.identity_public(silo_identity(state, silo))
        members[silo] = Member(silo=silo, public=public, pool=config.silo(silo).pool_name, enrolled_at=time.time())
    return store.save(replace(roster, members=members), exchange)


def published_roster(exchange: Exchange, coordinator_public: bytes) -> Roster:
    """The newest roster version in the exchange, verified (for silos and auditors)."""
    versions = sorted(k for k in exchange.store.list(f"{exchange.prefix}/roster") if k.endswith(".json"))
    if not versions:
        raise ExchangeError(f"no roster in the exchange for federation {exchange.federation}")
    return signed_roster(exchange.store.get(versions[-1]), coordinator_public, exchange.federation, versions[-1])
