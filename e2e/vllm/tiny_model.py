#!/usr/bin/env python3
"""Build a tiny, randomly initialised Llama model on disk, without any model hub.

    <vllm-venv>/bin/python e2e/vllm/tiny_model.py DIR

A byte-level BPE tokenizer (vocabulary 2,000) trained on the Python standard library's
own sources, wrapped with a chat template, and a LlamaConfig model: hidden 256, 4 heads
(head_dim 64: vLLM's CPU attention kernels refuse head_dim 16 on AVX2), 2 KV heads,
intermediate 512, 2 layers, random weights (about 2.2 M parameters), 8,192 positions.
It generates nonsense, quickly: enough to exercise vLLM's real server, scheduler,
streaming, token-id prompts and metrics. The positions are there so one answer can be long
enough to kill its engine well inside the stream (the kill-and-resume test: 4,000 tokens;
with 2,048 positions 1,500 tokens took 3.7 s). Idempotent: an existing complete DIR built
with the same positions is kept.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

MAX_POSITIONS = 8192
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def complete(out: Path) -> bool:
    if not ((out / "config.json").is_file() and (out / "tokenizer.json").is_file() and any(out.glob("*.safetensors"))):
        return False
    return json.loads((out / "config.json").read_text()).get("max_position_embeddings") == MAX_POSITIONS


def build(out: Path) -> None:
    if complete(out):
        print(f"tiny model: cached at {out}")
        return
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(str(p) for p in stdlib.glob("*.py"))[:200]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train(files, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        num_hidden_layers=2,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    print(f"tiny model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters at {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    build(Path(sys.argv[1]))
