"""``one_line``: every error message the user sees fits on one line."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError, create_model, field_validator

from structsearch.errors import MAX_CHARS, MAX_PROBLEMS, one_line


class _Spec(BaseModel):
    steps: int
    lr: float

    @field_validator("lr")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("lr must be positive")
        return v


def test_one_line_keeps_the_type_and_squeezes_the_message() -> None:
    assert one_line(OSError("download failed:\n  got URLError\n")) == "OSError: download failed: got URLError"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(RuntimeError("  \n  ")) == "RuntimeError"
    long = one_line(RuntimeError("x" * 10 * MAX_CHARS))
    assert len(long) == len("RuntimeError: ") + MAX_CHARS and long.endswith("...")


def test_one_line_lists_validation_problems_by_field() -> None:
    with pytest.raises(ValidationError) as e:
        _Spec.model_validate({"lr": -1})
    assert one_line(e.value) == "steps: Field required; lr: lr must be positive"


def test_one_line_counts_the_problems_it_leaves_out() -> None:
    fields = {f"f{i}": (int, ...) for i in range(MAX_PROBLEMS + 2)}
    with pytest.raises(ValidationError) as e:
        create_model("Many", **fields).model_validate({})
    text = one_line(e.value)
    assert text.count("Field required") == MAX_PROBLEMS and text.endswith("and 2 more")
