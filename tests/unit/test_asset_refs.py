"""``asset:<id>`` references to imported Tilda images (``domain/tilda.py``)."""

from __future__ import annotations

import pytest

from orchestrator.domain.tilda import asset_ref, parse_asset_ref


@pytest.mark.parametrize(
    ("value", "asset_id"),
    [
        ("asset:0123456789abcdef", "0123456789abcdef"),
        ("asset:a", "a"),
        ("asset:", None),  # no id
        ("asset:ABCDEF", None),  # ids are lower-case hex
        ("asset:X", None),
        ("asset:abcdefg", None),
        ("asset:../x", None),
        ("asset:ab cd", None),
        ("Asset:abc", None),
        ("output:abc/0", None),
        ("abc", None),
        ("", None),
        ("xasset:abc", None),
    ],
)
def test_parse_asset_ref(value: str, asset_id: str | None) -> None:
    assert parse_asset_ref(value) == asset_id


def test_asset_ref_round_trip() -> None:
    assert asset_ref("c0ffee") == "asset:c0ffee"
    assert parse_asset_ref(asset_ref("c0ffee")) == "c0ffee"
