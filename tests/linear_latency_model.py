"""The hand-checkable latency model the policy tests share.

Linear so every expectation can be recomputed on paper: decode step
D(b, kv) = 10 + 0.1 (b - 1) + kv / 10,000 ms; a prompt chunk of n tokens adds 0.1 n ms
(P(n) = 10 + 0.1 n ms); maxNumSeqs 100 (a server running 100 sequences is full whatever
the tier), maxNumBatchedTokens 1,000, KV capacity 100,000 tokens.

Imported by name (`from linear_latency_model import MODEL`), never from conftest."""

from __future__ import annotations

from kubetier.policy.latency import LatencyModel

MODEL = LatencyModel.from_dict(
    {
        "name": "linear-test",
        "kvCapacityTokens": 100_000,
        "maxNumSeqs": 100,
        "maxNumBatchedTokens": 1000,
        "decode": {"batchSizes": [1, 101], "kvTokens": [0, 100_000], "iterationMs": [[10, 20], [20, 30]]},
        "prefill": {"tokens": [1000], "ms": [110]},
        "power": {
            "idleWatts": 90,
            "tdpWatts": 700,
            "decodeWatts": {"batchSizes": [1], "watts": [300]},
            "prefillWatts": 600,
        },
    }
)
