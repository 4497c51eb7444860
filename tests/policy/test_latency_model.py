"""The latency model: interpolation, extrapolation, chunked prefill, power, refusal of bad
profiles. Profiles here are small hand-made ones so every expected value is computable
by hand; the shipped profiles are checked in test_latency_profiles.py."""

from __future__ import annotations

import copy
import math

import pytest

from kubetier.policy.latency import LatencyModel, ProfileError


def small_profile(**overrides) -> dict:
    d = {
        "name": "tiny",
        "model": "test/model",
        "gpu": {"product": "TEST-GPU", "count": 1},
        "kvCapacityTokens": 2000,
        "maxNumSeqs": 64,
        "maxNumBatchedTokens": 512,
        "decode": {
            "batchSizes": [1, 11, 101],
            "kvTokens": [0, 1000],
            # rows: batch 1, 11, 101; columns: kv 0, 1000
            "iterationMs": [[10.0, 20.0], [12.0, 24.0], [30.0, 60.0]],
        },
        "prefill": {"tokens": [100, 500], "ms": [15.0, 55.0]},
        "power": {
            "idleWatts": 50,
            "tdpWatts": 400,
            "decodeWatts": {"batchSizes": [1, 101], "watts": [150, 350]},
            "prefillWatts": 380,
        },
        "sources": ["hand-made for tests"],
    }
    for path, value in overrides.items():
        node = d
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return d


_DELETE = "<delete this field>"  # a string survives deepcopy


@pytest.fixture
def model() -> LatencyModel:
    return LatencyModel.from_dict(small_profile())


# --------------------------------------------------------------------------- decode


def test_grid_points_are_exact(model):
    assert model.decode_iteration_s(1, 0) == pytest.approx(0.010)
    assert model.decode_iteration_s(11, 1000) == pytest.approx(0.024)
    assert model.decode_iteration_s(101, 0) == pytest.approx(0.030)


def test_bilinear_interpolation_between_grid_points(model):
    # Midpoint of the first cell: mean of its four corners.
    assert model.decode_iteration_s(6, 500) == pytest.approx((10 + 20 + 12 + 24) / 4 / 1000)
    # A third along batch (11 -> 41 of 11..101), three quarters along KV, second cell.
    lo = 12 + (24 - 12) * 0.75
    hi = 30 + (60 - 30) * 0.75
    assert model.decode_iteration_s(41, 750) == pytest.approx((lo + (hi - lo) / 3) / 1000)


def test_batch_zero_is_no_work_and_negatives_are_refused(model):
    assert model.decode_iteration_s(0, 0) == 0.0
    with pytest.raises(ValueError):
        model.decode_iteration_s(-1, 0)
    with pytest.raises(ValueError):
        model.decode_iteration_s(1, -5)


def test_extrapolates_linearly_beyond_the_grid(model):
    # KV beyond 1000 at batch 1: slope 10 ms per 1000 tokens.
    assert model.decode_iteration_s(1, 2000) == pytest.approx(0.030)
    # Batch beyond 101 at kv 0: slope (30-12)/90 ms per sequence.
    assert model.decode_iteration_s(191, 0) == pytest.approx((30 + 18) / 1000)


def test_monotonic_in_batch_and_kv(model):
    prev_row = None
    for b in range(1, 250, 3):
        row = [model.decode_iteration_s(b, k) for k in range(0, 3000, 37)]
        assert all(x <= y + 1e-15 for x, y in zip(row, row[1:])), f"not monotonic in KV at batch {b}"
        if prev_row is not None:
            assert all(p <= q + 1e-15 for p, q in zip(prev_row, row)), f"not monotonic in batch at {b}"
        prev_row = row


# --------------------------------------------------------------------------- prefill / mixed


