"""Tensor decompositions: CP (:mod:`.cp`), Tucker (:mod:`.tucker`), tensor-train (:mod:`.tt`) and TT-matrix
(:mod:`.tt_matrix`), each returning a small result class with ``to_tensor()``, ``n_params``, ``rank``/``ranks``,
``to(device or dtype)`` and conversion to and from TensorLy.

``cp_als``, ``hosvd``, ``tucker`` and ``tt_svd`` (hence ``tt_matrix_svd``) run under ``torch.no_grad()``: decomposing
a trainable weight records no autograd graph. TT arithmetic, ``to_tensor`` and ``tt_matrix_vector_product`` are
differentiable."""

from .cp import CPTensor, cp_als, cp_to_tensor
from .tt import TTTensor, tt_inner, tt_round, tt_svd, tt_to_tensor
from .tt_matrix import TTMatrix, tt_matrix_svd, tt_matrix_vector_product
from .tucker import TuckerTensor, hosvd, tucker, tucker_to_tensor

__all__ = [
    "CPTensor",
    "cp_als",
    "cp_to_tensor",
    "TuckerTensor",
    "hosvd",
    "tucker",
    "tucker_to_tensor",
    "TTTensor",
    "tt_svd",
    "tt_round",
    "tt_inner",
    "tt_to_tensor",
    "TTMatrix",
    "tt_matrix_svd",
    "tt_matrix_vector_product",
]
