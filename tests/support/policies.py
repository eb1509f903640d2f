"""Driving an eviction policy the way the store's index does, for policy tests."""
from __future__ import annotations


def request(policy, keys, hits):
    """What the store's index sees for one request: longest_prefix, a batch get
    of the leading `hits` keys, then one put per missing key."""
    policy.hint_prefix(keys)
    if hits:
        policy.hint_prefix(keys[:hits])
        for k in keys[:hits]:
            policy.on_access(k)
    for k in keys[hits:]:
        policy.on_insert(k, 1)


def order(policy):
    """Every key the policy would give up, first victim first."""
    return list(policy.victims())
