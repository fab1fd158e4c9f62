"""Flower's side of the secure-aggregation benchmark: one client's masking and the server's unmasking,
done with Flower's own SecAgg+ helpers (``flwr.common.secure_aggregation``), timed.

Runs INSIDE the Flower virtual environment made by ``flower_env.ensure_flower_env`` and imports only
the standard library, numpy and flwr (nothing from fedsilo):

    .venv-flower/bin/python flower_secagg_peer.py --n 100 --d 1000000 --dropout 0.1 --threshold 51 --repeats 3
    .venv-flower/bin/python flower_secagg_peer.py --quick          # n=100, d=1e5, 1 repeat, 10 % sample

With ``--sample F`` the server's unmasking is timed on a stratified fraction F of the clients whose
secrets it reconstructs and scaled up to all of them (``server_unmask_estimated`` in the output):
Flower spends minutes in Shamir reconstruction at n = 100, which a quick run cannot afford.

Progress goes to stderr; the last line of stdout is one JSON object with the timings (seconds,
median of --repeats runs) and the parameters.

What is reproduced, stage by stage, from flwr 1.42:

* client (``flwr/client/mod/secure_aggregation/secaggplus_mod.py``, ``_collect_masked_vectors``):
  weighting by ``num_examples / max_weight``, stochastic quantisation (``quantize``), prepending the
  quantised weight (``factor_combine``), the self mask ``pseudo_rand_gen(rd_seed)``, one pairwise
  mask ``pseudo_rand_gen(shared_key)`` per neighbour added or subtracted by node-id order, and the
  final ``parameters_mod``. The graph is the full one: every client is a neighbour of every other,
  so a client adds n-1 pairwise masks (real SecAgg+ uses k neighbours; see "neighbours" in the output).
* server (``flwr/server/workflow/secure_aggregation/secaggplus_workflow.py``, ``unmask_stage``),
  given the already-summed masked vector of the survivors: for every sampled client, Shamir
  reconstruction (``combine_shares``) of the survivor's self-mask seed or of the dropped client's
  first secret key; for a survivor, regenerate and subtract its self mask; for a dropped client,
  key agreement with each of its neighbours and regeneration of those pairwise masks, added or
  subtracted; then ``parameters_mod``, ``factor_extract`` and ``dequantize`` into the weighted mean.
  Like Flower's workflow, each reconstruction is given every share the surviving neighbours sent
  (``--shares all``, the default: n - dropped shares), not just ``threshold`` of them; ``--shares
  threshold`` passes exactly ``threshold`` shares instead. Like Flower, a dropped client's masks are
  regenerated with all its neighbours, dropped ones included (those cancel out in pairs).

Shares are real: made by Flower's ``create_shares`` with the given threshold, from real secrets
(random 32-byte self-mask seeds, PEM-serialised SECP384R1 secret keys from Flower's key generation).
A correctness check (after the timed runs, and a tiny end-to-end round before them) verifies that
the unmasked sum equals the survivors' quantised sum exactly and their mean within quantisation error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat

import flwr
import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_multiply,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)

try:  # flwr >= 1.2x keeps the EC key helpers here
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )
except ImportError:  # older layout
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import (  # type: ignore[no-redef]
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )


@dataclass(frozen=True)
class Config:
    """SecAggPlusWorkflow's defaults in flwr 1.42."""

    clipping_range: float = 8.0
    target_range: int = 2**22  # quantization_range
    mod_range: int = 2**32  # modulus_range
    max_weight: float = 1000.0
    num_examples: int = 100  # every client's weight (ratio 0.1 of max_weight)


@dataclass
class Node:
    nid: int
    sk1: bytes  # PEM (PKCS8) secret key for the pairwise masks
    pk1: bytes
    sk2: bytes  # PEM secret key for encrypting shares
    pk2: bytes


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def new_node(nid: int) -> Node:
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    return Node(nid, private_key_to_bytes(sk1), public_key_to_bytes(pk1), private_key_to_bytes(sk2), public_key_to_bytes(pk2))


