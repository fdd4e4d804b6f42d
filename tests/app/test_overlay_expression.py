"""The overlay page's message for a custom time variable outside the grammar."""

from __future__ import annotations

import pytest

from app.logic.overlays import ALLOWED_EXPRESSION, expression_message
from storage.expression import ExpressionError, compile_expression


@pytest.mark.parametrize("text", ["eta * t / gamma +", "", "(t", "__import__('os')", "t t"])
def test_every_bad_expression_says_what_is_allowed_once(text: str):
    """'Expression: x: expression ends early' named the field twice and did not say what is allowed."""
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    message = expression_message(info.value)
    assert message.startswith("Expression: ") and "x: " not in message
    assert message.count("allowed are") == 1
    assert ALLOWED_EXPRESSION.split(",")[0] in message
    assert "\n" not in message
