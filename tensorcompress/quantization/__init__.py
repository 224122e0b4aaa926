"""Quantization: uniform (affine and symmetric) quantizers bit-exact with PyTorch's fake-quant kernels.

* :mod:`~tensorcompress.quantization.uniform` — :class:`QParams`, :func:`qparams`, :func:`quantize`,
  :func:`dequantize`, :func:`fake_quantize`.
"""

from .uniform import QParams, dequantize, fake_quantize, integer_dtype, qparams, qrange, quantize

__all__ = ["QParams", "qparams", "qrange", "quantize", "dequantize", "fake_quantize", "integer_dtype"]