# --------------------------------------------------------------------------------------------------
# Client


def client_key_agreement(me: Node, others: list[Node]) -> list[tuple[int, bytes]]:
    """The n-1 pairwise key agreements Flower's client does at the start of its masking stage
    (ECDH on SECP384R1 + HKDF, deserialising the keys each time as Flower does). Timed separately,
    not part of client_mask_s."""
    return [
        (o.nid, generate_shared_key(bytes_to_private_key(me.sk1), bytes_to_public_key(o.pk1))) for o in others
    ]


def client_mask(
    update: list[np.ndarray], nid: int, rd_seed: bytes, pairwise: list[tuple[int, bytes]], cfg: Config
) -> list[np.ndarray]:
    """client_mask_s: the masking stage of Flower's client from its "Fit" step on, given the pairwise
    shared keys. Included: weighting, stochastic quantisation, factor_combine, self mask, n-1 pairwise
    masks (PRG + add/subtract), final mod. Excluded: key generation, Shamir sharing and share
    encryption/decryption (client_setup_s), the pairwise key agreement (client_key_agreement_s),
    and (de)serialisation of the arrays into Flower messages."""
    ratio = cfg.num_examples / cfg.max_weight
    q_ratio = round(ratio * cfg.target_range)
    dq_ratio = q_ratio / cfg.target_range
    parameters = parameters_multiply(update, dq_ratio)
    quantized = quantize(parameters, cfg.clipping_range, cfg.target_range)
    quantized = factor_combine(q_ratio, quantized)
    dimensions_list = [a.shape for a in quantized]

    private_mask = pseudo_rand_gen(rd_seed, cfg.mod_range, dimensions_list)
    quantized = parameters_addition(quantized, private_mask)
    for other_nid, shared_key in pairwise:
        pairwise_mask = pseudo_rand_gen(shared_key, cfg.mod_range, dimensions_list)
        if nid > other_nid:
            quantized = parameters_addition(quantized, pairwise_mask)
        else:
            quantized = parameters_subtraction(quantized, pairwise_mask)
    return parameters_mod(quantized, cfg.mod_range)


def time_client_setup(me_idx: int, nodes: list[Node], threshold: int) -> float:
    """client_setup_s: Flower's client setup and share-keys stages plus the share decryption at the
    start of its masking stage: two key pairs, the self-mask seed, Shamir shares of the seed and of
    sk1 (create_shares), and per neighbour a key agreement on the second key pair and one Fernet
    encryption; then one Fernet decryption per neighbour of the shares it received."""
    n = len(nodes)
    me = nodes[me_idx]
    t0 = time.perf_counter()
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    sk1_b, sk2_b = private_key_to_bytes(sk1), private_key_to_bytes(sk2)
    pk1_b, pk2_b = public_key_to_bytes(pk1), public_key_to_bytes(pk2)  # uploaded to the server
    del pk1_b
    rd_seed = os.urandom(32)
    b_shares = create_shares(rd_seed, threshold, n)
    sk1_shares = create_shares(sk1_b, threshold, n)
    ss2: dict[int, bytes] = {}
    for idx, node in enumerate(nodes):
        if idx == me_idx:
            continue
        shared_key = generate_shared_key(bytes_to_private_key(sk2_b), bytes_to_public_key(node.pk2))
        ss2[node.nid] = shared_key
        encrypt(shared_key, share_keys_plaintext_concat(me.nid, node.nid, b_shares[idx], sk1_shares[idx]))
    elapsed = time.perf_counter() - t0

    # What the neighbours would have sent (untimed): their shares for us, encrypted to our new pk2.
    # The share bytes are random, of the real sizes; decryption cost does not depend on them.
    incoming = []
    for idx, node in enumerate(nodes):
        if idx == me_idx:
            continue
        key = generate_shared_key(bytes_to_private_key(node.sk2), bytes_to_public_key(pk2_b))
        plaintext = share_keys_plaintext_concat(node.nid, me.nid, os.urandom(len(b_shares[0])), os.urandom(len(sk1_shares[0])))
        incoming.append((node.nid, encrypt(key, plaintext)))

    t0 = time.perf_counter()
    for src, ciphertext in incoming:
        share_keys_plaintext_separate(decrypt(ss2[src], ciphertext))
    return elapsed + time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# Server


