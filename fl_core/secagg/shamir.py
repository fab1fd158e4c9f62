"""Shamir t-of-n secret sharing (Shamir, "How to Share a Secret", CACM 1979) of 32-byte secrets.

The field is GF(p) with p = 2^256 + 297, the smallest prime above 2^256, so every 32-byte string is
a field element. Share x-coordinates are the silos' 1-based positions in the round's roster. The
polynomial's coefficients come from `secrets`, never from a seeded generator.

Any t shares reconstruct the secret; t - 1 shares are uniformly distributed whatever the secret,
so they reveal nothing about it (information-theoretically): interpolating them yields an unrelated
field element. Interpolation cannot tell a wrong result from a right one, so callers check what
they reconstruct against a public commitment (the protocol does: an advertised public key, a hash
of the self-mask seed).

Sharing evaluates each polynomial at every x by Horner's rule; `split_many` shares several secrets
over the same x-coordinates in one pass (`evaluate`). Reconstruction is a Lagrange combination at
zero whose coefficients depend only on the x-coordinates, so callers reuse them across secrets.
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Mapping, Sequence

from fl_core.errors import ThresholdError, WrongLength

PRIME = 2**256 + 297
SHARE_BYTES = 33  # field elements are < 2^257
SECRET_BYTES = 32


def split(secret: bytes, xs: Sequence[int], threshold: int) -> dict[int, int]:
    """Shares of `secret` at the given x-coordinates (distinct, 1 <= x < p): x -> f(x)."""
    return split_many([secret], xs, threshold)[0]


def split_many(secrets: Sequence[bytes], xs: Sequence[int], threshold: int) -> list[dict[int, int]]:
    """Shares of each of `secrets` at the same x-coordinates, one fresh polynomial per secret: the
    same as `split` on each, evaluated together (see `evaluate`)."""
    for secret in secrets:
        if len(secret) != SECRET_BYTES:
            raise WrongLength(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share x-coordinates must be distinct and in [1, p)")
    if not 1 <= threshold <= len(xs):
        raise ThresholdError(f"threshold {threshold} is not in [1, {len(xs)}]")
    polynomials = [
        [int.from_bytes(secret, "big")] + [_secrets.randbelow(PRIME) for _ in range(threshold - 1)] for secret in secrets
    ]
    return evaluate(polynomials, xs)


def evaluate(polynomials: Sequence[Sequence[int]], xs: Sequence[int]) -> list[dict[int, int]]:
    """f(x) mod p for every polynomial f (coefficients in [0, p), constant term first, all of one
    degree) at every x in `xs` (0 <= x < p).

    All polynomials go through Horner's rule at once: their coefficients of each degree are packed
    side by side into one integer, in lanes wide enough that the unreduced sum Σ c_k x^k of one
    polynomial (< p · t · max(x)^(t - 1) for t coefficients) never carries into the next lane;
    each lane is reduced mod p once at the end. With the small x-coordinates of a roster this costs
    about one polynomial's evaluation for two, and no reduction per step."""
    if not polynomials:
        return []
    degree = len(polynomials[0])
    if degree == 0 or any(len(c) != degree for c in polynomials):
        raise ValueError("the polynomials must have the same, positive number of coefficients")
    if any(not 0 <= x < PRIME for x in xs):
        raise ValueError("evaluation points must be in [0, p)")
    width = PRIME.bit_length() + degree.bit_length() + (degree - 1) * max(max(xs, default=1), 1).bit_length()
    lane = (1 << width) - 1
    packed = [sum(c[k] << (width * j) for j, c in enumerate(polynomials)) for k in reversed(range(degree))]
    values: list[dict[int, int]] = [{} for _ in polynomials]
    for x in xs:
        y = 0
        for c in packed:
            y = y * x + c
        for j, out in enumerate(values):
            out[x] = ((y >> (width * j)) & lane) % PRIME
    return values


def lagrange_at_zero(xs: Sequence[int]) -> dict[int, int]:
    """Coefficients λ_i with f(0) = Σ λ_i f(x_i) for any polynomial of degree < len(xs).

    They depend only on the x-coordinates, so when the same silos reveal shares for many secrets
    the coefficients are computed once (one modular inversion in all)."""
    if len(set(xs)) != len(xs):
        raise ValueError("x-coordinates repeat")
    numerators, denominators = [], []
    for i in xs:
        num, den = 1, 1
        for j in xs:
            if j != i:
                num = num * j % PRIME
                den = den * (j - i) % PRIME
        numerators.append(num)
        denominators.append(den)
    # Invert every denominator with a single exponentiation (Montgomery's trick).
    prefix = [1]
    for den in denominators:
        prefix.append(prefix[-1] * den % PRIME)
    inverse = pow(prefix[-1], PRIME - 2, PRIME)
    coefficients = [0] * len(xs)
    for k in range(len(xs) - 1, -1, -1):
        coefficients[k] = numerators[k] * inverse * prefix[k] % PRIME
        inverse = inverse * denominators[k] % PRIME
    return dict(zip(xs, coefficients))


def combine(shares: Mapping[int, int], threshold: int, coefficients: Mapping[int, int] | None = None) -> bytes:
    """The secret from at least `threshold` shares (the first `threshold` by x are used).

    Raises `ThresholdError` with fewer shares. A result that is not a 32-byte value (rare, about
    one time in 2^248 for shares of unrelated polynomials) raises `WrongLength`; any other wrong
    result must be caught by the caller's commitment check."""
    if len(shares) < threshold:
        raise ThresholdError(f"{len(shares)} shares, the threshold is {threshold}")
    xs = sorted(shares)[:threshold]
    lam = coefficients if coefficients is not None and set(coefficients) == set(xs) else lagrange_at_zero(xs)
    if any(not 0 <= shares[x] < PRIME for x in xs):
        raise WrongLength("a share is not a field element")
    value = sum(lam[x] * shares[x] for x in xs) % PRIME  # one reduction for the whole sum
    if value >= 2 ** (8 * SECRET_BYTES):
        raise WrongLength("the shares do not reconstruct a 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")


def encode_share(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise WrongLength(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise WrongLength("a share is not a field element")
    return y
