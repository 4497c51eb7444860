"""First-principles derivation of the built-in latency profiles (reproducible numbers).

Run ``python -m kubetier.policy.profile_derivation --write`` to regenerate
``operator/kubetier/profiles/<name>.yaml``; without ``--write`` it prints the YAML and
``--check`` fails when a checked-in file differs from what this module derives.

The model of one engine iteration on a tensor-parallel group of ``tp`` GPUs (per GPU):

* decode step, batch ``B`` holding ``K`` KV tokens::

      t = overhead + per_seq * B + max(weights / (BW * eta_bw),
                                      2 * params * B / (FLOPS * eta_decode))
          + K * kv_bytes_per_token / (BW * eta_kv) + allreduce(B)

  The weights are read once per step (memory-bound at small batch); the linear layers
  become compute-bound when ``2 * params * B`` FLOPs outlast the weight read; every KV
  token is read once per step (paged attention reaches a lower share of HBM bandwidth
  than the dense GEMVs, hence a separate ``eta_kv``); ``per_seq`` is the CPU-side
  scheduling/sampling cost per sequence; ``allreduce`` is two all-reduces per layer
  under tensor parallelism.
* prefill iteration of ``N`` prompt tokens (no decode)::

      t = overhead + max(weights / (BW * eta_bw),
                         (2 * params * N + 2 * N^2 * hidden * layers) / (FLOPS * eta_prefill))
          + allreduce(N)

* power: ``idle`` with no work; decode power rises with the share of the step spent
  computing (a memory-bound GEMV keeps the SMs mostly stalled); a full prefill chunk
  draws ``prefill_fraction * TDP``.

The efficiency factors (``eta_*``, ``overhead``, ``per_seq``) are the calibrated part:
each hardware/model entry below names the published measurement it was fitted to.
Everything else (bytes, FLOPs, bandwidths, capacities) is derived from the model
architecture and the GPU data sheet.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    product: str
    hbm_bytes_per_s: float      # data-sheet HBM bandwidth
    bf16_flops: float           # data-sheet dense BF16 tensor FLOP/s (no sparsity)
    memory_bytes: float         # as reported by the driver
    tdp_watts: float
    idle_watts: float           # measured idle board power of a GPU with a model loaded
    link_bytes_per_s: float     # per-GPU all-reduce bus bandwidth (NVLink) for TP
    link_latency_s: float       # latency of one small all-reduce


@dataclass(frozen=True)
class Model:
    hf_name: str
    params: float               # parameters (bf16: 2 bytes each)
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2  # K and V, bf16


@dataclass(frozen=True)
class Calibration:
    eta_bw: float               # share of HBM bandwidth reached reading weights
    eta_kv: float               # share of HBM bandwidth reached by paged attention
    eta_decode: float           # share of peak FLOPs in decode GEMMs (small M)
    eta_prefill: float          # share of peak FLOPs in prefill (MFU)
    overhead_s: float           # fixed per-iteration cost (launches, scheduler, sampler)
    per_seq_s: float            # per-sequence CPU cost per iteration
    gpu_memory_utilization: float = 0.90   # vLLM default
    activation_reserve_bytes: float = 2.5 * GIB  # peak activations + CUDA graphs
    decode_power_fraction_low: float = 0.40  # share of (TDP - idle) at batch 1
    decode_power_fraction_high: float = 0.80  # ... when decode is compute-bound
    prefill_power_fraction: float = 0.93   # prefill draw as a share of TDP


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

    # ---- derived quantities (per GPU of the TP group)
    @property
    def weight_bytes(self) -> float:
        return 2 * self.model.params / self.tp

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        return self.model.kv_bytes_per_token / self.tp

    def kv_capacity_tokens(self) -> int:
        free = (self.gpu.memory_bytes * self.cal.gpu_memory_utilization
                - self.weight_bytes - self.cal.activation_reserve_bytes)
        # vLLM allocates whole 16-token blocks.
        return int(free / self.kv_bytes_per_token_per_gpu) // 16 * 16

    def _allreduce_s(self, tokens: int) -> float:
        if self.tp == 1:
            return 0.0
        # Two all-reduces per layer (after attention and after the MLP) of
        # tokens x hidden bf16 activations; ring all-reduce moves 2(tp-1)/tp of it.
        msg = tokens * self.model.hidden * 2
        per = self.gpu.link_latency_s + 2 * (self.tp - 1) / self.tp * msg / self.gpu.link_bytes_per_s
        return 2 * self.model.layers * per

    def decode_s(self, batch: int, kv_tokens: int) -> float:
        g, c = self.gpu, self.cal
        weights = self.weight_bytes / (g.hbm_bytes_per_s * c.eta_bw)
        compute = 2 * self.model.params / self.tp * batch / (g.bf16_flops * c.eta_decode)
        kv = kv_tokens * self.kv_bytes_per_token_per_gpu / (g.hbm_bytes_per_s * c.eta_kv)
        return c.overhead_s + c.per_seq_s * batch + max(weights, compute) + kv + self._allreduce_s(batch)

    def prefill_iteration_s(self, tokens: int) -> float:
        g, c, m = self.gpu, self.cal, self.model
        weights = self.weight_bytes / (g.hbm_bytes_per_s * c.eta_bw)
        flops = (2 * m.params * tokens + 2 * tokens**2 * m.hidden * m.layers) / self.tp
        # One sequence's scheduling cost, like a batch-1 decode step.
        return (c.overhead_s + c.per_seq_s + max(weights, flops / (g.bf16_flops * c.eta_prefill))
                + self._allreduce_s(tokens))

    def decode_watts(self, batch: int) -> float:
        g, c = self.gpu, self.cal
        weights = self.weight_bytes / (g.hbm_bytes_per_s * c.eta_bw)
        compute = 2 * self.model.params / self.tp * batch / (g.bf16_flops * c.eta_decode)
        busy = min(1.0, compute / weights)  # share of the step the tensor cores are busy
        frac = c.decode_power_fraction_low + (c.decode_power_fraction_high - c.decode_power_fraction_low) * busy
        return (g.idle_watts + frac * (g.tdp_watts - g.idle_watts)) * self.tp

    def kv_grid(self) -> tuple[int, ...]:
        cap = self.kv_capacity_tokens()
        return (0, cap // 4 // 1024 * 1024, cap // 2 // 1024 * 1024, cap)

    def profile(self) -> dict:
        kvs = self.kv_grid()
        ms = lambda s: round(s * 1000.0, 3)  # noqa: E731
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
                "prefillWatts": round(self.cal.prefill_power_fraction * self.gpu.tdp_watts * self.tp, 1),
            },
            "sources": list(self.sources),
        }


# --------------------------------------------------------------------------- hardware

H100_SXM = Gpu(
    product="NVIDIA-H100-80GB-HBM3",
    hbm_bytes_per_s=3.35e12, bf16_flops=989e12, memory_bytes=81559 * 1024**2,
    tdp_watts=700.0, idle_watts=90.0,
    link_bytes_per_s=450e9 * 0.7, link_latency_s=12e-6,
)

LLAMA_31_8B = Model("meta-llama/Llama-3.1-8B-Instruct", params=8.03e9, layers=32,
                    hidden=4096, kv_heads=8, head_dim=128)

_DECODE_BATCHES = (1, 8, 32, 64, 128, 256)
_PREFILL_TOKENS = (128, 512, 1024, 2048, 4096, 8192)

_SRC_H100 = ("NVIDIA H100 Tensor Core GPU data sheet: SXM5 80GB HBM3 3.35 TB/s, "
             "989 TFLOPS dense BF16, TDP up to 700 W (hardware constants: data sheet)")
_SRC_LLAMA_8B = ("Llama-3.1-8B config.json: 32 layers, hidden 4096, 8 KV heads x 128 "
                 "(KV bytes/token and weight bytes: derived)")
_SRC_METHOD = ("iteration times derived by kubetier.policy.profile_derivation (roofline: "
               "weights+KV bytes over HBM bandwidth, FLOPs over peak, efficiency factors); "
               "every number in decode/prefill/power is derived, none measured by us")

SETUPS: dict[str, Setup] = {
    "llama-3.1-8b-h100": Setup(
        name="llama-3.1-8b-h100", model=LLAMA_31_8B, gpu=H100_SXM, tp=1,
        cal=Calibration(eta_bw=0.85, eta_kv=0.70, eta_decode=0.60, eta_prefill=0.55,
                        overhead_s=1.0e-3, per_seq_s=10e-6),
        max_num_seqs=256, max_num_batched_tokens=2048,
        decode_batches=_DECODE_BATCHES, prefill_tokens=_PREFILL_TOKENS,
        sources=(_SRC_METHOD, _SRC_H100, _SRC_LLAMA_8B),
    ),
}


def render(setup: Setup) -> str:
    header = (f"# Generated by `python -m kubetier.policy.profile_derivation --write`;\n"
              f"# edit the derivation, not this file.\n")
    profile = setup.profile()
    sources = profile.pop("sources")
    # Numbers in flow style (one grid row per line); the citations one per line.
    return (header
            + yaml.safe_dump(profile, sort_keys=False, width=100, default_flow_style=None)
            + yaml.safe_dump({"sources": sources}, sort_keys=False, width=100,
                             default_flow_style=False))


def _profiles_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "profiles"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kubetier.policy.profile_derivation",
                                 description="derive the built-in latency profiles")
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