def server_unmask(
    masked_vector: list[np.ndarray],
    collected_shares: dict[int, list[bytes]],
    active: set[int],
    neighbours: dict[int, set[int]],
    public_keys: dict[int, bytes],
    threshold: int,
    cfg: Config,
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, float]]:
    """server_unmask_s: Flower's unmask stage after the shares have arrived, on the survivors'
    summed masked vector. Returns (quantised sum, aggregated mean, time breakdown)."""
    t = {"shamir_s": 0.0, "key_agreement_s": 0.0, "prg_and_add_s": 0.0, "finalize_s": 0.0,
         "survivors_s": 0.0, "dropped_s": 0.0}
    shapes = get_parameters_shape(masked_vector)
    for nid, share_list in collected_shares.items():
        started = time.perf_counter()
        if len(share_list) < threshold:
            raise RuntimeError("Not enough shares to recover secret in unmask stage")
        t0 = time.perf_counter()
        secret = combine_shares(share_list)
        t1 = time.perf_counter()
        t["shamir_s"] += t1 - t0
        if nid in active:
            # The PRG seed is the self-mask seed of an active client.
            private_mask = pseudo_rand_gen(secret, cfg.mod_range, shapes)
            masked_vector = parameters_subtraction(masked_vector, private_mask)
            t["prg_and_add_s"] += time.perf_counter() - t1
        else:
            # The secret is sk1 of a dropped client: rebuild its masks with every neighbour.
            for neighbor_nid in neighbours[nid] - {nid}:
                t0 = time.perf_counter()
                shared_key = generate_shared_key(
                    bytes_to_private_key(secret), bytes_to_public_key(public_keys[neighbor_nid])
                )
                t1 = time.perf_counter()
                pairwise_mask = pseudo_rand_gen(shared_key, cfg.mod_range, shapes)
                if nid > neighbor_nid:
                    masked_vector = parameters_addition(masked_vector, pairwise_mask)
                else:
                    masked_vector = parameters_subtraction(masked_vector, pairwise_mask)
                t["key_agreement_s"] += t1 - t0
                t["prg_and_add_s"] += time.perf_counter() - t1
        t["survivors_s" if nid in active else "dropped_s"] += time.perf_counter() - started
    t0 = time.perf_counter()
    recon_parameters = parameters_mod(masked_vector, cfg.mod_range)
    q_total_ratio, quantized_sum = factor_extract(recon_parameters)
    inv_dq_total_ratio = cfg.target_range / q_total_ratio
    aggregated = dequantize(quantized_sum, cfg.clipping_range, cfg.target_range)
    offset = -(len(active) - 1) * cfg.clipping_range
    for vec in aggregated:
        vec += offset
        vec *= inv_dq_total_ratio
    t["finalize_s"] = time.perf_counter() - t0
    return recon_parameters, aggregated, t


# --------------------------------------------------------------------------------------------------
# Set-up of one round (untimed)


def make_world(n: int, n_dropped: int, rng: random.Random) -> tuple[list[Node], set[int], set[int]]:
    nids = rng.sample(range(1, 2**63), n)  # Flower's node ids are random 64-bit integers
    nodes = [new_node(nid) for nid in nids]
    # Node 0 is the timed client, and survives.
    dead = set(rng.sample(nids[1:], n_dropped))
    active = set(nids) - dead
    return nodes, active, dead


def make_shares(secrets: list[bytes], threshold: int, n: int, workers: int) -> list[list[bytes]]:
    """create_shares for many secrets, spread over processes (set-up only, never timed)."""
    if workers <= 1 or len(secrets) < 4:
        return [create_shares(s, threshold, n) for s in secrets]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(create_shares, secrets, repeat(threshold), repeat(n), chunksize=4))