def test_prefill_table_anchored_at_one_decode_step(model):
    # Between (0, D(1,0)=10 ms) and (100, 15 ms).
    assert model.iteration_s(0, 0, 50) == pytest.approx(0.0125)
    assert model.iteration_s(0, 0, 100) == pytest.approx(0.015)
    assert model.iteration_s(0, 0, 300) == pytest.approx(0.035)


def test_mixed_iteration_adds_prefill_beyond_one_weight_read(model):
    # D(11, 0) = 12 ms; P(300) - P(0) = 35 - 10 = 25 ms.
    assert model.iteration_s(11, 0, 300) == pytest.approx(0.037)
    assert model.iteration_s(11, 0, 0) == model.decode_iteration_s(11, 0)


def test_mixed_iteration_respects_the_token_budget(model):
    model.iteration_s(12, 0, 500)  # 512 exactly: fine
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        model.iteration_s(13, 0, 500)
    with pytest.raises(ValueError):
        model.iteration_s(1, 0, -1)


def test_mixed_iteration_monotonic_in_every_argument(model):
    for b in (0, 1, 5, 11, 40):
        times = [model.iteration_s(b, 300, p) for p in range(0, 512 - b + 1, 17)]
        assert all(x <= y for x, y in zip(times, times[1:]))
    assert model.iteration_s(5, 300, 200) < model.iteration_s(6, 300, 200) < model.iteration_s(6, 900, 200)


def test_prefill_s_is_the_sum_of_chunked_iterations(model):
    assert model.prefill_s(0) == 0.0
    assert model.prefill_s(300) == pytest.approx(model.iteration_s(0, 0, 300))
    # 1200 tokens in 512-token chunks: 512 + 512 + 176.
    expected = 2 * model.iteration_s(0, 0, 512) + model.iteration_s(0, 0, 176)
    assert model.prefill_s(1200) == pytest.approx(expected)
    # P(512) extrapolates the last segment: 55 + 12 * 40/400 ms.
    assert model.iteration_s(0, 0, 512) == pytest.approx(0.0562)
    with pytest.raises(ValueError):
        model.prefill_s(-1)


def test_prefill_s_monotonic(model):
    times = [model.prefill_s(n) for n in range(0, 5000, 7)]
    assert all(x <= y for x, y in zip(times, times[1:]))


# --------------------------------------------------------------------------- power


def test_power_idle_decode_prefill(model):
    assert model.idle_watts == 50 and model.tdp_watts == 400
    assert model.power_watts(0, 0) == 50
    assert model.power_watts(1, 0) == pytest.approx(150)
    assert model.power_watts(51, 0) == pytest.approx(250)
    assert model.power_watts(500, 0) == pytest.approx(350)  # clamped at the last point
    assert model.power_watts(0, 512) == pytest.approx(380)  # a full chunk
    assert model.power_watts(0, 256) == pytest.approx(150 + (380 - 150) / 2)
    assert model.power_watts(101, 10) == pytest.approx(350)  # decode dominates a tiny chunk
    with pytest.raises(ValueError):
        model.power_watts(-1, 0)


def test_power_monotonic_and_below_tdp(model):
    for b in range(0, 200, 9):
        ws = [model.power_watts(b, p) for p in range(0, 512, 31)]
        assert all(x <= y for x, y in zip(ws, ws[1:]))
        assert all(model.idle_watts <= w <= model.tdp_watts for w in ws)


# --------------------------------------------------------------------------- round trip


def test_to_dict_round_trips_and_is_a_copy(model):
    d = model.to_dict()
    assert LatencyModel.from_dict(d) == model
    d["decode"]["iterationMs"][0][0] = 999
    assert model.to_dict()["decode"]["iterationMs"][0][0] == 10.0


def test_sources_and_model_are_optional():
    m = LatencyModel.from_dict(small_profile(sources=_DELETE, model=_DELETE, gpu=_DELETE))
    assert m.sources == () and m.model == "" and m.gpu_count == 1


# --------------------------------------------------------------------------- refusals

