"""Helpers for the secure-aggregation tests.

`Round` drives one round phase by phase with the real client and server functions (as
`fl_core.secagg.simulate.run_round` does), but keeps every silo's state and every message between
the phases, so a test can withhold, replay, re-sign or corrupt any of them before the coordinator
(or a peer) sees it. The uniformity helpers are the statistics the privacy tests share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy import stats

from fl_core.secagg import client, crypto, server, simulate
from fl_core.secagg.client import ClientState, RoundContext

FEDERATION = "fed-test"
MODULUS = 2**32

# Significance of every uniformity / same-distribution test. Masks and Shamir coefficients come
# from the OS RNG (they cannot be seeded), so these tests are random; with about a dozen of them a
# spurious failure happens less than once in 10^4 runs, while the power checks beside them show
# the same statistics reject real structure with p-values many orders of magnitude smaller.
ALPHA = 1e-5


def silo_names(n: int) -> tuple[str, ...]:
    return tuple(f"s{i:02d}" for i in range(n))


def context(
    n: int, threshold: int | None = None, round_number: int = 7, roster: Sequence[str] | None = None
) -> RoundContext:
    roster = tuple(roster) if roster is not None else silo_names(n)
    return RoundContext(
        federation=FEDERATION, round_number=round_number, roster=roster,
        threshold=threshold if threshold is not None else len(roster) // 2 + 1,
    )


def random_inputs(silos: Iterable[str], d: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {s: rng.integers(0, MODULUS, size=d, dtype=np.uint32) for s in silos}


def plain_sum(inputs: Mapping[str, np.ndarray], silos: Iterable[str]) -> np.ndarray:
    """Exact Σ inputs mod 2^32 (uint64 cannot overflow: fewer than 2^32 terms, each < 2^32)."""
    silos = list(silos)
    d = len(next(iter(inputs.values())))
    total = np.zeros(d, dtype=np.uint64)
    for s in silos:
        total += inputs[s].astype(np.uint64)
    return (total % MODULUS).astype(np.uint32)


# -- tampering ------------------------------------------------------------------------------------------
def flip_byte(data: bytes, index: int = 0) -> bytes:
    out = bytearray(data)
    out[index % len(out)] ^= 0x01
    return bytes(out)


def with_signature(envelope: crypto.Envelope, signature: bytes) -> crypto.Envelope:
    return crypto.Envelope(
        header=dict(envelope.header), body=dict(envelope.body), vector_sha256=envelope.vector_sha256, signature=signature
    )


def flip_signature(envelope: crypto.Envelope, index: int = 0) -> crypto.Envelope:
    return with_signature(envelope, flip_byte(envelope.signature, index))


def unsigned_edit(envelope: crypto.Envelope, header: dict | None = None, body: dict | None = None) -> crypto.Envelope:
    """The envelope with a new header or body but its old signature (an in-transit edit)."""
    return crypto.Envelope(
        header=dict(header if header is not None else envelope.header),
        body=dict(body if body is not None else envelope.body),
        vector_sha256=envelope.vector_sha256, signature=envelope.signature,
    )


def reseal(
    identity: Ed25519PrivateKey,
    envelope: crypto.Envelope,
    header: dict | None = None,
    body: dict | None = None,
    vector: np.ndarray | None = None,
) -> crypto.Envelope:
    """A validly signed variant of `envelope` (what a malicious sender can produce)."""
    return crypto.seal(
        identity, header if header is not None else envelope.header, body if body is not None else envelope.body, vector
    )


# -- statistics -----------------------------------------------------------------------------------------
def as_bytes(vectors: Iterable[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ascontiguousarray(v, dtype="<u4").view(np.uint8) for v in vectors])


def byte_uniformity_p(vectors: Iterable[np.ndarray]) -> float:
    """Chi-square p-value of the byte-value histogram against the uniform distribution."""
    counts = np.bincount(as_bytes(vectors), minlength=256)
    return float(stats.chisquare(counts).pvalue)


def high_bits_p(vectors: Iterable[np.ndarray], bits: int = 4) -> float:
    """Chi-square p-value of the histogram of each value's top `bits` bits against uniform."""
    values = np.concatenate([np.asarray(v, dtype=np.uint32) for v in vectors])
    counts = np.bincount(values >> np.uint32(32 - bits), minlength=2**bits)
    return float(stats.chisquare(counts).pvalue)


def lane_uniformity_ps(vectors: Iterable[np.ndarray]) -> list[float]:
    """One chi-square p-value per byte lane of the uint32 values (least to most significant)."""
    lanes = as_bytes(vectors).reshape(-1, 4)
    return [float(stats.chisquare(np.bincount(lanes[:, k], minlength=256)).pvalue) for k in range(4)]


def same_top_byte_p(first: Iterable[np.ndarray], second: Iterable[np.ndarray]) -> float:
    """Chi-square test of homogeneity of the top-byte histograms of two samples."""
    a = np.concatenate([np.asarray(v, dtype=np.uint32) for v in first]) >> np.uint32(24)
    b = np.concatenate([np.asarray(v, dtype=np.uint32) for v in second]) >> np.uint32(24)
    table = np.vstack([np.bincount(a, minlength=256), np.bincount(b, minlength=256)])
    table = table[:, table.sum(axis=0) > 0]
    return float(stats.chi2_contingency(table).pvalue)


