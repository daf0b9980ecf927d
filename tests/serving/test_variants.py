"""A/B variants: config validation and deterministic, share-respecting buyer assignment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from twotower.serving.variants import VariantError, VariantsConfig, bucket

AB = {"control": {"bundle": "bundles/a", "share": 0.9}, "treatment": {"bundle": "bundles/b", "share": 0.1}}


def test_plain_bundle_is_a_single_control() -> None:
    variants = VariantsConfig.parse(None, bundle="outputs/latest")
    assert variants.names == ["control"] and variants["control"].bundle == "outputs/latest"
    assert variants.assign("anyone") == "control" and variants.assign(None) == "control"


def test_variants_take_precedence_and_keep_declaration_order() -> None:
    variants = VariantsConfig.parse(AB, bundle="ignored", salt="exp1")
    assert variants.names == ["control", "treatment"]
    assert [v.share for v in variants] == [0.9, 0.1]
    assert variants.describe()["variants"]["treatment"] == {"bundle": "bundles/b", "share": 0.1}


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ({"control": {"bundle": "a", "share": 0.9}, "t": {"bundle": "b", "share": 0.2}}, "sum to 1"),
        ({"control": {"bundle": "a", "share": 1.0}, "t": {"bundle": "b", "share": 0.0}}, "t.share must be"),
        ({"control": {"bundle": "a", "share": 1.5}, "t": {"bundle": "b", "share": -0.5}}, "t.share must be"),
        (
            {"control": {"bundle": "a", "share": 0.5}, "t-1": {"bundle": "b", "share": 0.5}},
            "plain identifier",
        ),
        (
            {"a": {"bundle": "a", "share": 0.5}, "b": {"bundle": "b", "share": 0.5}},
            "no variant named 'control'",
        ),
        ({"control": {"bundle": "a", "share": 0.5}, "t": {"share": 0.5}}, "t.bundle must be"),
        ({"control": {"bundle": "a", "share": 0.5}, "t": {"bundle": "b"}}, "t.share is missing"),
        ({"control": {"bundle": "a", "weight": 1}}, r"unknown keys \['weight'\]"),
        ({"control": "a"}, r"control must be \{bundle: PATH, share: S\}"),
    ],
)
def test_bad_configs_say_what_is_wrong(variants: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VariantsConfig.parse(variants)


def test_shares_within_tolerance_are_accepted() -> None:
    thirds = {name: {"bundle": name, "share": 0.3333333} for name in ("control", "b", "c")}
    variants = VariantsConfig.parse(thirds)  # sums to 0.9999999: within 1e-6
    assert variants.assign("x", override="c") == "c"


def test_assignment_is_deterministic_and_depends_on_the_salt() -> None:
    first = VariantsConfig.parse(AB, salt="exp1")
    again = VariantsConfig.parse(AB, salt="exp1")
    other = VariantsConfig.parse(AB, salt="exp2")
    ids = [f"buyer-{i}" for i in range(2000)]
    assert [first.assign(b) for b in ids] == [again.assign(b) for b in ids]
    assert [first.assign(b) for b in ids] != [other.assign(b) for b in ids]
    # the id is matched in normalized form: a bidi mark or full-width digits do not move a buyer
    assert first.assign("\u200fbuyer-7") == first.assign("buyer-7") == first.assign("buyer-\uff17")


def test_assignment_is_the_same_in_another_process() -> None:
    ids = [f"b{i}" for i in range(300)]
    code = (
        "import json, sys\n"
        "from twotower.serving.variants import VariantsConfig\n"
        f"v = VariantsConfig.parse({AB!r}, salt='exp1')\n"
        f"print(json.dumps([v.assign(b) for b in {ids!r}]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a different str hash seed must not matter
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    here = VariantsConfig.parse(AB, salt="exp1")
    assert json.loads(result.stdout) == [here.assign(b) for b in ids]


def test_shares_hold_over_20k_buyers() -> None:
    variants = VariantsConfig.parse(
        {
            "control": {"bundle": "a", "share": 0.7},
            "b": {"bundle": "b", "share": 0.2},
            "c": {"bundle": "c", "share": 0.1},
        },
        salt="exp",
    )
    counts = Counter(variants.assign(f"user{i}") for i in range(20_000))
    assert counts["control"] / 20_000 == pytest.approx(0.7, abs=0.02)
    assert counts["b"] / 20_000 == pytest.approx(0.2, abs=0.02)
    assert counts["c"] / 20_000 == pytest.approx(0.1, abs=0.02)
    assert all(0.0 <= bucket(f"user{i}", "exp") < 1.0 for i in range(100))


def test_anonymous_requests_go_to_the_control() -> None:
    variants = VariantsConfig.parse(
        {"treatment": {"bundle": "b", "share": 0.99}, "control": {"bundle": "a", "share": 0.01}}
    )
    assert variants.assign(None) == "control"
    assert variants.assign("  ") == "control"  # normalizes to empty: no buyer
    assert variants.assign("someone") == "treatment"  # 99%: the hash lands here for this id


def test_override_forces_a_known_variant_and_rejects_an_unknown_one() -> None:
    variants = VariantsConfig.parse(AB, salt="exp1")
    assert variants.assign("b1", override="treatment") == "treatment"
    assert variants.assign(None, override="treatment") == "treatment"
    with pytest.raises(
        VariantError, match="unknown variant 'nope'; this service serves: control, treatment"
    ) as e:
        variants.assign("b1", override="nope")
    assert e.value.status == 422


def test_growing_a_share_moves_only_buyers_at_the_boundary() -> None:
    small = VariantsConfig.parse(AB, salt="s")
    large = VariantsConfig.parse(
        {"control": {"bundle": "a", "share": 0.8}, "treatment": {"bundle": "b", "share": 0.2}}, salt="s"
    )
    ids = [f"u{i}" for i in range(5000)]
    moved = [(small.assign(b), large.assign(b)) for b in ids if small.assign(b) != large.assign(b)]
    assert moved and all(pair == ("control", "treatment") for pair in moved)  # nobody leaves the treatment
