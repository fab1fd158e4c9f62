"""Secure aggregation's cost against the physical limit of this machine and against Flower.

The limit: masking is keystream generation plus uint32 additions,
    limit = (masks x d x 4 bytes) / keystream rate + masks x d / add rate
with masks = n - 1 pairwise + 1 self mask for a client, and |survivors| self masks +
|survivors| x |dropped| pairwise masks for the server's unmasking. The script measures it directly:
`masks` keystreams of d values from the PRG fedsilo uses (AES-128-CTR from `cryptography`, one
encryptor, written into a reused cache-sized buffer) each added into a cache-resident uint32 chunk,
run alternately with fedsilo's code for the same setting so that clock-speed drift hits both
(the rates alone are printed too).

- client masking: one silo masks a quantised update of d values for n silos: derive its n - 1
  pairwise mask keys and its self-mask key from already agreed secrets (HKDF) and add the
  keystreams (`fl_core.secagg.prg.apply_masks_inplace`). The whole masked-input phase (verifying
  the coordinator's bundle of its shares, decrypting them, key agreement, signing the result) is
  printed beside it.
- server unmasking: the coordinator's `fl_core.secagg.server.unmask` with 10 % of the silos dropped
  after sharing their keys: verify the reveal messages, reconstruct every survivor's self-mask seed
  and every dropped silo's mask key from Shamir shares (checked against commitments), regenerate
  and remove all those masks.
- all parties of one round: `fl_core.secagg.simulate.run_round` at n = 100, d = 1e5 (both modes):
  every silo's four phases plus the coordinator's, summed, with each phase's share, against its
  floor on this machine: the Ed25519 verifications every party must make (each silo checks every
  peer's signed keys and the coordinator's signed bundle of the shares addressed to it; the
  coordinator every silo's message once), one X25519 agreement per pair and key pair (share
  encryption, masks) and the n x n + n keystreams of d values (the limit above), each priced at the
  rate measured beside the round with the verifier fedsilo uses (libsodium).
- Flower: the same two steps with Flower's SecAgg+ helpers (PyPI `flwr`, installed only in
  benchmarks/.venv-flower, never a dependency of fedsilo), run in that environment by
  benchmarks/flower_secagg_peer.py, with every client a neighbour of every other. Flower's
  unmasking spends minutes in Shamir reconstruction at n = 100; with --quick its time is estimated
  from a stratified 10 % of its per-client reconstructions (labelled as such in the output).

    python benchmarks/secagg.py           # n = 10, 50, 100; d = 1e5, 1e6; Flower at n = 100, d = 1e6
    python benchmarks/secagg.py --quick   # the same code at d = 1e5 only (about a minute)

Last line: JSON with `client_mask_ratio_to_limit`, `client_speedup_vs_flower`,
`server_unmask_speedup_vs_flower`, `server_unmask_ratio_to_limit` (n = 100; d = 1e6, or 1e5 with
--quick), `all_party_s_100_1e5` and `all_party_floor_s_100_1e5` (n = 100, d = 1e5 in both modes),
plus the other measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fl_core.secagg import client, crypto, prg, server, simulate  # noqa: E402
from fl_core.secagg.client import RoundContext  # noqa: E402
from fl_core.secagg.simulate import PHASES, identities_for  # noqa: E402


# -- the physical limit -------------------------------------------------------------------------------
class Limit:
    """The least masking can cost here: `masks` keystreams of d uint32 values from one AES-128-CTR
    encryptor, written into a reused chunk-sized buffer, each added into a cache-resident uint32
    chunk. No key derivation, no cipher set-up, no d-sized memory traffic: the keystream rate plus
    the add, as in `limit = masks x d x 4 bytes / keystream rate + masks x d / add rate`."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self.encryptor = Cipher(algorithms.AES(os.urandom(16)), modes.CTR(bytes(16))).encryptor()
        self.zeros = bytes(4 * prg.CHUNK)
        self.raw = bytearray(4 * prg.CHUNK + 15)
        self.block = np.frombuffer(self.raw, dtype="<u4", count=prg.CHUNK)
        self.acc = np.zeros(prg.CHUNK, dtype=np.uint32)

    def run(self, masks: int, d: int) -> None:
        full, rest = divmod(d, prg.CHUNK)
        update, add, raw, block, acc = self.encryptor.update_into, np.add, self.raw, self.block, self.acc
        tail = memoryview(self.zeros)[: 4 * rest]
        for _ in range(masks):
            for _ in range(full):
                update(self.zeros, raw)
                add(acc, block, out=acc)
            if rest:
                update(tail, raw)
                add(acc[:rest], block[:rest], out=acc[:rest])

    def rates(self, seconds: float = 0.5) -> dict[str, float]:
        """Keystream bytes/s and uint32 adds/s, each alone (for the printout)."""
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(64):
                self.encryptor.update_into(self.zeros, self.raw)
            done += 64 * 4 * prg.CHUNK
        keystream = done / (time.perf_counter() - start)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(256):
                np.add(self.acc, self.block, out=self.acc)
            done += 256 * prg.CHUNK
        return {"keystream": keystream, "add": done / (time.perf_counter() - start)}