# -- a round, phase by phase ----------------------------------------------------------------------------
@dataclass
class Round:
    """One round of the protocol with every intermediate message kept.

    Each silo step (`advertise`, `share`, `mask`, `reveal`) runs the client function for the
    silos that reached that phase, minus `skip`, and stores their messages; each coordinator step
    (`collect_*`, `unmask`) runs the server function on whatever the message dicts hold then.
    `collect_shares` also forwards: it seals each silo of U2 its bundle of ciphertexts (`bundles`),
    which `mask` opens with the coordinator's key before masking."""

    ctx: RoundContext
    identities: dict[str, Ed25519PrivateKey]
    inputs: dict[str, np.ndarray]
    coordinator: Ed25519PrivateKey = field(default_factory=crypto.new_identity)
    states: dict[str, ClientState] = field(default_factory=dict)
    adverts: dict[str, crypto.Envelope] = field(default_factory=dict)
    shares: dict[str, crypto.Envelope] = field(default_factory=dict)
    bundles: dict[str, crypto.Envelope] = field(default_factory=dict)  # recipient -> the coordinator's signed bundle
    masked: dict[str, tuple[crypto.Envelope, np.ndarray]] = field(default_factory=dict)
    reveals: dict[str, crypto.Envelope] = field(default_factory=dict)
    collected_adverts: server.Adverts | None = None
    collected_shares: server.Shares | None = None
    collected_masked: server.Masked | None = None
    result: server.Unmasked | None = None

    @classmethod
    def start(
        cls,
        n: int = 5,
        d: int = 32,
        threshold: int | None = None,
        round_number: int = 7,
        identities: Mapping[str, Ed25519PrivateKey] | None = None,
        inputs: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
    ) -> Round:
        ctx = context(n, threshold, round_number)
        ids = dict(identities) if identities is not None else simulate.identities_for(ctx)
        data = dict(inputs) if inputs is not None else random_inputs(ctx.roster, d, np.random.default_rng(seed))
        return cls(ctx=ctx, identities=ids, inputs=data)

    @property
    def public(self) -> dict[str, bytes]:
        return {s: crypto.identity_public(k) for s, k in self.identities.items()}

    @property
    def coordinator_public(self) -> bytes:
        return crypto.identity_public(self.coordinator)

    def forwarded_to(self, silo: str, ctx: RoundContext | None = None) -> dict[str, str]:
        """`silo`'s bundle as it opens it (signature, binding and recipient checked)."""
        ctx = ctx or self.ctx
        return client.open_forwarded(self.bundles[silo], self.coordinator_public, federation=ctx.federation,
                                     round_number=ctx.round_number, recipient=silo)

    def seal_bundle(self, silo: str, ciphertexts: Mapping[str, object]) -> None:
        """Replace `silo`'s bundle by one the coordinator signs with other contents."""
        self.bundles[silo] = server.seal_forwarded(self.ctx, self.coordinator, silo, dict(ciphertexts))

    @property
    def d(self) -> int:
        return len(next(iter(self.inputs.values())))

    # silos
    def advertise(self, skip: Iterable[str] = ()) -> None:
        for s in self.ctx.roster:
            if s not in set(skip):
                self.states[s], self.adverts[s] = client.advertise(self.ctx, s, self.identities[s])

    def share(self, skip: Iterable[str] = ()) -> None:
        u1 = self.collected_adverts.u1
        for s in u1:
            if s not in set(skip):
                self.states[s], self.shares[s] = client.share_keys(
                    self.ctx, self.states[s], self.identities[s], u1, self.adverts, self.public
                )

    def mask(self, skip: Iterable[str] = ()) -> None:
        u2 = self.collected_shares.u2
        for s in u2:
            if s not in set(skip):
                self.states[s], envelope, vector = client.masked_input(
                    self.ctx, self.states[s], self.identities[s], u2, self.forwarded_to(s), self.inputs[s]
                )
                self.masked[s] = (envelope, vector)

    def reveal(self, skip: Iterable[str] = ()) -> None:
        m = self.collected_masked
        for s in m.survivors:
            if s not in set(skip):
                self.states[s], self.reveals[s] = client.unmask(
                    self.ctx, self.states[s], self.identities[s], m.survivors, m.dropped
                )

    # coordinator
    def collect_adverts(self) -> server.Adverts:
        self.collected_adverts = server.collect_adverts(self.ctx, self.adverts, self.public)
        return self.collected_adverts

    def collect_shares(self) -> server.Shares:
        self.collected_shares = server.collect_shares(self.ctx, self.collected_adverts.u1, self.shares, self.public)
        self.bundles = {
            recipient: server.seal_forwarded(self.ctx, self.coordinator, recipient, ciphertexts)
            for recipient, ciphertexts in server.forward_shares(self.ctx, self.collected_shares).items()
        }
        return self.collected_shares

    def collect_masked(self) -> server.Masked:
        self.collected_masked = server.collect_masked(
            self.ctx, self.collected_shares.u2, self.masked, self.public, self.d
        )
        return self.collected_masked

    def unmask(self) -> server.Unmasked:
        self.result = server.unmask(
            self.ctx, self.collected_masked, self.collected_adverts, self.collected_shares, self.reveals, self.public
        )
        return self.result

    # whole phases
    def through_keys(self, skip: Iterable[str] = ()) -> Round:
        self.advertise(skip)
        self.collect_adverts()
        return self

    def through_shares(self, skip: Iterable[str] = ()) -> Round:
        self.share(skip)
        self.collect_shares()
        return self

    def through_masked(self, skip: Iterable[str] = ()) -> Round:
        self.mask(skip)
        self.collect_masked()
        return self

    def through_unmask(self, skip: Iterable[str] = ()) -> server.Unmasked:
        self.reveal(skip)
        return self.unmask()

    def run(self) -> server.Unmasked:
        return self.through_keys().through_shares().through_masked().through_unmask()

    def expected(self, silos: Iterable[str] | None = None) -> np.ndarray:
        return plain_sum(self.inputs, self.result.survivors if silos is None else silos)