def collect_shares(
    nodes: list[Node],
    active: set[int],
    rd_seeds: dict[int, bytes],
    threshold: int,
    mode: str,
    workers: int,
    only: set[int] | None = None,
) -> dict[int, list[bytes]]:
    """What the server holds after Flower's unmask stage: per sampled client, the shares sent by the
    surviving clients (the survivor's self-mask seed shares, or the dropped client's sk1 shares).
    Holder i (position in the public-key list, as in Flower) gets share i. `only` restricts the
    result to those clients (the --sample estimate)."""
    n = len(nodes)
    chosen = [node for node in nodes if only is None or node.nid in only]
    secrets = [rd_seeds[node.nid] if node.nid in active else node.sk1 for node in chosen]
    all_shares = make_shares(secrets, threshold, n, workers)
    holders = [i for i, node in enumerate(nodes) if node.nid in active]
    if mode == "threshold":
        holders = holders[:threshold]
    return {node.nid: [all_shares[k][i] for i in holders] for k, node in enumerate(chosen)}


def sample_clients(active: set[int], dead: set[int], fraction: float, rng: random.Random) -> tuple[set[int], float, float]:
    """A stratified sample of the clients whose secrets the server reconstructs, and the factors that
    scale the sampled survivors' and dropped clients' times up to all of them. The per-client work is
    the same for every client of a kind (one reconstruction, then one self mask for a survivor or
    n - 1 key agreements and pairwise masks for a dropped client), so the scaled sum estimates the
    full unmasking; it is marked as an estimate in the output."""
    k_active = max(1, round(fraction * len(active)))
    k_dead = max(1, round(fraction * len(dead))) if dead else 0
    chosen = set(rng.sample(sorted(active), k_active)) | set(rng.sample(sorted(dead), k_dead))
    return chosen, len(active) / k_active, (len(dead) / k_dead if k_dead else 0.0)


def random_update(gen: np.random.Generator, d: int) -> list[np.ndarray]:
    return [gen.normal(0.0, 0.05, size=d).astype(np.float32)]


