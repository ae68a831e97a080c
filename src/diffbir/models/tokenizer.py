"""OpenCLIP's byte-level BPE tokenizer (the one SD 2.x prompts go through).

The vocabulary comes from OpenCLIP's ``bpe_simple_vocab_16e6.txt.gz`` or from
the equivalent Hugging Face pair ``vocab.json`` + ``merges.txt``; both give the
same ids. Prompts are cleaned as OpenCLIP does (HTML unescaped twice,
whitespace collapsed, lower-cased, ``ftfy.fix_text`` when ftfy is installed),
split with CLIP's regex, encoded, wrapped in start/end tokens and zero padded.
"""

from __future__ import annotations

import copy
import gzip
import html
import json
from collections import OrderedDict
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import regex
import torch

from diffbir.errors import CheckpointError

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
BPE_GZ_NAME = "bpe_simple_vocab_16e6.txt.gz"
# The first 48894 merges of the gz file (its line 0 is a header) make CLIP's
# 49408-token vocabulary: 256 bytes, 256 bytes + "</w>", the merges, SOT, EOT.
_NUM_MERGES = 49152 - 256 - 2
_VOCAB_SIZE = 49408
_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
    r"""[^\s\p{L}\p{N}]+"""
)


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character (GPT-2/CLIP byte-level BPE alphabet).

    Printable Latin-1 bytes map to themselves; the others to code points from 256 up.
    The insertion order (printable bytes first) is the order of the first 256 token ids.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _vocab_from_merges(merges: list[tuple[str, str]]) -> list[str]:
    alphabet = list(bytes_to_unicode().values())
    return [
        *alphabet,
        *(c + "</w>" for c in alphabet),
        *("".join(pair) for pair in merges),
        SOT_TOKEN,
        EOT_TOKEN,
    ]


