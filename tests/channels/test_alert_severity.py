"""Severity parsing (channels/alert.py) and the limits of channels/safe_json.py: pure, no network."""

from __future__ import annotations

import json

import pytest

from channels.alert import alert_from_payload, decode_payload, severity_label
from channels.errors import InvalidPayload
from channels.safe_json import MAX_DEPTH, UnreadableJson, read_json


def severity_of(value: object) -> int | None:
    return alert_from_payload({"severity": value}, tenant_id="t", alert_id=1, event="OPEN").severity


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4, 4), (5, 5), (0, 0), (7, 7), ("3", 3), (" 2 ", 2), ("3.9", 3), (3.9, 3), ("+1", 1),
        ("critical", 4), ("HIGH", 3), (" Medium\t", 2), ("low", 1), ("info", 0), ("1e0", 1),
        (-1, None), ("-2", None), (-0.5, None), ("warning", None), (None, None), (True, None),
        ("", None), ("1_0", None), ([4], None), ({"level": 4}, None),
    ],
)  # fmt: skip
def test_severity_is_read_as_the_platform_writes_it(value, expected):
    assert severity_of(value) == expected


ABSURD = ["inf", "-Infinity", "nan", 1e308, float("inf"), 10**5000, "9" * 5000, "1e999"]


@pytest.mark.parametrize("value", ABSURD, ids=[f"absurd-{n}" for n in range(len(ABSURD))])
def test_absurd_severities_are_a_clear_permanent_error(value):
    with pytest.raises(InvalidPayload) as caught:
        severity_of(value)
    message = str(caught.value)
    assert message.startswith("severity") and len(message) < 120


def test_labels_keep_their_mapping_and_negative_is_unknown():
    labels = [severity_label(severity_of(v)) for v in (5, 4, 3, 2, 1, 0, -1, "bogus")]
    assert labels == ["CRITICAL", "CRITICAL", "HIGH", "MEDIUM", "LOW", "LOW", "UNKNOWN", "UNKNOWN"]


def test_read_json_refuses_deep_nesting_long_numbers_and_constants_with_reasons():
    deep = "[" * 1000 + "]" * 1000
    with pytest.raises(UnreadableJson, match=f"nested deeper than {MAX_DEPTH} levels"):
        read_json(deep)
    with pytest.raises(UnreadableJson, match="number of more than 1000 digits"):
        read_json('{"n": ' + "9" * 4301 + "}")
    with pytest.raises(UnreadableJson, match="NaN"):
        read_json('{"n": NaN}')
    with pytest.raises(UnreadableJson, match="out of range"):
        read_json('{"n": 1e999}')
    with pytest.raises(UnreadableJson, match="not valid JSON"):
        read_json("{broken")


def test_read_json_ignores_brackets_and_digits_inside_strings():
    text = json.dumps({"message": "[" * 500 + "9" * 2000 + '"\\', "nested": [[[1]]]})
    assert read_json(text) == json.loads(text)
    assert read_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None


def test_a_payload_string_holding_deep_json_is_an_invalid_payload():
    with pytest.raises(InvalidPayload, match="payload is a string that is nested deeper than 64 levels"):
        decode_payload("[" * 5000 + "]" * 5000)
