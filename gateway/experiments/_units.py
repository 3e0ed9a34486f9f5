"""Experiment units, kept bounded: which cluster a unit's figures add to, and how many
distinct units an arm has seen.

Statistics treat the *unit* (``routing.unit``, e.g. a user) as the independent observation,
because one unit's requests are alike (same user, same inputs, same network). Keeping every
unit's totals would grow without bound, so units are hashed into :data:`CLUSTERS` clusters:
each cluster is a sum over whole units, and units land in clusters at random, so the clusters
are independent, identically distributed observations too. The delta method over cluster
totals is then the cluster-robust variance of a per-request mean (a unit never straddles two
clusters), and with 1,024 clusters the variance estimate itself is within a few percent.

Distinct units are counted in a bitmap of :data:`UNIT_BITS` bits (1 MiB) with linear
counting (Whang et al., "A linear-time probabilistic counting algorithm", 1990): within
0.1% up to about a million units per arm, in bounded memory that every replica can add to
(Redis ``SETBIT``/``BITCOUNT``).

A request without a unit is a unit of its own (a fresh random one per request).
"""

from __future__ import annotations

import hashlib
import math
import secrets

#: clusters per arm that units' figures are summed into (independent observations)
CLUSTERS = 1024
#: bits in an arm's distinct-unit bitmap (2**23 bits = 1 MiB)
UNIT_BITS = 1 << 23


def unit_hash(unit: str | None) -> int:
    """64 bits from a unit id; a request without a unit is a unit of its own."""
    if unit is None:
        return secrets.randbits(64)
    return int.from_bytes(hashlib.blake2b(unit.encode(), digest_size=8).digest(), "big")


def cluster_of(hashed: int) -> int:
    """The cluster a unit's figures go to (high bits: independent of its bitmap bit)."""
    return (hashed >> 40) % CLUSTERS


def unit_bit(hashed: int) -> int:
    """The unit's bit in an arm's distinct-unit bitmap."""
    return hashed % UNIT_BITS


def distinct_units(bits_set: int, bits: int = UNIT_BITS) -> int:
    """Linear counting: distinct units from the number of bits set (collisions corrected)."""
    if bits_set <= 0:
        return 0
    if bits_set >= bits:
        return bits_set  # saturated: a floor, never reached at 1 MiB per arm in practice
    return round(-bits * math.log1p(-bits_set / bits))


__all__ = ["CLUSTERS", "UNIT_BITS", "cluster_of", "distinct_units", "unit_bit", "unit_hash"]
