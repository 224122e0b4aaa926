r"""Deep Compression (Han, Mao & Dally 2016): prune, share weights, entropy-code — measured in the bytes of a real file.

**1. Pruning** (Han et al. 2015) with the cubic AGP schedule of Zhu & Gupta (2017),
:math:`s_t = s_f\,(1 - (1 - t/(n\Delta t))^3)`, while fine-tuning (:class:`tensorcompress.pruning.AGP`, masks of
``torch.nn.utils.prune``). The kept positions are stored as relative indices: the gap :math:`d` to the previous
kept weight in :math:`b_{\text{idx}}` bits, a gap beyond :math:`M = 2^{b_{\text{idx}}}-1` bridged by
:math:`\lfloor d/(M+1)\rfloor` filler zeros (:func:`tensorcompress.export.csr_encode`). At density :math:`\rho`
the gaps are geometric, with entropy :math:`h(\rho)/\rho` bits (:math:`h` the binary entropy), about 5 bits at
:math:`\rho = 8\,\%`.

**2. Weight sharing** is :func:`tensorcompress.quantization.share_weights` with ``keep_zeros=True``: the :math:`m`
kept weights of a layer are clustered into :math:`k = 2^b` centroids by k-means with linear initialisation
(:func:`tensorcompress.quantization.kmeans_quantize`); each weight becomes a :math:`b`-bit index into the layer's
codebook. The centroids are then fine-tuned: with :math:`W_i = c_{I_i}`,
:math:`\partial L/\partial c_k = \sum_{i: I_i = k}\partial L/\partial W_i` (their eq. 3), which autograd gives
through the gather of :class:`tensorcompress.quantization.SharedWeight`, a ``torch.nn.utils.parametrize``
parametrization ``where(mask, codebook[indices], 0)`` that keeps the mask. Compression of one layer of :math:`n`
weights: :math:`32n / (mb + 32k)` before the indices.

**3. Entropy coding**: the codebook indices and the gaps are Huffman-coded (:mod:`tensorcompress.export.coding`,
``constriction``), :math:`H \le \bar L < H+1` bits per symbol; an ANS stream code gets within bytes of
:math:`nH`.

Han et al. report LeNet-300-100 1070 KB → 27 KB (40×) and LeNet-5 1720 KB → 44 KB (39×) at unchanged accuracy,
counting weights and indices. :func:`deep_compression` runs the three stages and returns a report in the shape of
their Tables 2–3 whose bytes are those of the file :func:`tensorcompress.export.save_compressed` writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from .. import surgery
from .._validation import check_bits, check_fraction, check_positive_int, check_real
from ..export import encode_compressed
from ..metrics.measure import model_size_bytes
from ..pruning import AGP, PRUNABLE, prune
from ..quantization.nonuniform import share_weights
from ..train import evaluate, fit

__all__ = ["deep_compression", "DeepCompressionReport", "measure_compressed"]


# ---------------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class DeepCompressionReport:
    """What :func:`deep_compression` did, in the shape of Han et al. (2016), Tables 2–3.

    ``layers``: one :class:`~tensorcompress.surgery.LayerChange` per compressed layer; its ``detail`` holds
    ``weights``, ``kept %``, ``bits``, ``index_bits``, bits per kept weight of the weight and index streams at
    fixed length (``w bits P+Q``, ``idx bits P+Q``) and Huffman-coded (``w bits P+Q+H``, ``idx bits P+Q+H``), and
    the layer's bytes ``dense`` (float), ``P`` (CSR, float values), ``P+Q`` (fixed-length codes + codebook),
    ``P+Q+H`` (Huffman, with its tables), ``ANS`` and ``entropy`` (:math:`nH/8` + codebook, no tables).
    ``stage_bytes``: the same summed over the layers plus the plainly stored tensors (and the file's header for
    the coded stages). ``file_bytes``: the exact size of :func:`~tensorcompress.export.save_compressed`'s file per
    coder.
    ``original_bytes``: the float32 model's ``torch.save`` size. ``accuracy``: validation accuracy after each stage.
    """

    layers: list[surgery.LayerChange]
    stage_bytes: dict[str, int]
    file_bytes: dict[str, int]
    original_bytes: int
    plain_bytes: int
    accuracy: dict[str, float] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def compression(self, coder: str = "huffman") -> float:
        """``original_bytes / file_bytes[coder]``."""
        return self.original_bytes / self.file_bytes[coder]

    def __str__(self) -> str:
        head = ["layer", "weights", "kept %", "w bits P+Q", "w bits P+Q+H", "idx bits P+Q", "idx bits P+Q+H",
                "x P+Q", "x P+Q+H"]
        rows = []
        for r in self.layers:
            d = r.detail
            rows.append([r.name, f"{d['weights']}", f"{d['kept %']:.1f}", f"{d['w bits P+Q']:.1f}",
                         f"{d['w bits P+Q+H']:.2f}", f"{d['idx bits P+Q']:.1f}", f"{d['idx bits P+Q+H']:.2f}",
                         f"{d['dense'] / d['P+Q']:.1f}", f"{d['dense'] / d['P+Q+H']:.1f}"])
        n = sum(r.detail["weights"] for r in self.layers)
        kept = sum(r.detail["kept"] for r in self.layers)
        dense = sum(r.detail["dense"] for r in self.layers)
        rows.append(["total", f"{n}", f"{100 * kept / n:.1f}", "", "", "", "",
                     f"{dense / sum(r.detail['P+Q'] for r in self.layers):.1f}",
                     f"{dense / sum(r.detail['P+Q+H'] for r in self.layers):.1f}"])
        widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(x, widths, strict=True)))
                 for x in [head, *rows]]
        lines.append(f"plain tensors (biases, ...): {self.plain_bytes} B; float32 torch.save file: "
                     f"{self.original_bytes} B")
        for coder, b in self.file_bytes.items():
            lines.append(f"file with {coder}: {b} B, {self.original_bytes / b:.1f}x smaller")
        lines.append(f"entropy bound (weights + indices at nH, codebooks, plain tensors): "
                     f"{self.stage_bytes['entropy']} B")
        if self.accuracy:
            lines.append("validation accuracy: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in self.accuracy.items()))
        return "\n".join(lines)


def _dense_footprint(module: nn.Module) -> surgery.Footprint:
    """The footprint of the plain layer a shared one stands for: its weight decoded and stored densely, its bias."""
    state = {"weight": module.weight.detach().clone()}
    if getattr(module, "bias", None) is not None:
        state["bias"] = module.bias.detach()
    n = sum(t.numel() for t in state.values())
    return surgery.Footprint(surgery.footprint(module).type, n, surgery.state_bytes(state))


def measure_compressed(model: nn.Module, *, original_bytes: int | None = None,
                       accuracy: Mapping[str, float] | None = None) -> DeepCompressionReport:
    """The :class:`DeepCompressionReport` of a model whose weights are shared
    (:func:`tensorcompress.quantization.share_weights`, :func:`deep_compression`), from the bytes
    :func:`~tensorcompress.export.save_compressed` would write with each coder.

    Parameters
    ----------
    model : nn.Module
        A model with shared weights; not changed.
    original_bytes : int, optional
        The size the ratios are taken against (default: :func:`tensorcompress.model_size_bytes` of ``model``).
    accuracy : mapping, optional
        Accuracies to carry into the report (stage name -> fraction), as :func:`deep_compression` measures them.
    """
    data_h, sizes_h = encode_compressed(model, coder="huffman")
    data_a, sizes_a = encode_compressed(model, coder="ans")
    layers = []
    totals = dict.fromkeys(("dense", "P", "P+Q", "P+Q+H", "ANS", "entropy"), 0)
    for name, module in model.named_modules():
        if name not in sizes_h or "codebook" not in sizes_h[name]:
            continue
        sw = module.parametrizations.weight[0]
        sh, sa = sizes_h[name], sizes_a[name]
        w, i = sh["weights"], sh["index"]
        mask = sw.mask()
        numel, kept, entries = mask.numel(), int(mask.sum()), w.n_symbols
        esize = module.parametrizations.weight.original.element_size()
        fillers = entries - kept
        wbits = sw.bits if fillers == 0 else math.ceil(math.log2(2**sw.bits + 1))
        per = max(kept, 1)
        d = {"weights": numel, "kept": kept, "kept %": 100 * kept / numel, "bits": sw.bits,
             "index_bits": sw.index_bits, "fillers": fillers,
             "w bits P+Q": wbits * entries / per, "w bits P+Q+H": w.code_bits / per,
             "idx bits P+Q": sw.index_bits * entries / per, "idx bits P+Q+H": i.code_bits / per,
             "dense": numel * esize,
             "P": math.ceil(entries * (8 * esize + sw.index_bits) / 8),
             "P+Q": math.ceil(entries * (wbits + sw.index_bits) / 8) + sh["codebook"],
             "P+Q+H": sh["codebook"] + w.table + w.payload + i.table + i.payload,
             "ANS": sa["codebook"] + sa["weights"].table + sa["weights"].payload + sa["index"].table
             + sa["index"].payload,
             "entropy": sh["codebook"] + math.ceil((w.entropy_bits + i.entropy_bits) / 8)}
        for key in totals:
            totals[key] += d[key]
        bias = 0 if getattr(module, "bias", None) is None else module.bias.numel()
        after = surgery.footprint(module, params=kept + bias)
        layers.append(surgery.LayerChange.between(name, _dense_footprint(module), after, d))
    if not layers:  # the file takes any model; the report is of shared layers
        raise ValueError("model has no shared weights (SharedWeight parametrizations); run "
                         "tc.pipelines.deep_compression or tc.quantization.share_weights first")
    plain = sum(s["plain"] for s in sizes_h.values() if "plain" in s)
    header = sizes_h["header"]["bytes"]
    stage = {"dense": totals["dense"] + plain, "P": totals["P"] + plain, "P+Q": totals["P+Q"] + plain,
             "P+Q+H": totals["P+Q+H"] + plain + header, "ANS": totals["ANS"] + plain + sizes_a["header"]["bytes"],
             "entropy": totals["entropy"] + plain}
    return DeepCompressionReport(layers, stage, {"huffman": len(data_h), "ans": len(data_a)},
                                 model_size_bytes(model) if original_bytes is None else int(original_bytes),
                                 plain, dict(accuracy or {}))


# ---------------------------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------------------------

def _check_lr(value: object, name: str) -> float:
    v = check_real(value, name)
    if not v > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def deep_compression(model: nn.Module, train, *, val, amount: float | Mapping[str, float],
                     bits: int | Mapping[str, int], index_bits: int = 5, prune_epochs: int = 2,
                     share_epochs: int = 1, lr: float = 1e-4, share_lr: float | None = None, batch_size: int = 64,
                     seed: int = 0, device=None, include=None, exclude=None, **fit_options,
                     ) -> tuple[nn.Module, DeepCompressionReport]:
    """Prune (AGP) with fine-tuning → k-means weight sharing with fine-tuned centroids → measured entropy coding.

    Parameters
    ----------
    model : nn.Module
        Trained float model; untouched (the pipeline works on a copy).
    train, val : Dataset
        Fine-tuning data and the validation split on which each stage's accuracy is reported (take decisions
        there, never on the test split).
    amount : float in [0, 1) or mapping layer name → float
        Fraction of each selected layer's weights removed (per layer, as Han et al.'s Tables 2–3).
    bits : int in [1, 8] or mapping layer name → int
        Codebook index width: ``2**bits`` shared values per layer.
    index_bits : int in [1, 8]
        Width of a relative index (Han et al.: 5 for fully connected layers, 8 for convolutions).
    include, exclude : fnmatch patterns selecting the Linear/Conv layers to compress (default all); the rest,
        like every bias, is stored plainly.
    prune_epochs : int
        Epochs of :func:`tensorcompress.fit` under the AGP schedule: the sparsity rises in 10 cubic steps over the
        first 60 % of the steps, the rest recovers. 0: one-shot pruning, no fine-tuning.
    share_epochs : int
        Epochs of centroid fine-tuning after k-means (0: none).
    lr, share_lr : float
        Adam learning rates of the two fine-tunings (``share_lr`` defaults to ``lr``).
    batch_size, seed, device, **fit_options
        Passed to :func:`tensorcompress.fit` (both fine-tunings).

    Returns
    -------
    (nn.Module, DeepCompressionReport)
        The model with :class:`~tensorcompress.quantization.SharedWeight` weights (in eval mode; write it with
        :func:`~tensorcompress.export.save_compressed`), and the per-layer report with the validation accuracy after
        each stage (``original``, ``pruned``, ``shared`` before and ``fine-tuned`` after the centroid training).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    index_bits = check_bits(index_bits, "index_bits", hi=8, why=" (Han et al.: 5 for fully connected, 8 for "
                                                                "convolutional layers)")
    prune_epochs = check_positive_int(prune_epochs, "prune_epochs", minimum=0)
    share_epochs = check_positive_int(share_epochs, "share_epochs", minimum=0)
    lr = _check_lr(lr, "lr")
    share_lr = lr if share_lr is None else _check_lr(share_lr, "share_lr")
    chosen = surgery.select(model, PRUNABLE, include=include, exclude=exclude, action="deep_compression")
    names = [s.name for s in chosen]
    amounts = surgery.per_layer(amount, names, lambda v, label: check_fraction(v, label, high_open=True), "amount")
    widths = surgery.per_layer(bits, names, lambda v, label: check_bits(v, label, hi=8, why=" (one-byte codes)"),
                               "bits")
    options = {"batch_size": batch_size, "seed": seed, "device": device, "progress": False, **fit_options}
    accuracy = {"original": evaluate(model, val, device=device).accuracy}

    net = surgery.copy_model(model)
    if prune_epochs:
        total = prune_epochs * math.ceil(len(train) / batch_size)
        frequency = max(1, int(0.6 * total) // 10)
        schedules = [AGP(amounts[n], n_steps=10, frequency=frequency, include=[n]) for n in names]
        fit(net, train, epochs=prune_epochs, lr=lr, callbacks=schedules, **options)
    for n in names:  # one-shot, or the AGP target exactly (a no-op when the schedule reached it)
        net, _ = prune(net, amount=amounts[n], include=[n])
    accuracy["pruned"] = evaluate(net, val, device=device).accuracy

    net, _ = share_weights(net, bits=widths, include=names, keep_zeros=True, index_bits=index_bits)
    accuracy["shared"] = evaluate(net, val, device=device).accuracy
    if share_epochs:
        fit(net, train, epochs=share_epochs, lr=share_lr, **options)
        accuracy["fine-tuned"] = evaluate(net, val, device=device).accuracy
    net.eval()
    return net, measure_compressed(net, original_bytes=model_size_bytes(model), accuracy=accuracy)
