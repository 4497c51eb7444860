"""First-principles derivation of the built-in latency profiles (reproducible numbers).

``python -m kubetier.policy.profile_derivation`` prints the YAML it derives;
``--write`` regenerates ``operator/kubetier/profiles/<name>.yaml``; ``--check`` fails when
a checked-in file differs from its derivation (a unit test runs it).

Model of one engine iteration on a tensor-parallel group of ``tp`` GPUs, per GPU.
``P`` are the parameters that take part in matrix multiplies (all but the embedding
table, which is only indexed), ``W = 2 * P / tp`` the bytes of bf16 weights streamed
from HBM once per iteration, ``BW`` / ``FLOPS`` the data-sheet HBM bandwidth and dense
BF16 tensor throughput:

* decode step, ``B`` sequences holding ``K`` KV tokens in total::

      t = overhead + per_seq * B
          + max(W / (BW * eta_bw), 2 * P / tp * B / (FLOPS * eta_decode))
          + K * kv_bytes_per_token / tp / (BW * eta_kv)
          + 2 * layers * allreduce(B tokens)

  Small batches are memory-bound (the weight read dominates); the linear layers turn
  compute-bound once ``2 P B`` FLOPs outlast that read (B ~ 150-300 on these GPUs);
  attention reads every KV token once per step.
* prefill iteration of ``N`` prompt tokens, no decode (logits only for the last token,
  so the LM head drops out of ``P``; causal attention adds ``2 N^2 hidden`` per layer)::

      t = overhead + per_seq + max(W / (BW * eta_bw),
                                   (2 * P_body * N + 2 * N^2 * hidden * layers) / tp
                                   / (FLOPS * eta_prefill))
          + 2 * layers * allreduce(N tokens)

* power per GPU: ``idle`` with nothing to do; a decode step draws a share of the
  dynamic range ``TDP - idle`` that rises with arithmetic intensity (batch size,
  normalised by the GPU's ridge point ``FLOPS / BW``) and saturates::

      share(B) = s_max - (s_max - s_1) * exp(-(B - 1) / (tau * ridge / ridge_H100))

  fitted to the H100 anchors below (batch 1 ~ 300 W, batch 128 ~ 600 W); a full
  prefill chunk draws ``s_max`` of the range (compute-bound, near but below TDP).

What is *derived* here: weight and KV bytes, FLOPs, KV capacity, every iteration time
and power figure in the YAML. What is *measured by others* and used to fit the
efficiency factors (``eta_*``, ``overhead``, power shares): the sources listed with
each setup. Nothing in these profiles was measured by kubetier itself (no GPU was
available when they were made).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Gpu:
    product: str
    hbm_bytes_per_s: float  # data-sheet HBM bandwidth
    bf16_flops: float  # data-sheet dense BF16 tensor FLOP/s (no sparsity)
    memory_bytes: float  # total memory as the driver reports it
    tdp_watts: float
    idle_watts: float  # board power with a model loaded and no work
    link_bytes_per_s: float  # achievable per-GPU all-reduce bus bandwidth (NVLink)
    link_latency_s: float  # one small all-reduce (latency-bound)

    @property
    def ridge_flops_per_byte(self) -> float:
        return self.bf16_flops / self.hbm_bytes_per_s


@dataclass(frozen=True)
class Model:
    hf_name: str
    params: float  # all parameters, bf16
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2  # K and V, bf16

    @property
    def matmul_params(self) -> float:
        """Parameters read and multiplied every decode step (embedding is only indexed)."""
        return self.params - self.vocab * self.hidden

    @property
    def body_params(self) -> float:
        """Parameters applied to every prompt token (no embedding, no LM head)."""
        return self.params - 2 * self.vocab * self.hidden


@dataclass(frozen=True)
class Calibration:
    eta_bw: float  # share of HBM bandwidth reached streaming weights
    eta_kv: float  # share of HBM bandwidth reached by paged attention
    eta_decode: float  # share of peak FLOPs in decode GEMMs
    eta_prefill: float  # share of peak FLOPs in prefill (MFU)
    overhead_s: float  # fixed per-iteration cost (scheduler, sampler, launches)
    per_seq_s: float  # per-sequence CPU cost per iteration
    gpu_memory_utilization: float = 0.90  # vLLM default
    activation_reserve_bytes: float = 2.5 * GIB  # peak activations + CUDA graphs
    power_share_batch1: float = 0.36  # of (TDP - idle), H100 fit: ~300 W
    power_share_max: float = 0.93  # compute-bound ceiling (prefill)
    power_tau_batches: float = 69.0  # H100 fit: batch 128 -> ~600 W


_H100_RIDGE = 989e12 / 3.35e12


@dataclass(frozen=True)
class Setup:
    name: str
    model: Model
    gpu: Gpu
    tp: int
    cal: Calibration
    max_num_seqs: int
    max_num_batched_tokens: int
    decode_batches: tuple[int, ...]
    prefill_tokens: tuple[int, ...]
    sources: tuple[str, ...]

    # ---- derived quantities (per GPU of the tensor-parallel group)
    @property
    def resident_weight_bytes(self) -> float:
        return 2 * self.model.params / self.tp

    @property
    def streamed_weight_bytes(self) -> float:
        return 2 * self.model.matmul_params / self.tp

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        return self.model.kv_bytes_per_token / self.tp

    def kv_capacity_tokens(self) -> int:
        free = (
            self.gpu.memory_bytes * self.cal.gpu_memory_utilization
            - self.resident_weight_bytes
            - self.cal.activation_reserve_bytes
        )
        return int(free / self.kv_bytes_per_token_per_gpu) // 16 * 16  # whole 16-token blocks

    def _weights_s(self) -> float:
        return self.streamed_weight_bytes / (self.gpu.hbm_bytes_per_s * self.cal.eta_bw)

    def _allreduce_s(self, tokens: int) -> float:
        if self.tp == 1:
            return 0.0
        # Two all-reduces per layer (after attention, after the MLP) of tokens x hidden
        # bf16 activations; a ring moves 2 (tp - 1) / tp of the message per GPU.
        msg = tokens * self.model.hidden * 2
        one = self.gpu.link_latency_s + 2 * (self.tp - 1) / self.tp * msg / self.gpu.link_bytes_per_s
        return 2 * self.model.layers * one

    def decode_s(self, batch: int, kv_tokens: int) -> float:
        g, c = self.gpu, self.cal
        compute = 2 * self.model.matmul_params / self.tp * batch / (g.bf16_flops * c.eta_decode)
        kv = kv_tokens * self.kv_bytes_per_token_per_gpu / (g.hbm_bytes_per_s * c.eta_kv)
        return c.overhead_s + c.per_seq_s * batch + max(self._weights_s(), compute) + kv + self._allreduce_s(batch)

    def prefill_iteration_s(self, tokens: int) -> float:
        g, c, m = self.gpu, self.cal, self.model
        flops = (2 * m.body_params * tokens + 2 * tokens**2 * m.hidden * m.layers) / self.tp
        return (
            c.overhead_s
            + c.per_seq_s
            + max(self._weights_s(), flops / (g.bf16_flops * c.eta_prefill))
            + self._allreduce_s(tokens)
        )

    def _power_share(self, batch: int) -> float:
        c = self.cal
        tau = c.power_tau_batches * self.gpu.ridge_flops_per_byte / _H100_RIDGE
        return c.power_share_max - (c.power_share_max - c.power_share_batch1) * math.exp(-(batch - 1) / tau)

    def decode_watts(self, batch: int) -> float:
        g = self.gpu
        return (g.idle_watts + self._power_share(batch) * (g.tdp_watts - g.idle_watts)) * self.tp

    def prefill_watts(self) -> float:
        g = self.gpu
        return (g.idle_watts + self.cal.power_share_max * (g.tdp_watts - g.idle_watts)) * self.tp

    def kv_grid(self) -> tuple[int, ...]:
        # Decode time is linear in KV tokens, so a coarse grid interpolates exactly.
        cap = self.kv_capacity_tokens()
        return (0, cap // 4 // 1024 * 1024, cap // 2 // 1024 * 1024, cap)

    def profile(self) -> dict[str, Any]:
        kvs = self.kv_grid()

        def ms(s: float) -> float:
            return round(s * 1000.0, 3)

        return {
            "name": self.name,
            "model": self.model.hf_name,
            "gpu": {"product": self.gpu.product, "count": self.tp},
            "kvCapacityTokens": self.kv_capacity_tokens(),
            "maxNumSeqs": self.max_num_seqs,
            "maxNumBatchedTokens": self.max_num_batched_tokens,
            "decode": {
                "batchSizes": list(self.decode_batches),
                "kvTokens": list(kvs),
                "iterationMs": [[ms(self.decode_s(b, k)) for k in kvs] for b in self.decode_batches],
            },
            "prefill": {
                "tokens": list(self.prefill_tokens),
                "ms": [ms(self.prefill_iteration_s(n)) for n in self.prefill_tokens],
            },
            "power": {
                "idleWatts": round(self.gpu.idle_watts * self.tp, 1),
                "tdpWatts": round(self.gpu.tdp_watts * self.tp, 1),
                "decodeWatts": {
                    "batchSizes": list(self.decode_batches),
                    "watts": [round(self.decode_watts(b), 1) for b in self.decode_batches],
                },
                "prefillWatts": round(self.prefill_watts(), 1),
            },
            "sources": list(self.sources),
        }


# --------------------------------------------------------------------------- hardware

H100_SXM = Gpu(
    product="NVIDIA-H100-80GB-HBM3",
    hbm_bytes_per_s=3.35e12,
    bf16_flops=989e12,
    memory_bytes=81559 * MIB,
    tdp_watts=700.0,
    idle_watts=80.0,
    link_bytes_per_s=450e9 * 0.7,
    link_latency_s=12e-6,
)

A100_SXM_80GB = Gpu(
    product="NVIDIA-A100-SXM4-80GB",
    hbm_bytes_per_s=2.039e12,
    bf16_flops=312e12,
    memory_bytes=81920 * MIB,
    tdp_watts=400.0,
    idle_watts=55.0,
    link_bytes_per_s=300e9 * 0.7,
    link_latency_s=15e-6,
)

LLAMA_31_8B = Model(
    "meta-llama/Llama-3.1-8B-Instruct", params=8.03e9, layers=32, hidden=4096, kv_heads=8, head_dim=128, vocab=128256
)
LLAMA_31_70B = Model(
    "meta-llama/Llama-3.1-70B-Instruct", params=70.55e9, layers=80, hidden=8192, kv_heads=8, head_dim=128, vocab=128256
)

# Dense around the memory->compute crossover so bilinear interpolation stays close to
# the max() kink of the roofline.
_DECODE_BATCHES = (1, 8, 16, 32, 64, 96, 128, 160, 192, 256, 384, 512)
_PREFILL_TOKENS = (64, 128, 256, 384, 512, 1024, 2048, 4096, 8192)

# --------------------------------------------------------------------------- citations

S_METHOD = (
    "DERIVED: every number under kvCapacityTokens/decode/prefill/power comes from "
    "kubetier.policy.profile_derivation (roofline: weight+KV bytes over HBM bandwidth, "
    "FLOPs over peak, efficiency factors fitted to the measurements cited here); none "
    "was measured by kubetier"
)
S_H100 = (
    "NVIDIA H100 Tensor Core GPU data sheet (SXM5 80GB): HBM3 3.35 TB/s, 989 TFLOPS dense "
    "BF16, TDP up to 700 W, NVLink 900 GB/s (hardware constants)"
)
S_A100 = (
    "NVIDIA A100 Tensor Core GPU data sheet (SXM4 80GB): HBM2e 2,039 GB/s, 312 TFLOPS dense "
    "BF16, TDP 400 W, NVLink 600 GB/s (hardware constants)"
)
S_LLAMA8 = (
    "meta-llama/Llama-3.1-8B config.json: 32 layers, hidden 4096, 8 KV heads x 128, vocab "
    "128256, 8.03B params (KV 128 KiB/token, 16.1 GB weights: derived)"
)
S_LLAMA70 = (
    "meta-llama/Llama-3.1-70B config.json: 80 layers, hidden 8192, 8 KV heads x 128, vocab "
    "128256, 70.6B params (KV 320 KiB/token, 141 GB weights: derived)"
)
S_VIDUR_H100 = (
    "Vidur (Agrawal et al., MLSys 2024), microsoft/vidur data/profiling/compute/h100/"
    "meta-llama/Llama-2-70b-hf/mlp.csv (same layer shapes as Llama-3.1-70B): MEASURED "
    "per-layer kernel times; 1 token TP1 0.625 ms/layer (~82% of HBM BW), TP4 0.179 "
    "ms/layer (~71%), 4096 tokens TP1 10.8 ms/layer (~66% of peak BF16) -> eta_bw, "
    "eta_prefill"
)
S_VIDUR_A100 = (
    "Vidur, microsoft/vidur data/profiling/compute/a100/meta-llama/Meta-Llama-3-8B/"
    "mlp.csv: MEASURED per-layer kernel times on A100; 1 token 0.30 ms/layer (~70% of "
    "HBM BW), 32768 tokens 67 ms/layer (~68% of peak BF16) -> eta_bw, eta_prefill"
)
S_VIDUR_NET = (
    "Vidur data/profiling/network/h100_dgx/all_reduce.csv: MEASURED small all-reduce "
    "20-40 us on 8 x H100 NVLink -> link_latency (12 us with vLLM's custom all-reduce "
    "on 4 GPUs is our assumption)"
)
S_INFBENCH_8B = (
    "InferenceBench concurrency-sweep recipe (yobitelcomm.github.io/bench), "
    "Llama-3.1-8B-Instruct, 1 x H100-80GB-HBM3, vLLM 0.21: MEASURED TPOT p50 6.48 ms "
    "at concurrency 1, 6.59 ms at 4 -> overhead + eta_bw fitted to D(1,0) ~ 6.5 ms"
)
S_LLAMA70_TP4 = (
    "Mazurek & Gabriel, 'LLM Inference Economics from First Principles' (as tabulated "
    "at clune.org/posts/per-token-energy-costs-again): 70B-class model on 4 x H100, "
    "2035 in / 300 out, MEASURED 53.9 tok/s at batch 1 (~18.5 ms/token incl. prefill "
    "share) -> D(1,0) fitted to ~17.4 ms"
)
S_A100_8B = (
    "J. Musgrave, 'vLLM throughput-latency sweep on NVIDIA A100' (johnmusgrave.com): "
    "Llama-3.1-8B-Instruct BF16, vLLM 0.23, A100 40GB: MEASURED ~75 tok/s at "
    "concurrency 1 (13.3 ms/token, ~77% of the 1.555 TB/s roofline) -> eta_bw 0.77 "
    "carried to the 2.039 TB/s 80GB part"
)
S_POWER = (
    "Power: ML.ENERGY Benchmark v3.0 H100-SXM5 anchors as documented by vLLM Semantic "
    "Router fleet-sim power model (batch 1 ~300 W, batch 128 ~600 W) -> decode shares; "
    "POLCA (Patel et al., 2023/ASPLOS 2024): inference rarely draws peak, prompt phase "
    "near TDP, token phase well below -> prefillWatts at 93% of the dynamic range; idle "
    "~80 W (Hopper idle measured by Serial Alice GPU energy benchmark, H200 80.3 W)"
)
S_SARATHI = (
    "Mixed iterations: Sarathi-Serve (Agrawal et al., OSDI 2024) chunked prefill + "
    "stall-free batching; vLLM default max_num_seqs 256, gpu_memory_utilization 0.9"
)

SETUPS: dict[str, Setup] = {
    "llama-3.1-8b-h100": Setup(
        name="llama-3.1-8b-h100",
        model=LLAMA_31_8B,
        gpu=H100_SXM,
        tp=1,
        cal=Calibration(
            eta_bw=0.80, eta_kv=0.70, eta_decode=0.60, eta_prefill=0.60, overhead_s=0.80e-3, per_seq_s=8e-6
        ),
        max_num_seqs=256,
        max_num_batched_tokens=2048,
        decode_batches=_DECODE_BATCHES,
        prefill_tokens=_PREFILL_TOKENS,
        sources=(S_METHOD, S_H100, S_LLAMA8, S_INFBENCH_8B, S_VIDUR_H100, S_POWER, S_SARATHI),
    ),
    "llama-3.1-70b-h100-tp4": Setup(
        name="llama-3.1-70b-h100-tp4",
        model=LLAMA_31_70B,
        gpu=H100_SXM,
        tp=4,
        cal=Calibration(eta_bw=0.72, eta_kv=0.70, eta_decode=0.60, eta_prefill=0.62, overhead_s=1.0e-3, per_seq_s=8e-6),
        max_num_seqs=256,
        max_num_batched_tokens=2048,
        decode_batches=_DECODE_BATCHES,
        prefill_tokens=_PREFILL_TOKENS,
        sources=(S_METHOD, S_H100, S_LLAMA70, S_VIDUR_H100, S_VIDUR_NET, S_LLAMA70_TP4, S_POWER, S_SARATHI),
    ),
    "llama-3.1-8b-a100": Setup(
        name="llama-3.1-8b-a100",
        model=LLAMA_31_8B,
        gpu=A100_SXM_80GB,
        tp=1,
        cal=Calibration(
            eta_bw=0.77, eta_kv=0.70, eta_decode=0.60, eta_prefill=0.62, overhead_s=0.50e-3, per_seq_s=8e-6
        ),
        max_num_seqs=256,
        max_num_batched_tokens=2048,
        decode_batches=_DECODE_BATCHES,
        prefill_tokens=_PREFILL_TOKENS,
        sources=(S_METHOD, S_A100, S_LLAMA8, S_A100_8B, S_VIDUR_A100, S_POWER, S_SARATHI),
    ),
}


# --------------------------------------------------------------------------- calibration anchors

# Published measurements the efficiency factors were fitted to, as (setup, what, the
# derivation's value, the measured value, source). A unit test keeps each within 5%.
A100_40GB = Gpu(
    product="NVIDIA-A100-SXM4-40GB",
    hbm_bytes_per_s=1.555e12,
    bf16_flops=312e12,
    memory_bytes=40960 * MIB,
    tdp_watts=400.0,
    idle_watts=55.0,
    link_bytes_per_s=300e9 * 0.7,
    link_latency_s=15e-6,
)


def calibration_anchors() -> list[tuple[str, str, float, float, str]]:
    h100_8b = SETUPS["llama-3.1-8b-h100"]
    h100_70b = SETUPS["llama-3.1-70b-h100-tp4"]
    a100 = SETUPS["llama-3.1-8b-a100"]
    a100_40 = Setup(**{**a100.__dict__, "name": "llama-3.1-8b-a100-40gb", "gpu": A100_40GB})
    # 70B: 53.9 tok/s at batch 1 over 2035 prompt + 300 output tokens, prefill included.
    per_token_70b = (h100_70b.prefill_iteration_s(2035) + 299 * h100_70b.decode_s(1, 2035 + 150)) / 300
    return [
        (
            "llama-3.1-8b-h100",
            "TPOT at concurrency 1 (s)",
            h100_8b.decode_s(1, 600),
            6.48e-3,
            "InferenceBench, vLLM 0.21, H100-80GB-HBM3",
        ),
        (
            "llama-3.1-70b-h100-tp4",
            "time per output token at batch 1 incl. prefill (s)",
            per_token_70b,
            1 / 53.9,
            "Mazurek & Gabriel via clune.org, 4 x H100",
        ),
        (
            "llama-3.1-8b-a100 (40GB part)",
            "TPOT at concurrency 1 (s)",
            a100_40.decode_s(1, 1024 + 64),
            1 / 75,
            "Musgrave, vLLM 0.23, A100 40GB",
        ),
        ("llama-3.1-8b-h100", "decode power at batch 1 (W)", h100_8b.decode_watts(1), 300.0, "ML.ENERGY v3.0 anchor"),
        (
            "llama-3.1-8b-h100",
            "decode power at batch 128 (W)",
            h100_8b.decode_watts(128),
            600.0,
            "ML.ENERGY v3.0 anchor",
        ),
    ]


def render(setup: Setup) -> str:
    header = (
        "# Generated by `python -m kubetier.policy.profile_derivation --write`;\n"
        "# edit the derivation, not this file.\n"
    )
    profile = setup.profile()
    sources = profile.pop("sources")
    # Numbers in flow style (one grid row per line); the citations one per line.
    return (
        header
        + yaml.safe_dump(profile, sort_keys=False, width=100, default_flow_style=None)
        + yaml.safe_dump({"sources": sources}, sort_keys=False, width=100, default_flow_style=False)
    )


def _profiles_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "profiles"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kubetier.policy.profile_derivation", description="derive the built-in latency profiles"
    )
    ap.add_argument("names", nargs="*", help="profiles to derive (default: all)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the YAML files")
    mode.add_argument("--check", action="store_true", help="fail if a checked-in file differs")
    args = ap.parse_args(argv)
    names = args.names or list(SETUPS)
    rc = 0
    for name in names:
        if name not in SETUPS:
            print(f"unknown profile {name!r} (known: {', '.join(SETUPS)})", file=sys.stderr)
            return 2
        text = render(SETUPS[name])
        path = _profiles_dir() / f"{name}.yaml"
        if args.write:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        elif args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                print(f"{path} differs from its derivation", file=sys.stderr)
                rc = 1
        else:
            sys.stdout.write(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