BAD = [
    ({"name": ""}, "name"),
    ({"kvCapacityTokens": 0}, "kvCapacityTokens"),
    ({"kvCapacityTokens": 1.5}, "kvCapacityTokens"),
    ({"kvCapacityTokens": True}, "kvCapacityTokens"),
    ({"maxNumSeqs": -1}, "maxNumSeqs"),
    ({"maxNumBatchedTokens": 32}, "maxNumBatchedTokens"),
    ({"maxNumBatchedTokens": _DELETE}, "maxNumBatchedTokens: required"),
    ({"decod": {}}, "decod: unknown field"),
    ({"gpu.count": 0}, "gpu.count"),
    ({"gpu.product": 7}, "gpu.product"),
    ({"decode.batchSizes": [2, 11, 101]}, "decode.batchSizes[0]"),
    ({"decode.batchSizes": [1, 11, 11]}, "decode.batchSizes[2]"),
    ({"decode.batchSizes": [1]}, "decode.batchSizes"),
    ({"decode.kvTokens": [10, 1000]}, "decode.kvTokens[0]"),
    ({"decode.kvTokens": "0,1000"}, "decode.kvTokens"),
    ({"decode.iterationMs": [[10.0, 20.0], [12.0, 24.0]]}, "decode.iterationMs"),
    ({"decode.iterationMs": [[10.0, 20.0], [12.0], [30.0, 60.0]]}, "decode.iterationMs[1]"),
    ({"decode.iterationMs": [[10.0, 20.0], [12.0, 24.0], [30.0, "x"]]}, "decode.iterationMs[2][1]"),
    ({"decode.iterationMs": [[10.0, 20.0], [12.0, 24.0], [30.0, -1]]}, "decode.iterationMs[2][1]"),
    ({"decode.iterationMs": [[10.0, 20.0], [12.0, 24.0], [30.0, math.inf]]}, "decode.iterationMs[2][1]"),
    ({"decode.iterationMs": [[10.0, 20.0], [12.0, 11.0], [30.0, 60.0]]}, "decode.iterationMs[1][1]"),
    ({"decode.iterationMs": [[10.0, 20.0], [9.0, 24.0], [30.0, 60.0]]}, "decode.iterationMs[1][0]"),
    ({"decode.iterationMs": [[10.0, 20.0], [12.0, 24.0], [30.0, 1e9]]}, "out of range"),
    ({"prefill.tokens": [100, 50]}, "prefill.tokens[1]"),
    ({"prefill.ms": [15.0]}, "prefill.ms"),
    ({"prefill.ms": [55.0, 15.0]}, "prefill.ms[1]"),
    ({"prefill.ms": [5.0, 55.0]}, "prefill.ms[0]"),
    ({"power.idleWatts": 0}, "power.idleWatts"),
    ({"power.tdpWatts": 10}, "power.tdpWatts"),
    ({"power.decodeWatts.watts": [150, 500]}, "power.decodeWatts.watts[1]"),
    ({"power.decodeWatts.watts": [350, 150]}, "power.decodeWatts.watts[1]"),
    ({"power.decodeWatts.watts": [150]}, "power.decodeWatts.watts"),
    ({"power.prefillWatts": 401}, "power.prefillWatts"),
    ({"power.peakWatts": 401}, "power.peakWatts: unknown field"),
    ({"sources": [""]}, "sources[0]"),
]


@pytest.mark.parametrize("overrides,field", BAD, ids=[f for _, f in BAD])
def test_malformed_profiles_are_refused_naming_the_field(overrides, field):
    with pytest.raises(ProfileError) as e:
        LatencyModel.from_dict(small_profile(**copy.deepcopy(overrides)))
    assert field in str(e.value)


def test_non_mapping_profile_is_refused():
    with pytest.raises(ProfileError, match="profile: must be a mapping"):
        LatencyModel.from_dict(["not", "a", "profile"])  # type: ignore[arg-type]
