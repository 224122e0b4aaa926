"""Export: the one compressed-model file and its coding primitives.

* :mod:`~tensorcompress.export.file` — :func:`save_compressed`, :func:`load_compressed`, :func:`encode_compressed`:
  dense, pruned, shared, pruned-and-shared, fake-quantized and integer models, tied weights kept, in one
  CRC-checked, entropy-coded format, with its layout, its rules for hostile files and for adding layer kinds;
* :mod:`~tensorcompress.export.architectures` — the registry of architectures a file may name
  (:func:`register_architecture`);
* :mod:`~tensorcompress.export.coding` — entropy, Huffman and ANS coders (``constriction``), LEB128 varints;
* :mod:`~tensorcompress.export.csr` — CSR with Deep Compression's relative indices and filler zeros;
* :mod:`~tensorcompress.export.onnx` — :func:`to_onnx` (plain float or QDQ int8 ONNX) and :func:`onnx_session`
  (ONNX Runtime, one thread, no spinning); needs the ``[onnx]`` extra only when called.
"""

from . import architectures, coding, csr
from .architectures import *  # noqa: F403
from .coding import *  # noqa: F403
from .csr import *  # noqa: F403
from .file import *  # noqa: F403
from .file import __all__ as _file_all
from .onnx import onnx_session, to_onnx

_KIND_TOOLS = ("Found", "Decoded", "Reader", "field", "CODERS")
"""Names for writing a new layer kind: public in :mod:`tensorcompress.export.file`, not re-exported here."""

__all__ = [*(n for n in _file_all if n not in _KIND_TOOLS), *architectures.__all__, *csr.__all__, *coding.__all__,
           "to_onnx", "onnx_session"]
