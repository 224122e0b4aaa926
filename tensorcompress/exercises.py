r"""Checks for the notebooks' exercises: a learner gets what was expected, what they gave, and a hint.

The convention (README, "Contributing"): an exercise is a Markdown cell headed ``### Exercise N.k: title``, a code
cell whose solution sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (the student version replaces it by
``raise NotImplementedError("exercise N.k")``), and a check cell calling these functions; checks only a teacher
should see sit between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``.

Each check raises :class:`ExerciseError` (an ``AssertionError``, so nbval and ``assert``-minded readers see a
failure) with a message naming the exercise, the expected value, the value received and a hint; it returns
``True`` on success so a notebook can ``assert`` it. Every check takes the exercise's number first (``"2.3"``) and
an optional keyword ``hint``.

A check cell defines ``check_N_k(candidate)`` running every check on the reader's function and calls it; its hidden
tests call :func:`must_fail` with plausible wrong answers (a transpose, an off-by-one rank), so the test suite proves
that the check can fail.

An exercise that asks the reader to write what the library already does names, in its Markdown, the library functions
it may not call; the check computes the reference first (with the library), then runs the reader's function through
:func:`call_without`, under which those functions raise :class:`ExerciseError` — so calling ``tc.cp_als`` inside an
exercise that asks for CP-ALS by hand fails, with a message saying so.
"""

from __future__ import annotations

import contextlib
import numbers
import sys
from collections.abc import Callable, Iterator

import torch

__all__ = ["ExerciseError", "check_close", "check_equal", "check_shape", "check_true", "must_fail", "forbidden",
           "call_without"]


class ExerciseError(AssertionError):
    """An exercise check failed; the message says what was expected, what was received and a hint."""


def _fail(exercise: str, what: str, hint: str | None) -> None:
    msg = f"Exercise {exercise}: {what}"
    if hint:
        msg += f"\n  Hint: {hint}"
    raise ExerciseError(msg)


def _summary(x) -> str:
    if isinstance(x, torch.Tensor):
        if x.numel() <= 8:
            return f"tensor {x.detach().cpu().tolist()} (shape {tuple(x.shape)}, {x.dtype})"
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return repr(x)


def check_shape(exercise: str, actual, shape, *, hint: str | None = None) -> bool:
    """``actual`` must be a tensor of the given shape.

    Parameters
    ----------
    exercise : str
        The exercise's number, e.g. ``"2.3"``; it opens the message (``Exercise 2.3: ...``).
    actual : object
        The learner's answer; anything but a :class:`torch.Tensor` fails.
    shape : sequence of int or torch.Size
        The expected shape, compared as a tuple.
    hint : str, optional
        One line added to the message under ``Hint:`` when the check fails; ``None`` or ``""`` adds none.
    """
    if not isinstance(actual, torch.Tensor):
        _fail(exercise, f"expected a torch.Tensor of shape {tuple(shape)}, got {type(actual).__name__}", hint)
    if tuple(actual.shape) != tuple(shape):
        _fail(exercise, f"expected shape {tuple(shape)}, got {tuple(actual.shape)}", hint)
    return True


def check_close(exercise: str, actual, expected, *, rtol: float = 1e-6, atol: float = 0.0,
                hint: str | None = None) -> bool:
    """``actual`` must equal ``expected`` within ``|a − e| ≤ atol + rtol·|e|`` elementwise (tensors or numbers).

    A missing answer (``None``), a wrong type, a wrong shape, or NaN fail with their own message.

    Parameters
    ----------
    exercise, hint : str
        As :func:`check_shape`.
    actual : torch.Tensor or number
        The learner's answer. Against a tensor it must be a tensor of the same shape with finite entries; against a
        number, a real number or a one-element tensor. Compared in float64 on the CPU (complex stays complex).
    expected : torch.Tensor or number
        The reference value.
    rtol, atol : float
        Relative and absolute tolerance, both ``>= 0``; the default ``rtol=1e-6, atol=0`` asks for float32-level
        agreement relative to ``expected``.
    """
    if actual is None:
        _fail(exercise, "got None: the solution cell returned nothing", hint)
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            _fail(exercise, f"expected {_summary(expected)}, got {type(actual).__name__}", hint)
        check_shape(exercise, actual, expected.shape, hint=hint)
        a = actual.detach().to("cpu", torch.float64) if not actual.is_complex() else actual.detach().cpu()
        e = expected.detach().to("cpu", torch.float64) if not expected.is_complex() else expected.detach().cpu()
        if not bool(torch.isfinite(a).all()):
            _fail(exercise, f"your result holds NaN or Inf ({int((~torch.isfinite(a)).sum())} entries)", hint)
        err = (a - e).abs()
        bound = atol + rtol * e.abs()
        if bool((err > bound).any()):
            worst = int(torch.argmax(err - bound))
            idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), e.shape)) if e.ndim else ()
            _fail(exercise, f"values differ: at index {idx} expected {e.reshape(-1)[worst].item():.6g}, got "
                            f"{a.reshape(-1)[worst].item():.6g}; max |difference| {err.max().item():.3g} "
                            f"(tolerance rtol={rtol:g}, atol={atol:g})", hint)
        return True
    if not isinstance(actual, numbers.Number) and not (isinstance(actual, torch.Tensor) and actual.numel() == 1):
        _fail(exercise, f"expected a number close to {expected!r}, got {_summary(actual)}", hint)
    a, e = float(actual), float(expected)
    if a != a or abs(a - e) > atol + rtol * abs(e):
        _fail(exercise, f"expected {e:.6g}, got {a:.6g} (tolerance rtol={rtol:g}, atol={atol:g})", hint)
    return True


