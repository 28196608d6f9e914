"""The eps schedule: smooth (Shi et al.), linear, constant."""

from __future__ import annotations

import pytest

from tapsc.language import ir
from tapsc.method.schedules import eps_at

SMOOTH = ir.EpsSchedule(shape="smooth", start_epoch=2, end_epoch=10)


def test_smooth_is_zero_before_start_and_target_from_end():
    assert eps_at(SMOOTH, 0.3, 0, 5, 10) == 0.0
    assert eps_at(SMOOTH, 0.3, 1, 9, 10) == 0.0
    assert eps_at(SMOOTH, 0.3, 10, 0, 10) == pytest.approx(0.3)
    assert eps_at(SMOOTH, 0.3, 15, 3, 10) == pytest.approx(0.3)


def test_smooth_mid_point_is_target_over_13():
    # mid = 2 + 0.25 * 8 = 4
    assert eps_at(SMOOTH, 0.3, 4, 0, 10) == pytest.approx(0.3 / 13)


def test_smooth_is_quartic_then_linear_and_slope_continuous():
    f = lambda t: eps_at(SMOOTH, 1.0, int(t), round((t - int(t)) * 1000), 1000)  # noqa: E731
    # quartic on [2, 4): doubling the elapsed time multiplies eps by 16
    assert f(3.0) / f(2.5) == pytest.approx(16, rel=1e-6)
    # linear on [4, 10]: equal steps give equal increments
    assert f(7) - f(6) == pytest.approx(f(9) - f(8), rel=1e-9)
    h = 1e-3
    left, right = (f(4) - f(4 - h)) / h, (f(4 + h) - f(4)) / h
    assert left == pytest.approx(right, rel=5e-3)
    values = [f(2 + i * 0.01) for i in range(801)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_per_iteration_values_within_an_epoch():
    assert eps_at(SMOOTH, 1.0, 5, 1, 4) > eps_at(SMOOTH, 1.0, 5, 0, 4)


def test_linear_and_constant():
    linear = ir.EpsSchedule(shape="linear", start_epoch=1, end_epoch=5)
    assert eps_at(linear, 0.2, 3, 0, 10) == pytest.approx(0.1)
    assert eps_at(linear, 0.2, 0, 9, 10) == 0.0
    constant = ir.EpsSchedule(shape="constant", start_epoch=1, end_epoch=5)
    assert eps_at(constant, 0.2, 1, 0, 10) == pytest.approx(0.2)
    assert eps_at(constant, 0.2, 0, 0, 10) == 0.0


def test_no_ramp_gives_target_from_start():
    assert eps_at(ir.EpsSchedule(start_epoch=0, end_epoch=0), 0.1, 0, 0, 10) == pytest.approx(0.1)
