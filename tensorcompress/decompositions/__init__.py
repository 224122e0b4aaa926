"""Tensor decompositions: CP (:mod:`.cp`), Tucker (:mod:`.tucker`), tensor-train (:mod:`.tt`) and TT-matrix
(:mod:`.tt_matrix`), each returning a small result class with ``to_tensor()``, ``n_params``, ``rank``,
``to(device or dtype)`` and conversion to and from TensorLy; seeded random tensors of known rank with their ground
truth (:mod:`.random`: ``random_cp``, ``random_tucker``, ``random_tt``, ``add_noise``); ``rank_for_energy``, the
rank that keeps a fraction of a spectrum's energy. CP-ALS's GEMM layout rule and its opt-in timing live in
:mod:`.cp_tuning`.

``cp_als``, ``hosvd``, ``tucker`` and ``tt_svd`` (hence ``tt_matrix_svd``) run under ``torch.no_grad()``: decomposing
a trainable weight records no autograd graph. TT arithmetic, ``to_tensor`` and ``tt_matrix_vector_product`` are
differentiable.

Rules shared by every decomposition (``cp_als``, ``hosvd``, ``tucker``, ``tt_svd``, ``tt_round``, ``tt_matrix_svd``):

* dtype: float32 and float64 compute in their own dtype; float16 and bfloat16 compute in float32 and the result is
  returned in the input's dtype; integer, bool and complex inputs raise ``TypeError``, a size-0 mode ``ValueError``
  (:func:`tensorcompress._validation.compute_dtype`, the library's one rule).
* scale: an input whose entries are far from 1 is scaled by an exact power of two first (and the result scaled
  back), so norms and Gram matrices never overflow or underflow and ``eps`` guarantees hold at any magnitude.
* accuracy: singular vectors come from SVDs wherever eigenvectors of a Gram matrix would lose digits (they square the
  condition number), so graded and exact low-rank tensors are recovered to the dtype's rounding, as by TensorLy.
* one rank argument, ``rank``, and one result attribute, ``.rank``: an int for CP (the number of components); one
  rank per mode for Tucker (``hosvd``, ``tucker``: an int means the same for every mode, each ``1 <= R_n <= I_n``);
  the TT ranks for ``tt_svd``, ``tt_round`` and ``tt_matrix_svd`` (an int caps every inner rank; a sequence gives
  the ``d - 1`` inner ranks or TensorLy's ``[1, r_1, ..., 1]``, each capped at what its unfolding allows).
* iterative methods (``cp_als``, ``tucker``) take ``n_iter_max`` sweeps at most.
"""

from ._common import rank_for_energy
from .cp import CPTensor, cp_als, cp_to_tensor
from .random import SyntheticTensor, add_noise, random_cp, random_tt, random_tucker
from .tt import TTTensor, tt_inner, tt_round, tt_svd, tt_to_tensor
from .tt_matrix import (
    TTMatrix,
    contraction_flops,
    contraction_order,
    tt_matrix_contract,
    tt_matrix_svd,
    tt_matrix_vector_product,
)
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
    "tt_matrix_contract",
    "contraction_flops",
    "contraction_order",
    "SyntheticTensor",
    "random_cp",
    "random_tucker",
    "random_tt",
    "add_noise",
    "rank_for_energy",
]