def check_equal(exercise: str, actual, expected, *, hint: str | None = None) -> bool:
    """``actual == expected`` exactly (ints, tuples, strings; tensors with ``torch.equal``).

    Parameters
    ----------
    exercise, hint : str
        As :func:`check_shape`.
    actual : object
        The learner's answer.
    expected : object
        The reference. A tensor asks for a tensor of the same shape and identical entries (compared on the CPU,
        so the devices may differ); anything else is compared with ``==``.
    """
    if isinstance(expected, torch.Tensor):
        ok = isinstance(actual, torch.Tensor) and actual.shape == expected.shape and torch.equal(
            actual.detach().cpu(), expected.detach().cpu())
    else:
        ok = actual == expected
    if not ok:
        _fail(exercise, f"expected {_summary(expected)}, got {_summary(actual)}", hint)
    return True


def check_true(exercise: str, condition: bool, message: str, *, hint: str | None = None) -> bool:
    """A free-form check: ``condition`` must hold; ``message`` says what was expected and what was found.

    Parameters
    ----------
    exercise, hint : str
        As :func:`check_shape`.
    condition : bool
        What must hold; read with ``bool()``, so a one-element tensor works too.
    message : str
        The failure message after ``Exercise N.k:``; it should say what was expected and what was found.
    """
    if not bool(condition):
        _fail(exercise, message, hint)
    return True


def must_fail(check, *wrong_answers) -> bool:
    """Assert that ``check(answer)`` raises :class:`ExerciseError` for every one of ``wrong_answers``.

    Used in an exercise's hidden tests to prove its check rejects plausible mistakes; a check that accepts one of
    them raises ``AssertionError`` naming it.
    """
    if not wrong_answers:
        raise ValueError("must_fail needs at least one wrong answer")
    for i, wrong in enumerate(wrong_answers):
        try:
            check(wrong)
        except ExerciseError:
            continue
        raise AssertionError(f"the check accepted wrong answer #{i} ({getattr(wrong, '__name__', repr(wrong))}); "
                             f"it must reject it")
    return True


def _refusal(exercise: str, fn: Callable) -> Callable:
    name = f"{getattr(fn, '__module__', None) or ''}.{getattr(fn, '__qualname__', repr(fn))}".lstrip(".")

    def refuse(*args, **kwargs):
        _fail(exercise, f"your answer called {name}, which this exercise asks you to write yourself",
              "use only the operations the exercise allows")

    return refuse


@contextlib.contextmanager
def forbidden(exercise: str, *functions: Callable, namespaces: tuple[dict, ...] = ()) -> Iterator[None]:
    """Within the block, each of ``functions`` raises :class:`ExerciseError` wherever it is called.

    Every loaded module that holds one of them as an attribute (``tc.cp_als`` and
    ``tensorcompress.decompositions.cp.cp_als`` alike, ``torch.linalg.svd``) and each dictionary of ``namespaces``
    (a notebook's globals, where ``from tensorcompress import cp_als`` put a name) gets a stand-in that raises; all
    are restored on exit, also after an error. A library function that itself calls a forbidden one fails too, so
    forbid only what the exercise asks the reader to write.

    Parameters
    ----------
    exercise : str
        The exercise's number, e.g. ``"4.1"``, for the message.
    *functions : callable
        The functions the reader may not call.
    namespaces : tuple of dict
        Further name → object dictionaries to patch (e.g. ``candidate.__globals__``).
    """
    if not functions:
        raise ValueError("forbidden needs at least one function")
    for fn in functions:
        if not callable(fn):
            raise TypeError(f"functions must be callables, got {type(fn).__name__} ({fn!r})")
    stand_ins = {id(fn): _refusal(exercise, fn) for fn in functions}
    dicts = [vars(m) for m in list(sys.modules.values()) if m is not None and hasattr(m, "__dict__")]
    patched = []
    try:
        for d in [*dicts, *namespaces]:
            for key, value in list(d.items()):
                if id(value) in stand_ins:
                    patched.append((d, key, value))
                    d[key] = stand_ins[id(value)]
        yield
    finally:
        for d, key, value in reversed(patched):
            d[key] = value


def call_without(exercise: str, functions: tuple[Callable, ...] | list[Callable], candidate: Callable, *args,
                 **kwargs):
    """``candidate(*args, **kwargs)`` with ``functions`` forbidden (:func:`forbidden`, the candidate's globals
    included); returns what the candidate returns.

    Parameters
    ----------
    exercise : str
        The exercise's number, e.g. ``"4.1"``.
    functions : sequence of callable
        The library functions the exercise's Markdown names as not to be called.
    candidate : callable
        The reader's function.
    *args, **kwargs
        Passed to ``candidate``.
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be callable, got {type(candidate).__name__}")
    namespaces = (candidate.__globals__,) if isinstance(getattr(candidate, "__globals__", None), dict) else ()
    with forbidden(exercise, *functions, namespaces=namespaces):
        return candidate(*args, **kwargs)
