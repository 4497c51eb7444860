"""The engine simulator: a GPU-free vLLM stand-in (`kubetier engine-sim`).

- ``scheduler``: continuous batching with chunked prefill, pure state (no clock, no I/O)
- ``engine``: the iteration loop in time (drift-free absolute schedule)
- ``openai_api``: request validation, pre-encoded stream chunk shapes
- ``app``: the HTTP routes on ``kubetier.lean_http``, model load, fault injection
- ``metrics``: Prometheus text with vLLM's names
- ``tokens``: prompt-length estimate, filler output text, output-length distribution
- ``virtual``: the same scheduler on a virtual clock (the model's prediction)
- ``loadgen``: a lean streaming client for measurements
- ``capacity`` / ``fidelity``: the benchmarks (`kubetier engine-sim capacity|bench`)
"""
