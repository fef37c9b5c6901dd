"""The two leaves export and runtime must agree on, tested on numbers and names given here.

Parity: `compare` against hand-computed max abs / max rel differences and numpy.allclose verdicts at
stated tolerances (atol + rtol * |ref|), missing and mis-shaped outputs, the table's text. Contract:
the output names, dynamic axes and metadata codec, byte for byte. No model, no torch: fast enough to
run for every mutant of core/parity.py and core/contract.py (docs/MUTATION.md).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from sedeploy.core import contract
from sedeploy.core.parity import ATOL, RTOL, ParityRow, compare, format_table


# ---------------------------------------------------------------- parity
def test_compare_reports_max_abs_and_max_rel_per_output():
    ref = {"logits": np.array([[1.0, -2.0, 0.5]], np.float32), "se1": np.array([[0.25, 0.5]], np.float32)}
    got = {"logits": np.array([[1.0, -2.004, 0.5]], np.float32), "se1": np.array([[0.25, 0.5]], np.float32),
           "extra": np.zeros(3)}                                   # outputs only in `got` are ignored
    rows = compare(ref, got, "ort")
    assert [(r.backend, r.output) for r in rows] == [("ort", "logits"), ("ort", "se1")]
    lg, se = rows
    assert lg.max_abs == pytest.approx(0.004, rel=1e-4) and lg.max_rel == pytest.approx(0.002, rel=1e-4)
    assert lg.ok is False                         # 0.004 > 1e-4 + 1e-3 * 2 = 0.0021
    assert (se.max_abs, se.max_rel, se.ok) == (0.0, 0.0, True)
    assert lg.to_dict() == {"backend": "ort", "output": "logits", "max_abs": lg.max_abs,
                            "max_rel": lg.max_rel, "ok": False}


def test_compare_tolerance_is_atol_plus_rtol_times_ref():
    assert (ATOL, RTOL) == (1e-4, 1e-3)
    ref = {"y": np.array([10.0])}
    # bound at |ref| = 10: 1e-4 + 1e-3 * 10 = 0.0101
    assert compare(ref, {"y": np.array([10.0100])}, "b")[0].ok is True
    assert compare(ref, {"y": np.array([10.0102])}, "b")[0].ok is False
    assert compare(ref, {"y": np.array([10.0102])}, "b", rtol=0.0, atol=0.0103)[0].ok is True
    assert compare(ref, {"y": np.array([10.0102])}, "b", atol=0.0, rtol=1.1e-3)[0].ok is True
    assert compare(ref, {"y": np.array([10.0102])}, "b", atol=0.0, rtol=1e-3)[0].ok is False
    # at ref 0 only atol counts; max rel divides by 1e-6 there
    r = compare({"y": np.array([0.0])}, {"y": np.array([5e-5])}, "b")[0]
    assert r.ok is True and r.max_rel == pytest.approx(50.0)
    assert compare({"y": np.array([0.0])}, {"y": np.array([2e-4])}, "b")[0].ok is False


def test_compare_takes_the_worst_element_and_the_sign_does_not_matter():
    ref = {"y": np.array([[1.0, 2.0], [4.0, 8.0]])}
    r = compare(ref, {"y": np.array([[1.5, 2.0], [3.0, 8.0]])}, "b")[0]
    assert r.max_abs == 1.0 and r.max_rel == 0.5             # abs: |3 - 4| = 1; rel: 0.5 / 1 beats 1 / 4
    r = compare({"y": np.array([100.0, 1.0])}, {"y": np.array([101.0, 1.5])}, "b")[0]
    assert r.max_abs == 1.0 and r.max_rel == 0.5             # max abs and max rel come from different elements


def test_compare_missing_or_misshaped_output_fails():
    ref = {"logits": np.zeros((2, 3)), "se1": np.zeros((2, 4)), "fm": np.zeros((2, 1))}
    rows = compare(ref, {"logits": np.zeros((2, 3)), "fm": np.zeros((1, 2))}, "int8")
    assert [(r.output, r.ok) for r in rows] == [("logits", True), ("se1", False), ("fm", False)]
    assert rows[1].backend == "int8" and rows[1].max_abs == float("inf") and rows[1].max_rel == float("inf")
    assert rows[2].max_abs == float("inf")


def test_compare_empty_outputs_are_equal():
    r = compare({"y": np.zeros((0, 3))}, {"y": np.zeros((0, 3))}, "b")[0]
    assert (r.max_abs, r.max_rel, r.ok) == (0.0, 0.0, True)


def test_compare_in_float64():
    """The reported difference is that of the float32 values themselves (3.0000002 is 3 + 2**-22)."""
    r = compare({"y": np.array([3.0], np.float32)}, {"y": np.array([3.0000002], np.float32)}, "b")[0]
    assert r.max_abs == pytest.approx(2.384185791015625e-07, rel=1e-6)


def test_format_table_text():
    rows = [ParityRow("ort-cpu", "logits", 1.5e-6, 2e-5, True), ParityRow("int8", "se1", 0.25, 1.0, False)]
    lines = format_table(rows).splitlines()
    assert lines[0] == "backend            output          max abs    max rel  ok"
    assert lines[1] == "-" * len(lines[0])
    assert lines[2] == "ort-cpu            logits         1.50e-06   2.00e-05  yes"
    assert lines[3] == "int8               se1            2.50e-01   1.00e+00  NO"


# ---------------------------------------------------------------- contract
def test_output_names_and_axes():
    assert contract.se_output_names(3) == ["se1", "se2", "se3"] and contract.se_output_names(0) == []
    assert contract.output_names(2) == ["logits", "se1", "se2", "feature_map"]
    assert contract.output_names(0) == ["logits", "feature_map"]
    assert contract.output_names(3, with_extras=False) == ["logits"]
    assert contract.dynamic_axes(["logits", "se1"]) == {"input": {0: "batch"}, "logits": {0: "batch"},
                                                        "se1": {0: "batch"}}
    assert (contract.INPUT_NAME, contract.LOGITS, contract.FEATURE_MAP) == ("input", "logits", "feature_map")


def test_metadata_codec_is_json_under_the_prefix():
    meta = {"classes": ["a", "b"], "mean": [0.5], "input_size": [1, 8, 8], "feature_map": None, "opset": 17}
    enc = contract.encode_metadata(meta)
    assert enc == {"sedeploy.classes": '["a", "b"]', "sedeploy.mean": "[0.5]", "sedeploy.input_size": "[1, 8, 8]",
                   "sedeploy.feature_map": "null", "sedeploy.opset": "17"}
    assert contract.decode_metadata({**enc, "other.tool": "not json {", "sedeployx": "1"}) == meta
    with pytest.raises(KeyError, match=r"unknown metadata keys: \['bogus', 'zz'\]"):
        contract.encode_metadata({"zz": 1, "classes": [], "bogus": 2})
    with pytest.raises(ValueError, match=r"metadata 'sedeploy.mean' is not JSON"):
        contract.decode_metadata({"sedeploy.mean": "[0.5"})
    assert json.loads(contract.encode_metadata({"format_version": contract.FORMAT_VERSION})
                      ["sedeploy.format_version"]) == 1


def test_missing_keys_in_order():
    assert contract.REQUIRED_KEYS == ("classes", "mean", "std", "input_size", "output_names")
    assert contract.missing_keys({}) == list(contract.REQUIRED_KEYS)
    assert contract.missing_keys({"classes": [], "std": [1], "output_names": []}) == ["mean", "input_size"]
    assert contract.missing_keys({k: 0 for k in contract.REQUIRED_KEYS}) == []
    assert len(contract.META_KEYS) == len(set(contract.META_KEYS)) == 20 and contract.META_PREFIX == "sedeploy."
