"""Replicas on paper (tritonlab.measuring.capacity): the operating point chosen from saved rows,
the arithmetic of the replicas a traffic needs, the autoscaler's target, and the words."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tritonlab.measuring import capacity, reports, results


def _rows(levels, variant="fastest", model="food_classifier"):
    """Saved rows as results.table() gives them: (concurrency, infer/s, p95 ms, queue ms,
    requests)."""
    return pd.DataFrame([{"variant": variant, "model": model, "concurrency": c,
                          results.THROUGHPUT: t, results.P95: p95 * 1000,
                          "server queue (us)": q * 1000, results.REQUESTS: n,
                          "date": "2026-12-04T12:00:00+00:00"}
                         for c, t, p95, q, n in levels])


def test_the_operating_point_is_the_busiest_level_that_kept_the_budget():
    rows = _rows([(1, 20.0, 30.0, 0.1, 400), (4, 45.0, 48.0, 20.0, 900),
                  (8, 50.0, 120.0, 90.0, 1000)])
    point = capacity.operating_point(rows, budget_ms=50)
    assert (point.concurrency, point.throughput, point.p95_ms) == (4, 45.0, 48.0)
    assert math.isclose(point.pending_target, 45.0 * 0.020)  # Little's law: rate x wait
    assert capacity.operating_point(rows, budget_ms=10) is None


def test_replicas_are_the_rate_over_the_planned_share_rounded_up():
    point = capacity.operating_point(_rows([(4, 10.0, 40.0, 5.0, 500)]), budget_ms=50)
    row = capacity.replicas_needed(1_000, point, utilization=0.7)
    # 1000 / 60 = 16.67 req/s; 10 x 0.7 = 7 per replica; 16.67 / 7 = 2.38 -> 3
    assert row["replicas"] == 3
    assert row["arithmetic"] == "ceil(1,000 / 60 = 16.67 req/s / (10.00 x 0.7 = 7.00)) = 3"
    assert capacity.replicas_needed(10_000, point, utilization=0.7)["replicas"] == 24
    assert capacity.replicas_needed(1, point)["replicas"] == 1  # never zero


def test_the_plan_and_its_words_follow_the_numbers():
    fast = capacity.operating_point(_rows([(8, 120.0, 45.0, 12.0, 2000)]), budget_ms=50)
    slow = capacity.operating_point(
        _rows([(1, 0.9, 1500.0, 3.0, 12)], variant="ensemble", model="food_captioning"),
        budget_ms=3000)
    points = {"classify": fast, "caption": slow, "caption at 100 ms": None}
    table = capacity.plan(points, traffic=(1_000, 10_000), utilization=0.7)
    classify = table[table["served"] == "classify"]
    assert classify["replicas"].tolist() == [
        math.ceil(1_000 / 60 / (120 * 0.7)), math.ceil(10_000 / 60 / (120 * 0.7))]
    caption = table[table["served"] == "caption"]
    assert caption["replicas"].tolist() == [
        math.ceil(1_000 / 60 / (0.9 * 0.7)), math.ceil(10_000 / 60 / (0.9 * 0.7))]
    assert table[table["served"] == "caption at 100 ms"]["replicas"].isna().all()
    text = capacity.explain(points, table)
    assert text.startswith("A calculation")
    assert "120.0 infer/s at concurrency 8 with p95 45.0 ms" in text
    assert f"{int(caption['replicas'].iloc[1])} replicas for 10,000 uploads/min" in text
    assert f"{fast.pending_target:.2f} pending requests per pod" in text
    # 12 requests: named as too few to plan on; 2000: not
    assert f"rests on 12 requests (fewer than {reports.MIN_REQUESTS})" in text
    assert text.count("too few to plan on") == 1
    assert "caption at 100 ms: no measured level kept the p95 budget" in text


def test_the_autoscaler_target_comes_from_the_captioning_point_when_it_kept_its_budget():
    classify = capacity.operating_point(_rows([(8, 120.0, 45.0, 3.0, 2000)]), budget_ms=50)
    caption = capacity.operating_point(
        _rows([(8, 1.5, 4000.0, 300.0, 400)], variant="ensemble", model="food_captioning"),
        budget_ms=capacity.CAPTION_P95_BUDGET_MS)
    target = capacity.autoscaler_target({"classify": classify, "caption": caption})
    assert (target.served, target.quantity) == ("caption", "450m")  # 1.5/s x 0.3 s waiting
    assert "1.50 infer/s x 300.00 ms in the queue = 0.450 requests" in target.text
    # no captioning level kept its budget: the classifier's point, and the words say why
    target = capacity.autoscaler_target({"classify": classify, "caption": None})
    assert (target.served, target.quantity) == ("classify", "360m")
    assert "not from caption: no measured level kept its budget" in target.text
    # nothing waited: the smallest quantity Kubernetes takes, said as such
    idle = capacity.operating_point(_rows([(1, 20.0, 30.0, 0.0, 400)]), budget_ms=50)
    target = capacity.autoscaler_target({"classify": idle})
    assert target.quantity == "1m" and "raised to 1m" in target.text
    few = capacity.operating_point(_rows([(1, 0.3, 3100.0, 500.0, 10)], variant="ensemble",
                                         model="food_captioning"), budget_ms=5000)
    assert "rests on 10 requests, too few to set a target on" in \
        capacity.autoscaler_target({"caption": few}).text
    with pytest.raises(ValueError, match="no autoscaler target"):
        capacity.autoscaler_target({"classify": None, "caption": None})


def test_the_target_is_a_quantity_the_autoscaler_schema_takes():
    from tritonlab.serving import kubernetes

    point = capacity.operating_point(_rows([(8, 120.0, 45.0, 3.0, 2000)]), budget_ms=50)
    target = capacity.autoscaler_target({"classify": point})
    hpa = kubernetes.autoscaler(target_average_value=target.quantity)
    kubernetes.validate([hpa])
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "360m"
