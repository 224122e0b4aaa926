"""Export: the one compressed-model file and its coding primitives.

* :mod:`~tensorcompress.export.file` — :func:`save_compressed`, :func:`load_compressed`, :func:`encode_compressed`:
  dense, pruned, shared, pruned-and-shared, fake-quantized and integer models, tied weights kept, in one
  CRC-checked, entropy-coded format, with its layout, its rules for hostile files and for adding layer kinds;
* :mod:`~tensorcompress.export.architectures` — the registry of architectures a file may name
  (:func:`register_architecture`);
* :mod:`~tensorcompress.export.coding` — entropy, Huffman and ANS coders (``constriction``), LEB128 varints;
* :mod:`~tensorcompress.export.csr` — CSR with Deep Compression's relative indices and filler zeros.
"""

from .architectures import register_architecture, registered_architectures
from .coding import *  # noqa: F403
from .coding import __all__ as _coding_all
from .csr import CSRRelative, csr_decode, csr_encode
from .file import (
    FORMAT_VERSION,
    KINDS,
    Kind,
    StreamSize,
    encode_compressed,
    load_compressed,
    save_compressed,
    shared_streams,
)

__all__ = ["save_compressed", "load_compressed", "encode_compressed", "shared_streams", "StreamSize", "Kind", "KINDS",
           "FORMAT_VERSION", "register_architecture", "registered_architectures", "CSRRelative", "csr_encode",
           "csr_decode", *_coding_all]
