"""The one strict whole-number parser (sockvisor/wholenumber.py): what it accepts,
and that everything else is a ValueError with a short message -- never another
exception, never a number Python's lenient int() would have made of it."""

from __future__ import annotations

import pytest

from sockvisor import wholenumber


@pytest.mark.parametrize("value, expected", [
    (0, 0), (12, 12), (-3, -3), ("12", 12), ("-3", -3), ("+4", 4),
    ("9" * wholenumber.MAX_DIGITS, int("9" * wholenumber.MAX_DIGITS)),
])
def test_accepted(value, expected):
    assert wholenumber.parse(value) == expected


@pytest.mark.parametrize("value", [
    "²", "١٢", "1_000", " 1", "1 ", "0x10", "", "-", "1.0", "1e3",
    "9" * (wholenumber.MAX_DIGITS + 1), "9" * 5000,
    1.0, 2.5, float("nan"), True, False, None, [1], {"a": 1}, 10 ** 30, -(10 ** 4000),
])
def test_refused_with_a_short_message(value):
    with pytest.raises(ValueError) as caught:
        wholenumber.parse(value, "'nb'")
    assert "'nb'" in str(caught.value)
    assert len(str(caught.value)) < 200


def test_bounds():
    assert wholenumber.parse("5", low=5, high=5) == 5
    with pytest.raises(ValueError, match="at least 1"):
        wholenumber.parse(0, low=1)
    with pytest.raises(ValueError, match="at most 9"):
        wholenumber.parse("10", high=9)


@pytest.mark.parametrize("text, expected", [("15", True), ("0", True), ("²", False),
                                            ("١٢", False), ("-1", False), ("", False),
                                            ("9" * 5000, False), ("TERM", False)])
def test_is_digits(text, expected):
    assert wholenumber.is_digits(text) is expected
