"""The int8 gate's verdict, one refusal branch at a time, on figures given by the test (no export needed).

Each case fails exactly one threshold and asserts WHICH reason is given, so a gate that swaps, drops or
merges a branch, or moves a boundary (the thresholds are inclusive), fails here. The wiring (measured
figures -> verdict -> UserError, nothing written) is tested on a real model in test_export.py.
"""
from __future__ import annotations

import pytest

from sedeploy.export.exporter import ExportOptions, int8_refusal

OPTS = ExportOptions(int8=True, int8_min_agreement=98.0, int8_max_drop=1.0, int8_se_atol=0.1)


def figures(**change) -> dict:
    """A passing int8 model's figures on 1000 labelled images, with `change` applied."""
    res = {"images": "1000 test images", "agreement": 99.0, "se_max_abs": 0.05,
           "fp32_acc": 90.0, "int8_acc": 89.5, "drop": 0.5}
    res.update(change)
    return res


def test_passing_figures_are_accepted():
    assert int8_refusal(figures(), OPTS) is None


def test_thresholds_are_inclusive():
    edge = figures(agreement=98.0, int8_acc=89.0, drop=1.0, se_max_abs=0.1)
    assert int8_refusal(edge, OPTS) is None


def test_agreement_alone():
    why = int8_refusal(figures(agreement=97.99), OPTS)
    assert why.startswith("int8 model refused: top-1 agreement with fp32 97.99% < 98% (--int8-min-agreement) "
                          "on 1000 test images;") and why.endswith("nothing was written")


def test_accuracy_drop_alone():
    why = int8_refusal(figures(int8_acc=88.75, drop=1.25), OPTS)
    assert why.startswith("int8 model refused: accuracy 88.75% is 1.25 points below fp32 (90.00%) on 1000 test "
                          "images, more than --int8-max-drop 1;")
    assert "agreement" not in why and "SE" not in why


def test_se_weights_alone():
    why = int8_refusal(figures(se_max_abs=0.1001), OPTS)
    assert why.startswith("int8 model refused: its SE weights differ from fp32's by up to 0.1 (--int8-se-atol 0.1)")
    assert "agreement" not in why and "accuracy" not in why


def test_unlabelled_figures_skip_the_accuracy_check():
    """Without labels there is no drop: agreement and SE still decide; a large (absent) drop cannot refuse."""
    res = {"images": "16 seeded random inputs", "agreement": 100.0, "se_max_abs": 0.0}
    assert int8_refusal(res, OPTS) is None
    assert "agreement" in int8_refusal({**res, "agreement": 50.0}, OPTS)
    assert "SE weights" in int8_refusal({**res, "se_max_abs": 0.5}, OPTS)


@pytest.mark.parametrize("first, change", [
    ("top-1 agreement", dict(agreement=10.0, drop=50.0, int8_acc=40.0, se_max_abs=0.9)),
    ("points below fp32", dict(drop=50.0, int8_acc=40.0, se_max_abs=0.9)),
])
def test_the_first_failed_check_is_named(first, change):
    assert first in int8_refusal(figures(**change), OPTS)
