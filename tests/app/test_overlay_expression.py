"""The overlay page's message for a custom time variable outside the grammar."""

from __future__ import annotations

import numpy as np
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


def test_a_missing_collapse_score_says_why():
    # The Overlays table read "None" for η·t on a sweep whose η spans more decades than its steps:
    # the curves share no τ range there, and the table now says so.
    import pandas as pd

    from app.logic.overlays import best_time_variable, collapse_with_reason, score_table

    t = np.arange(1, 101, dtype=float)
    apart = pd.DataFrame({"run_id": ["a"] * 100 + ["b"] * 100, "x": np.r_[t * 1e-4, t * 1.0],
                          "value": np.r_[np.exp(-t / 50), np.exp(-t / 50)]})
    together = apart.assign(x=np.r_[t, t], value=np.r_[np.exp(-t / 50), np.exp(-t / 40)])
    lonely = apart[apart.run_id == "a"]
    scored = {"η·t": collapse_with_reason(apart), "t": collapse_with_reason(together),
              "one": collapse_with_reason(lonely)}
    assert scored["η·t"] == (None, "no common range: the curves do not overlap on this time axis")
    assert scored["t"][0] is not None and scored["t"][0] > 0 and scored["t"][1] == ""
    assert scored["one"] == (None, "fewer than 2 curves with positive values")
    best = best_time_variable({k: s for k, (s, _) in scored.items()})
    table = score_table(scored, best)
    assert table["best"].tolist() == [False, True, False]
    assert table["note"].tolist()[0].startswith("no common range")
