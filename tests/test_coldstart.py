"""Cold against warm, told from the measured medians (the notebook runs it on the real server)."""

from __future__ import annotations

import pandas as pd
import pytest

from tritonlab.measuring import coldstart


def _loads(variant: str, first_ms: float, later_ms: float, load_s: float, loads: int = 3):
    return [{"variant": variant, "load": n, "request": r,
             "latency (ms)": first_ms if r == 1 else later_ms, "load (s)": load_s}
            for n in range(1, loads + 1) for r in range(1, 6)]


def test_summary_takes_medians_over_the_loads():
    df = pd.DataFrame(_loads("cold", 30.0, 13.0, 3.2) + _loads("warm", 14.0, 13.0, 3.3))
    table = coldstart.summary(df).set_index("variant")
    assert table.loc["cold", "loads"] == 3 and table.loc["cold", "first request (ms)"] == 30.0
    assert table.loc["warm", "later requests (ms)"] == 13.0
    assert table.loc["warm", "load until READY (s)"] == pytest.approx(3.3)


@pytest.mark.parametrize("first_cold,loads,verdict", [
    (30.0, 3, "Warm-up took 16 ms off the first request."),
    (15.0, 3, "The first request cost about the same either way (15 and 14 ms)"),
    (30.0, 2, "Too few loads to call the difference"),
])
def test_explain_gives_a_verdict_only_its_numbers_support(first_cold, loads, verdict):
    df = pd.DataFrame(_loads("cold", first_cold, 13.0, 3.2, loads)
                      + _loads("warm", 14.0, 13.0, 3.3, loads))
    story = coldstart.explain(df, "cold", "warm")
    assert story.startswith(f"Medians over {loads} loads each.")
    assert "(+0.10 s)" in story and verdict in story, story
