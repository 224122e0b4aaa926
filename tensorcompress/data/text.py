"""A real text corpus shipped with the package, as character tokens: :func:`load_text` and :func:`text_windows`.

The corpus is the topics of the Python reference documentation (the text ``help("topic")`` prints:
``pydoc_data.topics`` of CPython 3.11.7, its values joined in sorted key order), 464,970 characters of English
prose, grammar rules and code examples under the PSF licence. It was frozen once into
``tensorcompress/data/corpora/python_topics.txt.xz`` (95 kB of xz, package data: a wheel carries it, nothing is
downloaded), with the licence beside it in ``LICENSE-PSF.txt``; the SHA-256 of the text (:data:`TEXT_SHA256`) is
checked on every load, so the corpus cannot drift with the Python that runs the library.

Tokens are characters. The vocabulary is the sorted set of the corpus' characters (103 of them), token ``i`` the
``i``-th of them; the text is cut contiguously into train / validation / test (90 / 5 / 5 %), so the test text is a
stretch of documentation the model never saw, not a shuffle of sentences it did.

A unigram model (each character drawn with its training frequency) needs :math:`H = -\\sum_c p_c \\log_2 p_c`
bits per character; a model that predicts from context needs fewer, and the gap is what it learnt.
"""

from __future__ import annotations

import hashlib
import lzma
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._validation import check_positive_int

__all__ = ["load_text", "text_windows", "TextCorpus", "TEXT_SHA256", "TEXT_PATH", "TEXT_LICENSE_PATH"]

#: The compressed corpus (package data) and its licence.
TEXT_PATH = Path(__file__).resolve().parent / "corpora" / "python_topics.txt.xz"
TEXT_LICENSE_PATH = TEXT_PATH.with_name("LICENSE-PSF.txt")
#: SHA-256 of the corpus' UTF-8 text (after decompression).
TEXT_SHA256 = "37d06970fc926e60c16dff401e441b84752446a36b6b64516c229fdec77e992c"
#: Train and validation fractions of the contiguous split (the test split is the rest).
SPLIT = (0.90, 0.05)


@dataclass(frozen=True, eq=False)
class TextCorpus:
    """A character-tokenised corpus split contiguously into ``train``, ``val`` and ``test`` (1-D ``int64``).

    ``vocab`` holds the characters in token order; :meth:`encode` and :meth:`decode` convert between text and tokens.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    vocab: str
    index: dict[str, int] = field(repr=False)

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens (characters)."""
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """Tokens of ``text`` (1-D ``int64``); ``ValueError`` names the first character outside the vocabulary."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            return torch.tensor([self.index[c] for c in text], dtype=torch.int64)
        except KeyError as e:
            raise ValueError(f"text holds the character {e.args[0]!r} (U+{ord(e.args[0]):04X}), which is not in the "
                             f"vocabulary of {self.vocab_size} characters") from None

    def decode(self, tokens: torch.Tensor) -> str:
        """The text of 1-D integer ``tokens`` (``ValueError`` for a token outside ``0 .. vocab_size - 1``)."""
        if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex():
            raise TypeError(f"tokens must be an integer torch.Tensor, got {_describe(tokens)}")
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        bad = (tokens < 0) | (tokens >= self.vocab_size)
        if bad.any():
            raise ValueError(f"tokens must lie in 0 .. {self.vocab_size - 1}, got {int(tokens[bad][0])}")
        return "".join(self.vocab[i] for i in tokens.tolist())


def _describe(x: object) -> str:
    return f"a tensor of dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__


def read_text(path: str | Path = TEXT_PATH, *, sha256: str = TEXT_SHA256) -> str:
    """The corpus text from the xz file ``path``, checked against ``sha256`` (``ValueError`` on a mismatch)."""
    raw = lzma.decompress(Path(path).read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path} decompresses to text with SHA-256 {digest}, not the recorded {sha256}: the corpus "
                         "file is corrupted or was replaced")
    return raw.decode("utf-8")


def load_text() -> TextCorpus:
    """The Python documentation corpus as character tokens, split contiguously 90 / 5 / 5 (train / val / test).

    Returns
    -------
    TextCorpus
        ``train`` (418,473 tokens), ``val`` (23,248) and ``test`` (23,249) as 1-D ``int64`` tensors,
        ``vocab_size`` (103), ``encode(str)`` and ``decode(tensor)``.

    Raises
    ------
    ValueError
        If the shipped file does not hash to :data:`TEXT_SHA256`.

    Examples
    --------
    >>> corpus = load_text()
    >>> corpus.decode(corpus.encode("def f(x):"))
    'def f(x):'
    """
    text = read_text()
    vocab = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(vocab)}
    tokens = torch.tensor([index[c] for c in text], dtype=torch.int64)
    n_train, n_val = int(SPLIT[0] * len(text)), int(SPLIT[1] * len(text))
    train, val, test = tokens[:n_train], tokens[n_train:n_train + n_val], tokens[n_train + n_val:]
    return TextCorpus(train=train.clone(), val=val.clone(), test=test.clone(), vocab=vocab, index=index)


def text_windows(tokens: torch.Tensor, n: int, context: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` windows of ``context`` consecutive tokens at seeded random offsets: an ``n × context`` ``int64`` tensor.

    Offsets are drawn uniformly (with replacement) from ``0 .. len(tokens) - context`` by a ``torch.Generator``
    seeded with ``seed``, so the same call gives the same windows anywhere. Made for calibration data and training
    batches of a language model.

    Parameters
    ----------
    tokens : torch.Tensor
        1-D integer tokens, e.g. ``load_text().train``.
    n : int
        Number of windows (>= 1).
    context : int
        Tokens per window, between 1 and ``len(tokens)``.
    seed : int
        Seed of the offsets.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex():
        raise TypeError(f"tokens must be an integer torch.Tensor, got {_describe(tokens)}")
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    check_positive_int(n, "n")
    check_positive_int(context, "context")
    if context > tokens.numel():
        raise ValueError(f"context must be at most len(tokens) = {tokens.numel()}, got {context}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - context + 1, (n,), generator=generator)
    return tokens[starts[:, None] + torch.arange(context)].to(torch.int64)