class OpenCLIPTokenizer:
    """Prompt strings to OpenCLIP token ids ``[B, context_length]``.

    Build it from the gz vocabulary (``OpenCLIPTokenizer(path)``) or from the
    Hugging Face files (:meth:`from_hf_files`). Raises :class:`CheckpointError`
    when the files are missing, unreadable or not a CLIP vocabulary.
    """

    #: A text piece that is a token of its own wherever it appears, or None (OpenCLIP).
    #: Hugging Face's ``CLIPTokenizer`` of SD 2.1-base makes its pad token ``"!"`` one
    #: (id 0, split out before the BPE), which HYPIR's prompts go through.
    split_token: str | None = None

    def __init__(self, bpe_path: str | PathLike | None = None, *, cache_size: int = 10_000):
        self._cache_size = cache_size
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        if bpe_path is not None:
            merges = _read_gz_merges(Path(bpe_path))
            vocab = _vocab_from_merges(merges)
            self._setup({tok: i for i, tok in enumerate(vocab)}, merges, str(bpe_path))

    @classmethod
    def from_hf_files(
        cls, vocab_json: str | PathLike, merges_txt: str | PathLike, *, cache_size: int = 10_000
    ) -> OpenCLIPTokenizer:
        """Build the tokenizer from a Hugging Face ``vocab.json`` and ``merges.txt`` pair."""
        vocab_path, merges_path = Path(vocab_json), Path(merges_txt)
        try:
            encoder = json.loads(vocab_path.read_text(encoding="utf-8"))
            lines = merges_path.read_text(encoding="utf-8").split("\n")
        except FileNotFoundError as exc:
            raise CheckpointError(f"tokenizer file missing: {exc.filename}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"tokenizer files unreadable ({vocab_path}, {merges_path}): {exc}"
            ) from None
        if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
            raise CheckpointError(f"{vocab_path}: not a token -> id mapping")
        merges = _parse_merges(
            [ln for ln in lines if ln and not ln.startswith("#version")], merges_path
        )
        tok = cls(cache_size=cache_size)
        tok._setup(encoder, merges, f"{vocab_path} + {merges_path}")
        return tok

    def _setup(self, encoder: dict[str, int], merges: list[tuple[str, str]], origin: str) -> None:
        missing = [t for t in (SOT_TOKEN, EOT_TOKEN) if t not in encoder]
        if missing or len(encoder) != _VOCAB_SIZE:
            raise CheckpointError(
                f"{origin}: not an OpenCLIP/CLIP vocabulary ({len(encoder)} tokens, "
                f"expected {_VOCAB_SIZE}{'; missing ' + ', '.join(missing) if missing else ''})"
            )
        unknown = ["".join(p) for p in merges if "".join(p) not in encoder]
        if unknown:
            raise CheckpointError(
                f"{origin}: {len(unknown)} merges produce tokens absent from the vocabulary "
                f"(first: {unknown[0]!r})"
            )
        self.encoder = encoder
        self.byte_encoder = bytes_to_unicode()
        self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
        self.sot_token_id = encoder[SOT_TOKEN]
        self.eot_token_id = encoder[EOT_TOKEN]
        self._pattern = regex.compile(_PATTERN, regex.IGNORECASE)

    @property
    def vocab_size(self) -> int:
        """Number of tokens (49408 for CLIP)."""
        return len(self.encoder)

    def _bpe(self, word: str) -> list[int]:
        """Ids of one pre-tokenized word (already mapped to the byte alphabet)."""
        cached = self._cache.get(word)
        if cached is not None:
            self._cache.move_to_end(word)
            return cached
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.encoder[p] for p in parts]
        self._cache[word] = ids
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return ids

    def with_split_token(self, token: str) -> OpenCLIPTokenizer:
        """A copy (sharing the vocabulary) that makes ``token`` a token of its own wherever
        it appears, as Hugging Face's ``CLIPTokenizer`` does with its special tokens."""
        if token not in self.encoder:
            raise CheckpointError(f"{token!r} is not a token of this vocabulary")
        other = copy.copy(self)
        other.split_token = token
        return other

    def encode(self, text: str) -> list[int]:
        """Token ids of one prompt, without the start/end tokens."""
        if self.split_token is None or self.split_token not in text:
            return self._encode_plain(text)
        ids: list[int] = []
        for index, segment in enumerate(text.split(self.split_token)):
            if index:
                ids.append(self.encoder[self.split_token])
            ids.extend(self._encode_plain(segment))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._pattern.findall(clean_text(text)):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self._bpe(word))
        return ids

    def __call__(self, prompts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
        """Token ids ``LongTensor[B, context_length]``: SOT, text, EOT, zeros.

        Too long prompts are cut so that EOT stays the last token.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        out = torch.zeros(len(prompts), context_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids = [self.sot_token_id, *self.encode(prompt), self.eot_token_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def clean_text(text: str) -> str:
    """OpenCLIP's prompt cleaning: ftfy (if installed), HTML unescape x2, collapse spaces, lower."""
    try:
        import ftfy
    except ImportError:
        ftfy = None
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


def _read_gz_merges(path: Path) -> list[tuple[str, str]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such tokenizer vocabulary file") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a gzip BPE vocabulary ({exc})") from None
    body = lines[1 : _NUM_MERGES + 1]
    if len(body) < _NUM_MERGES:
        raise CheckpointError(
            f"{path}: holds {len(body)} merges, an OpenCLIP vocabulary needs {_NUM_MERGES}"
        )
    return _parse_merges(body, path)


def _parse_merges(lines: list[str], origin: Path) -> list[tuple[str, str]]:
    merges = []
    for n, line in enumerate(lines):
        pair = line.split()
        if len(pair) != 2:
            raise CheckpointError(f"{origin}: merge {n} is not a pair of symbols: {line[:40]!r}")
        merges.append((pair[0], pair[1]))
    return merges


def write_hf_files(tokenizer: OpenCLIPTokenizer, folder: str | PathLike) -> tuple[Path, Path]:
    """Write the tokenizer's vocabulary as Hugging Face ``vocab.json`` + ``merges.txt``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(tokenizer.encoder, ensure_ascii=False), encoding="utf-8")
    ranked = sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])
    lines = ["#version: 0.2", *(f"{a} {b}" for (a, b), _ in ranked)]
    merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def bundled_vocabulary() -> Path:
    """The OpenCLIP BPE vocabulary shipped with the package (``models/data/``)."""
    return Path(__file__).parent / "data" / BPE_GZ_NAME


def load_tokenizer(
    source: str | PathLike | None = None, *, weights_dir: str | PathLike | None = None
) -> OpenCLIPTokenizer:
    """Load the OpenCLIP tokenizer.

    ``source`` is the gz vocabulary, or a folder holding it or ``vocab.json`` +
    ``merges.txt``. ``None`` uses the copy shipped inside the package (the
    release ships it in its tree too), so no download is ever needed for it;
    ``weights_dir`` is accepted for compatibility and ignored then. Raises
    :class:`CheckpointError` when nothing usable is found.
    """
    del weights_dir
    if source is None:
        source = bundled_vocabulary()
    path = Path(source)
    if path.is_dir():
        if (path / BPE_GZ_NAME).is_file():
            return OpenCLIPTokenizer(path / BPE_GZ_NAME)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return OpenCLIPTokenizer.from_hf_files(path / "vocab.json", path / "merges.txt")
        raise CheckpointError(
            f"{path}: no tokenizer here (expected {BPE_GZ_NAME}, or vocab.json and merges.txt)"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such tokenizer file or folder")
    return OpenCLIPTokenizer(path)