def masked_sum_of_survivors(
    nodes: list[Node], active: set[int], dead: set[int], rd_seeds: dict[int, bytes], d: int, gen: np.random.Generator, cfg: Config
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """The server's input: the survivors' masked vectors summed mod the modulus. Built without
    materialising n masked vectors: pairwise masks between two survivors cancel in the sum, so it is
    sum(quantised updates) + sum(self masks) + the survivors' masks with the dropped clients.
    Returns (masked sum, exact quantised sum mod m, float sum of the updates) for the check."""
    by_nid = {node.nid: node for node in nodes}
    ratio = cfg.num_examples / cfg.max_weight
    q_ratio = round(ratio * cfg.target_range)
    dq_ratio = q_ratio / cfg.target_range
    shapes = [(1,), (d,)]
    plain = [np.zeros(s, dtype=np.int64) for s in shapes]
    masks = [np.zeros(s, dtype=np.int64) for s in shapes]
    float_sum = np.zeros(d, dtype=np.float64)
    mod_mask = cfg.mod_range - 1
    for nid in active:
        update = random_update(gen, d)
        float_sum += update[0]
        quantized = factor_combine(q_ratio, quantize(parameters_multiply(update, dq_ratio), cfg.clipping_range, cfg.target_range))
        for acc, q in zip(plain, quantized):
            acc += q
            acc &= mod_mask
        for acc, m in zip(masks, pseudo_rand_gen(rd_seeds[nid], cfg.mod_range, shapes)):
            acc += m
        for j in dead:
            key = generate_shared_key(bytes_to_private_key(by_nid[nid].sk1), bytes_to_public_key(by_nid[j].pk1))
            for acc, m in zip(masks, pseudo_rand_gen(key, cfg.mod_range, shapes)):
                if nid > j:
                    acc += m
                else:
                    acc -= m
        for acc in masks:
            acc &= mod_mask
    masked = [(p + m) & mod_mask for p, m in zip(plain, masks)]
    return masked, plain, float_sum


def check_result(recon: list[np.ndarray], expected_quantized: list[np.ndarray] | None, aggregated: list[np.ndarray], expected_mean: np.ndarray) -> float:
    if expected_quantized is not None:
        for got, want in zip(recon, expected_quantized):
            if not np.array_equal(got, want):
                raise AssertionError("unmasked sum differs from the survivors' quantised sum")
    err = float(np.max(np.abs(aggregated[0] - expected_mean)))
    if err > 1e-4:
        raise AssertionError(f"unmasked mean differs from the survivors' mean by {err}")
    return err


def self_test(cfg: Config) -> None:
    """A tiny full round through the same functions: every client masks with client_mask, the
    survivors' vectors are summed, the server unmasks with one dropout."""
    n, d, threshold = 6, 1000, 3
    rng = random.Random(1)
    gen = np.random.default_rng(1)
    nodes, active, dead = make_world(n, 2, rng)
    rd_seeds = {node.nid: os.urandom(32) for node in nodes}
    total = None
    float_sum = np.zeros(d)
    for node in nodes:
        update = random_update(gen, d)
        others = [o for o in nodes if o.nid != node.nid]
        masked = client_mask(update, node.nid, rd_seeds[node.nid], client_key_agreement(node, others), cfg)
        if node.nid in active:
            float_sum += update[0]
            total = masked if total is None else parameters_addition(total, masked)
    assert total is not None
    total = parameters_mod(total, cfg.mod_range)
    for mode in ("all", "threshold"):
        shares = collect_shares(nodes, active, rd_seeds, threshold, mode, workers=1)
        neighbours = {node.nid: {o.nid for o in nodes} for node in nodes}
        _, aggregated, _ = server_unmask(total, shares, active, neighbours, {o.nid: o.pk1 for o in nodes}, threshold, cfg)
        check_result([], None, aggregated, float_sum / len(active))


# --------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=None, help="number of clients (default 100)")
    p.add_argument("--d", type=int, default=None, help="update dimension (default 1000000)")
    p.add_argument("--dropout", type=float, default=0.1, help="fraction of clients dropped before unmasking")
    p.add_argument("--threshold", type=int, default=None, help="Shamir threshold T (default n//2 + 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs, median reported (default 3)")
    p.add_argument("--shares", choices=("all", "threshold"), default="all",
                   help="shares given to each reconstruction: all that survivors sent (Flower) or exactly T")
    p.add_argument("--sample", type=float, default=None,
                   help="fraction of the clients whose reconstruction the server times, scaled up to all of "
                        "them (an estimate; default 1 = the whole unmasking, 0.1 with --quick)")
    p.add_argument("--quick", action="store_true", help="n=100, d=1e5, 1 repeat, --sample 0.1 (explicit flags override)")
    p.add_argument("--seed", type=int, default=0, help="seed for the updates, dropouts and rounding")
    p.add_argument("--skip-check", action="store_true", help="skip the correctness checks")
    args = p.parse_args()

    n = args.n if args.n is not None else 100
    d = args.d if args.d is not None else (100_000 if args.quick else 1_000_000)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    fraction = args.sample if args.sample is not None else (0.1 if args.quick else 1.0)
    if not 0.0 < fraction <= 1.0:
        p.error("--sample must be in (0, 1]")
    threshold = args.threshold if args.threshold is not None else n // 2 + 1
    n_dropped = round(args.dropout * n)
    if n < 3 or d < 1 or repeats < 1:
        p.error("need n >= 3, d >= 1, repeats >= 1")
    if not 2 <= threshold <= n:
        p.error("threshold must be in [2, n]")
    if n - n_dropped < threshold or n_dropped > n - 1:
        p.error(f"{n - n_dropped} survivors cannot reach threshold {threshold}")
    cfg = Config()
    random.seed(args.seed)
    np.random.seed(args.seed)  # flwr's stochastic rounding draws from numpy's global generator
    rng = random.Random(args.seed)
    gen = np.random.default_rng(args.seed)
    workers = max(1, min(os.cpu_count() or 1, 8))

    if not args.skip_check:
        self_test(cfg)

    t_setup = time.perf_counter()
    log(f"flower peer: n={n} d={d} dropped={n_dropped} T={threshold} shares={args.shares}: setting up keys and shares")
    nodes, active, dead = make_world(n, n_dropped, rng)
    rd_seeds = {node.nid: os.urandom(32) for node in nodes if node.nid in active}
    me, others = nodes[0], nodes[1:]
    pairwise = client_key_agreement(me, others)
    update = random_update(gen, d)

    # ---- client
    log("flower peer: timing the client")
    client_mask(update, me.nid, rd_seeds[me.nid], pairwise, cfg)  # warm-up: first-touch page faults
    mask_runs, ka_runs, setup_runs = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        client_mask(update, me.nid, rd_seeds[me.nid], pairwise, cfg)
        mask_runs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        client_key_agreement(me, others)
        ka_runs.append(time.perf_counter() - t0)
        setup_runs.append(time_client_setup(0, nodes, threshold))

    # ---- server inputs (untimed)
    log("flower peer: Shamir shares and the survivors' masked sum")
    sampled = fraction < 1.0
    only, scale_active, scale_dead = (
        sample_clients(active, dead, fraction, rng) if sampled else (None, 1.0, 1.0)
    )
    collected = collect_shares(nodes, active, rd_seeds, threshold, args.shares, workers, only)
    masked_sum, expected_quantized, float_sum = masked_sum_of_survivors(nodes, active, dead, rd_seeds, d, gen, cfg)
    public_keys = {node.nid: node.pk1 for node in nodes}
    precompute_s = time.perf_counter() - t_setup - sum(mask_runs) - sum(ka_runs) - sum(setup_runs)

    # ---- server
    server_runs, breakdowns = [], []
    max_err = None
    for r in range(repeats):
        log(f"flower peer: timing the server unmask ({r + 1}/{repeats})")
        neighbours = {node.nid: {o.nid for o in nodes} for node in nodes}  # full graph, self included as in Flower
        t0 = time.perf_counter()
        recon, aggregated, breakdown = server_unmask(masked_sum, collected, active, neighbours, public_keys, threshold, cfg)
        elapsed = time.perf_counter() - t0
        if sampled:  # the survivors' and dropped clients' shares of the time, scaled up to all of them
            elapsed = (breakdown["survivors_s"] * scale_active + breakdown["dropped_s"] * scale_dead
                       + breakdown["finalize_s"])
        server_runs.append(elapsed)
        breakdowns.append(breakdown)
        if not args.skip_check and not sampled:  # a partial unmasking leaves masks in the sum
            max_err = check_result(recon, expected_quantized, aggregated, float_sum / len(active))
        del recon, aggregated

    result = {
        "impl": "flower-secagg+",
        "n": n,
        "d": d,
        "dropout": args.dropout,
        "dropped": n_dropped,
        "threshold": threshold,
        "neighbours": n - 1,
        "shares_per_reconstruction": len(next(iter(collected.values()))),
        "shares_mode": args.shares,
        "repeats": repeats,
        "client_mask_s": statistics.median(mask_runs),
        "client_key_agreement_s": statistics.median(ka_runs),
        "client_setup_s": statistics.median(setup_runs),
        "server_unmask_s": statistics.median(server_runs),
        "server_breakdown_s": {k: statistics.median(b[k] for b in breakdowns) for k in breakdowns[0]},
        "client_mask_runs_s": mask_runs,
        "server_unmask_runs_s": server_runs,
        "precompute_s": precompute_s,
        "server_unmask_estimated": sampled,
        "sampled_clients": len(collected),
        "check": "skipped" if args.skip_check else ("self-test only" if sampled else "ok"),
        "max_abs_error": max_err,
        "mod_range": cfg.mod_range,
        "quantization_range": cfg.target_range,
        "clipping_range": cfg.clipping_range,
        "prg": "numpy RandomState (MT19937), seed = 32-bit XOR fold of the key",
        "flwr_version": flwr.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