def side_by_side(ours, limit, repeats: int) -> tuple[float, float]:
    """Medians of `ours` and `limit`, run alternately so that drifts in clock speed hit both."""
    times_ours, times_limit = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours()
        times_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        limit()
        times_limit.append(time.perf_counter() - start)
    return statistics.median(times_ours), statistics.median(times_limit)


# -- fedsilo ------------------------------------------------------------------------------------------
def client_masking(n: int, d: int, repeats: int, limit: Limit) -> tuple[float, float]:
    """Mask-key derivation from agreed secrets plus keystream additions, for one silo, and the
    limit for its n masks, timed alternately."""
    roster = tuple(f"s{i:03d}" for i in range(n))
    ctx = RoundContext(federation="bench", round_number=1, roster=roster, threshold=n // 2 + 1)
    me = roster[n // 2]
    shared = {v: os.urandom(32) for v in roster if v != me}
    seed = os.urandom(32)
    vector = np.random.default_rng(0).integers(0, 2**32, d, dtype=np.uint64).astype(np.uint32)

    def mask() -> np.ndarray:
        add = [crypto.self_mask_key(seed, ctx.federation, ctx.round_number, me)]
        subtract = []
        for v, secret in shared.items():
            low, high = sorted((me, v), key=ctx.x)
            key = crypto.pair_mask_key(secret, ctx.federation, ctx.round_number, low, high)
            (add if ctx.sign(me, v) > 0 else subtract).append(key)
        out = vector.copy()
        prg.apply_masks_inplace(out, add=add, subtract=subtract)
        return out

    start = time.perf_counter()
    mask()  # warm-up; short runs are repeated for at least half a second, so the median is steady
    once = time.perf_counter() - start
    return side_by_side(mask, lambda: limit.run(n, d), max(repeats, min(200, int(0.5 / max(once, 1e-6)))))


class Protocol:
    """A round of the real protocol for n silos, run up to the point a benchmark needs."""

    def __init__(self, n: int, d: int, dropout: float):
        self.roster = tuple(f"s{i:03d}" for i in range(n))
        self.ctx = RoundContext(federation="bench", round_number=1, roster=self.roster, threshold=n // 2 + 1)
        self.identities = identities_for(self.ctx)
        self.public = {s: crypto.identity_public(k) for s, k in self.identities.items()}
        rng = np.random.default_rng(1)
        self.inputs = {s: rng.integers(0, 2**20, d, dtype=np.uint32) for s in self.roster}
        self.dropped = set(self.roster[: int(round(dropout * n))])
        states, adverts = {}, {}
        for s in self.roster:
            states[s], adverts[s] = client.advertise(self.ctx, s, self.identities[s])
        self.adverts = server.collect_adverts(self.ctx, adverts, self.public)
        self.share_messages = {}
        for s in self.roster:
            states[s], self.share_messages[s] = client.share_keys(
                self.ctx, states[s], self.identities[s], self.adverts.u1, adverts, self.public
            )
        self.shares = server.collect_shares(self.ctx, self.adverts.u1, self.share_messages, self.public)
        coordinator = crypto.new_identity()
        self.coordinator_public = crypto.identity_public(coordinator)
        self.bundles = {r: server.seal_forwarded(self.ctx, coordinator, r, blobs)
                        for r, blobs in server.forward_shares(self.ctx, self.shares).items()}
        self.states = states
        self.d = d

    def masked_phase(self, silo: str):
        forwarded = client.open_forwarded(self.bundles[silo], self.coordinator_public, federation=self.ctx.federation,
                                          round_number=self.ctx.round_number, recipient=silo)
        return client.masked_input(
            self.ctx, self.states[silo], self.identities[silo], self.shares.u2, forwarded, self.inputs[silo],
        )

    def finish_masking(self):
        masked = {}
        for s in self.roster:
            if s in self.dropped:
                continue
            self.states[s], envelope, vector = self.masked_phase(s)
            masked[s] = (envelope, vector)
        self.masked = server.collect_masked(self.ctx, self.shares.u2, masked, self.public, self.d)
        self.reveals = {}
        for s in self.masked.survivors:
            self.states[s], self.reveals[s] = client.unmask(
                self.ctx, self.states[s], self.identities[s], self.masked.survivors, self.masked.dropped
            )

    def unmask(self):
        return server.unmask(self.ctx, self.masked, self.adverts, self.shares, self.reveals, self.public)


# -- all parties of one round -------------------------------------------------------------------------
class PrimitiveCosts:
    """What one Ed25519 verification (of a message the size of a signed advert, of a shares message
    to n - 1 peers and of the coordinator's bundle of n - 1 ciphertexts, with `crypto.verify_ed25519`,
    the verifier fedsilo uses) and one X25519 agreement cost here, timed with the keys decoded."""

    def __init__(self, n: int) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        identity = crypto.new_identity()
        self.public = crypto.identity_public(identity)
        header = {"federation": "bench", "round": 1, "phase": client.KEYS, "sender": "s000"}
        advert = crypto.seal(identity, header, {"enc": crypto.b64(os.urandom(32)), "mask": crypto.b64(os.urandom(32))})
        blob = crypto.NONCE_BYTES + 2 * 33 + 16  # nonce, two 33-byte shares, GCM tag
        ciphertexts = {f"s{i:03d}": crypto.b64(os.urandom(blob)) for i in range(1, n)}
        shares = crypto.seal(identity, dict(header, phase=client.SHARES),
                             {"commitment": "0" * 64, "ciphertexts": ciphertexts})
        bundle = crypto.seal(identity, dict(header, phase=client.FORWARDED, sender=client.COORDINATOR),
                             {"recipient": "s000", "ciphertexts": ciphertexts})
        self.envelopes = {"advert": advert, "shares": shares, "bundle": bundle}
        self.messages = {name: (e.signature, e.signed_bytes()) for name, e in self.envelopes.items()}
        self.private = X25519PrivateKey.generate()
        self.peer = X25519PrivateKey.generate().public_key()

    def seconds(self, count: int = 400) -> dict[str, float]:
        out = {}
        for name, (signature, data) in self.messages.items():
            start = time.perf_counter()
            for _ in range(count):
                crypto.verify_ed25519(self.public, signature, data)
            out[f"verify_{name}"] = (time.perf_counter() - start) / count
            start = time.perf_counter()
            for _ in range(count):
                self.envelopes[name].signed_bytes()
            out[f"encode_{name}"] = (time.perf_counter() - start) / count
        start = time.perf_counter()
        for _ in range(count):
            self.private.exchange(self.peer)
        out["agree"] = (time.perf_counter() - start) / count
        return out


def all_party(n: int, d: int, repeats: int, limit: Limit) -> dict:
    """Every party's work for one round (`simulate.run_round`, nobody dropping), its phases, and its
    floor priced at rates measured right after each run: (n + 1) n verifications of signed keys
    (every silo checks every advert, the coordinator once), n of shares messages (the coordinator's),
    n of the coordinator's bundles (each silo its own), 2n of the small masked and unmask messages,
    2 n (n - 1) agreements (one per pair and key pair) and n x n + n keystreams of d values (n per
    silo, n self masks at the coordinator)."""
    roster = tuple(f"s{i:03d}" for i in range(n))
    ctx = RoundContext(federation="bench:all-party", round_number=1, roster=roster, threshold=n // 2 + 1)
    rng = np.random.default_rng(2)
    inputs = {s: rng.integers(0, 2**32, size=d, dtype=np.uint32) for s in roster}
    expected = np.sum([v.astype(np.uint64) for v in inputs.values()], axis=0) % 2**32
    costs = PrimitiveCosts(n)
    runs, floors, encodes, phases = [], [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        transcript = simulate.run_round(ctx, inputs)
        runs.append(time.perf_counter() - start)
        if not np.array_equal(transcript.result.total, expected.astype(np.uint32)):
            raise SystemExit("the round's unmasked sum is wrong")
        phases.append(transcript.seconds)
        rate = costs.seconds()
        start = time.perf_counter()
        limit.run(n * n + n, d)
        masks = time.perf_counter() - start
        verify = (((n + 1) * n + 2 * n) * rate["verify_advert"] + n * rate["verify_shares"]
                  + n * rate["verify_bundle"])
        floors.append({"verify": verify, "agree": 2 * n * (n - 1) * rate["agree"], "masks": masks})
        encodes.append((n + 1) * n * rate["encode_advert"] + n * rate["encode_shares"] + n * rate["encode_bundle"])
    k = sorted(range(repeats), key=runs.__getitem__)[repeats // 2]  # the median run
    ours, floor, phase = runs[k], floors[k], phases[k]
    total_floor = sum(floor.values())
    verifications = (n + 1) * n + 2 * n + n + n
    size = f"{d:.0e}".replace("e+0", "e")  # 1e5
    print(f"\nall parties of one round, n = {n}, d = {size} (simulate.run_round, nobody dropping; "
          f"the median of {repeats} runs, each followed by its floor):")
    print(f"{'phase':>8} {'silos s':>9} {'server s':>9}")
    for name in PHASES:
        print(f"{name:>8} {phase[f'{name}.silos']:>9.3f} {phase[f'{name}.server']:>9.3f}")
    print(f"{'total':>8} {ours:>9.3f} s all parties; floor {total_floor:.3f} s "
          f"(verify {floor['verify']:.3f} for {verifications} signatures + agree {floor['agree']:.3f} "
          f"+ masks {floor['masks']:.3f}); "
          f"ratio {ours / total_floor:.2f}")
    print(f"(of ours, re-encoding the signed messages as canonical JSON for their verifiers: {encodes[k]:.3f} s)")
    tag = f"{n}_{size}"
    figures = {f"all_party_s_{tag}": round(ours, 3), f"all_party_floor_s_{tag}": round(total_floor, 3),
               f"all_party_ratio_to_floor_{tag}": round(ours / total_floor, 3),
               f"all_party_floor_verify_s_{tag}": round(floor["verify"], 3),
               f"all_party_floor_verifications_{tag}": verifications,
               f"all_party_floor_agree_s_{tag}": round(floor["agree"], 3),
               f"all_party_floor_masks_s_{tag}": round(floor["masks"], 3),
               f"all_party_encode_s_{tag}": round(encodes[k], 3)}
    figures.update({f"all_party_{key.replace('.', '_')}_s_{tag}": round(v, 3) for key, v in phase.items()})
    return figures


# -- Flower -------------------------------------------------------------------------------------------
def flower(n: int, d: int, dropout: float, repeats: int, sample: float) -> dict | None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from flower_env import ensure_flower_env

    try:
        python = ensure_flower_env(Path(__file__).resolve().parent)
    except RuntimeError as exc:
        print(f"Flower comparison skipped: {exc}")
        return None
    with tempfile.TemporaryDirectory(prefix="flower-home-") as home:
        result = subprocess.run(
            [str(python), str(Path(__file__).with_name("flower_secagg_peer.py")), "--n", str(n), "--d", str(d),
             "--dropout", str(dropout), "--threshold", str(n // 2 + 1), "--repeats", str(repeats),
             "--sample", str(sample)],
            capture_output=True, text=True, env={**os.environ, "HOME": home}, timeout=3600,
        )
    if result.returncode != 0:
        print(f"Flower comparison failed:\n{result.stderr[-2000:]}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="d = 1e5 only (under a minute)")
    args = parser.parse_args()
    dims = [100_000] if args.quick else [100_000, 1_000_000]
    head_d = dims[-1]
    repeats = 3 if args.quick else 5
    began = time.perf_counter()

    limit = Limit()
    rates = limit.rates()
    print(f"limit on this machine: AES-128-CTR keystream {rates['keystream'] / 1e9:.2f} GB/s, "
          f"uint32 add {rates['add'] / 1e9:.2f} G/s (one core)\n")
    print("client masking: one silo, n - 1 pairwise masks + 1 self mask")
    print("(the limit is measured alternately with ours: n keystreams of d values + n adds, nothing else)")
    print(f"{'n':>4} {'d':>9} {'ours ms':>9} {'limit ms':>9} {'ratio':>6}")
    figures: dict = {"keystream_gb_s": round(rates["keystream"] / 1e9, 2), "add_g_s": round(rates["add"] / 1e9, 2)}
    for d in dims:
        for n in (10, 50, 100):
            ours, floor = client_masking(n, d, repeats, limit)
            print(f"{n:>4} {d:>9} {1e3 * ours:>9.1f} {1e3 * floor:>9.1f} {ours / floor:>6.2f}")
            figures[f"client_mask_ms_n{n}_d{d}"] = round(1e3 * ours, 2)
            figures[f"client_mask_limit_ms_n{n}_d{d}"] = round(1e3 * floor, 2)
            figures[f"client_mask_ratio_n{n}_d{d}"] = round(ours / floor, 3)
    n = 100
    figures["client_mask_ratio_to_limit"] = figures[f"client_mask_ratio_n{n}_d{head_d}"]

    print(f"\nserver unmasking: n = {n}, d = {head_d}, 10 % dropped after sharing their keys")
    protocol = Protocol(n, head_d, dropout=0.1)
    start = time.perf_counter()
    protocol.masked_phase(protocol.roster[-1])
    whole_client = time.perf_counter() - start
    protocol.finish_masking()
    result = protocol.unmask()
    expected = np.zeros(head_d, dtype=np.uint32)
    for s in result.survivors:
        np.add(expected, protocol.inputs[s], out=expected)
    if not np.array_equal(result.total, expected):
        raise SystemExit("unmasking returned a wrong sum")
    survivors, dropped = len(result.survivors), len(result.recovered)
    unmask_s, unmask_limit = side_by_side(
        protocol.unmask, lambda: limit.run(survivors + survivors * dropped, head_d), 3 if args.quick else 5
    )
    print(f"ours {unmask_s:.3f} s; limit {unmask_limit:.3f} s ({survivors} self masks + {survivors} x {dropped} "
          f"pairwise); ratio {unmask_s / unmask_limit:.2f}")
    print(f"(the whole masked-input phase of one silo, with its bundle's check, share decryption and signing: "
          f"{whole_client:.3f} s)")
    figures.update(
        server_unmask_s=round(unmask_s, 3),
        server_unmask_ratio_to_limit=round(unmask_s / unmask_limit, 3),
        client_masked_phase_s=round(whole_client, 3),
    )

    figures.update(all_party(n, 100_000, 3, limit))

    # Flower's unmasking spends minutes in Shamir reconstruction at n = 100; --quick times a stratified
    # 10 % of its per-client reconstructions and scales them up (flower_secagg_peer.py --sample).
    theirs = flower(n, head_d, 0.1, 1 if args.quick else 3, 0.1 if args.quick else 1.0)
    if theirs is not None:
        ours_client = figures[f"client_mask_ms_n{n}_d{head_d}"] / 1e3
        print(f"\nFlower {theirs.get('flwr_version')} SecAgg+ helpers, n = {n}, d = {head_d}, every client a neighbour:")
        print(f"  client masking   Flower {theirs['client_mask_s']:.3f} s   ours {ours_client:.3f} s   "
              f"speed-up {theirs['client_mask_s'] / ours_client:.1f}x")
        estimated = " (estimated from a 10 % sample of its reconstructions)" if theirs.get("server_unmask_estimated") else ""
        print(f"  server unmasking Flower {theirs['server_unmask_s']:.2f} s   ours {unmask_s:.3f} s   "
              f"speed-up {theirs['server_unmask_s'] / unmask_s:.1f}x{estimated}")
        breakdown = theirs.get("server_breakdown_s", {})
        if breakdown:
            print("  Flower's unmasking, where the timed part went: "
                  + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in breakdown.items() if k in ("shamir_s", "key_agreement_s", "prg_and_add_s")))
        figures.update(
            flower_version=theirs.get("flwr_version"),
            flower_client_mask_s=round(theirs["client_mask_s"], 4),
            flower_server_unmask_s=round(theirs["server_unmask_s"], 3),
            client_speedup_vs_flower=round(theirs["client_mask_s"] / ours_client, 2),
            server_unmask_speedup_vs_flower=round(theirs["server_unmask_s"] / unmask_s, 2),
            flower_server_unmask_estimated=bool(theirs.get("server_unmask_estimated")),
        )
    else:
        figures.update(client_speedup_vs_flower=None, server_unmask_speedup_vs_flower=None)
    figures.update(n=n, d=head_d, quick=args.quick, wall_seconds=round(time.perf_counter() - began, 1))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
