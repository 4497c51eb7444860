"""`kubetier profiles list|show|validate`: inspect latency profiles."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import yaml

from kubetier.policy.latency import DEFAULT_PROFILE, LatencyModel, ProfileError, list_profiles, load_profile

_SUMMARY_BATCHES = (1, 8, 32, 64, 128, 256)
_SUMMARY_PROMPTS = (128, 512, 2048, 8192)


def summary(m: LatencyModel) -> dict[str, Any]:
    """The numbers a person checks first, in milliseconds and watts."""
    kv_points = (0, m.kv_capacity_tokens // 2, m.kv_capacity_tokens)
    return {
        "name": m.name,
        "model": m.model,
        "gpu": f"{m.gpu_count} x {m.gpu_product}" if m.gpu_product else "",
        "engine": m.engine,
        "requestOverheadMs": round(m.request_overhead_s * 1e3, 3),
        "kvCapacityTokens": m.kv_capacity_tokens,
        "maxNumSeqs": m.max_num_seqs,
        "maxNumBatchedTokens": m.max_num_batched_tokens,
        "decodeIterationMs": {
            f"batch {b}": {f"kv {k}": round(m.decode_iteration_s(b, k) * 1e3, 2) for k in kv_points}
            for b in _SUMMARY_BATCHES
        },
        "prefillMs": {f"{n} tokens": round(m.prefill_s(n) * 1e3, 1) for n in _SUMMARY_PROMPTS},
        "contextNsPerTokenPair": round(m.context_s_per_pair * 1e9, 4),
        "watts": {
            "idle": m.idle_watts,
            "decode batch 1": round(m.power_watts(1, 0), 1),
            "decode batch 256": round(m.power_watts(256, 0), 1),
            "prefill full chunk": round(m.power_watts(0, m.max_num_batched_tokens), 1),
            "tdp": m.tdp_watts,
        },
        "sources": list(m.sources),
    }


def _print_summary(m: LatencyModel) -> None:
    s = summary(m)
    print(f"{s['name']}: {s['model']} on {s['gpu']}" + (f", {s['engine']}" if s["engine"] else ""))
    print(
        f"  KV capacity {s['kvCapacityTokens']} tokens, maxNumSeqs {s['maxNumSeqs']}, "
        f"maxNumBatchedTokens {s['maxNumBatchedTokens']}"
    )
    kv_points = (0, m.kv_capacity_tokens // 2, m.kv_capacity_tokens)
    print("  decode iteration (ms)   " + "".join(f"{'kv ' + str(k):>14}" for k in kv_points))
    for b in _SUMMARY_BATCHES:
        print(f"    batch {b:<5}          " + "".join(f"{m.decode_iteration_s(b, k) * 1e3:>14.2f}" for k in kv_points))
    print(
        "  prefill on an idle server (ms): "
        + ", ".join(f"{n} tok {v}" for n, v in ((n, s["prefillMs"][f"{n} tokens"]) for n in _SUMMARY_PROMPTS))
    )
    print(
        f"  request overhead {s['requestOverheadMs']} ms per request; attention to earlier prompt chunks "
        f"{s['contextNsPerTokenPair']} ns per token pair"
    )
    print("  power (W): " + ", ".join(f"{k} {v:g}" for k, v in s["watts"].items()))
    if s["sources"]:
        print("  sources:")
        for src in s["sources"]:
            print(f"    - {src}")


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `kubetier profiles show | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces stdout for the rest of the process
        return 0


def _main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="kubetier profiles", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the built-in profiles")
    show = sub.add_parser("show", help="key numbers of a profile (built-in name or YAML path)")
    show.add_argument("name", nargs="?", default=DEFAULT_PROFILE)
    show.add_argument(
        "-o",
        "--output",
        choices=("text", "json", "yaml"),
        default="text",
        help="text: summary; json: summary; yaml: the full profile",
    )
    val = sub.add_parser("validate", help="validate profile YAML files")
    val.add_argument("paths", nargs="+")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "list":
            for name in list_profiles():
                m = load_profile(name)
                default = "  (default)" if name == DEFAULT_PROFILE else ""
                print(
                    f"{name:<24} {m.model} on {m.gpu_count} x {m.gpu_product}, "
                    f"KV {m.kv_capacity_tokens} tokens{default}"
                )
            return 0
        if args.cmd == "show":
            m = load_profile(args.name)
            if args.output == "yaml":
                sys.stdout.write(yaml.safe_dump(m.to_dict(), sort_keys=False, default_flow_style=None))
            elif args.output == "json":
                print(json.dumps(summary(m), indent=2))
            else:
                _print_summary(m)
            return 0
        rc = 0
        for path in args.paths:
            try:
                m = load_profile(path)
                print(f"{path}: ok ({m.name})")
            except ProfileError as e:
                print(f"{path}: invalid: {e}", file=sys.stderr)
                rc = 1
        return rc
    except ProfileError as e:
        print(f"kubetier profiles: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
