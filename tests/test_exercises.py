"""The exercise checks pass on right answers and fail, with a useful message, on blanks and plausible wrong ones."""

import pytest
import torch

from tensorcompress import exercises as ex


def test_check_close_passes_and_fails_with_message():
    e = torch.arange(6.0).reshape(2, 3)
    assert ex.check_close("1.1", e.clone(), e)
    assert ex.check_close("1.1", 3.0 + 1e-9, 3.0)
    with pytest.raises(ex.ExerciseError, match=r"Exercise 1.1: expected shape \(2, 3\), got \(3, 2\)\n  Hint: h"):
        ex.check_close("1.1", e.T, e, hint="h")
    with pytest.raises(ex.ExerciseError, match=r"at index \(1, 2\) expected 5, got 6"):
        ex.check_close("1.1", e + torch.tensor([[0, 0, 0], [0, 0, 1.0]]), e)
    with pytest.raises(ex.ExerciseError, match="got None"):
        ex.check_close("1.1", None, e)
    with pytest.raises(ex.ExerciseError, match="NaN or Inf"):
        ex.check_close("1.1", e * float("nan"), e)
    with pytest.raises(ex.ExerciseError, match="expected 3, got 4"):
        ex.check_close("1.1", 4, 3)
    with pytest.raises(AssertionError):
        ex.check_close("1.1", "3", 3)


def test_check_equal_shape_true():
    assert ex.check_equal("2.1", (3, 4), (3, 4))
    with pytest.raises(ex.ExerciseError, match=r"expected \(3, 4\), got \(4, 3\)"):
        ex.check_equal("2.1", (4, 3), (3, 4))
    with pytest.raises(ex.ExerciseError, match="expected a torch.Tensor"):
        ex.check_shape("2.2", [1, 2], (2,))
    with pytest.raises(ex.ExerciseError, match="rank too high"):
        ex.check_true("2.3", False, "rank too high")


def test_must_fail():
    def check(fn):
        return ex.check_close("3.1", fn(2.0), 4.0)

    assert ex.must_fail(check, lambda x: x + 1, lambda x: x * 3)
    with pytest.raises(AssertionError, match="accepted wrong answer #1"):
        ex.must_fail(check, lambda x: x + 1, lambda x: x * x)
    with pytest.raises(ValueError, match="at least one"):
        ex.must_fail(check)
