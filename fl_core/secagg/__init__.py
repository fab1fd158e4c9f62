"""Secure aggregation: the coordinator learns only the sum of the silos' updates.

Pairwise masking with double masking after Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel,
Ramage, Segal and Seth, "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
ACM CCS 2017. Pure functions and small state objects; no orchestration, no I/O.

- `shamir`: t-of-n secret sharing of 32-byte secrets over a 257-bit prime field;
- `prg`: mask expansion (AES-128-CTR keystream) streamed into a uint32 accumulator;
- `quantize`: clipping, fixed point with stochastic rounding, headroom against wrap-around;
- `crypto`: key agreement, seed derivation, share encryption, signed envelopes;
- `client` / `server`: the four phases (advertise keys, share keys, masked input, unmask);
- `simulate`: the whole protocol in memory, for tests and benchmarks.
"""
