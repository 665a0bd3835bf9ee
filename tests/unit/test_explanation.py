"""The explanation model (`sidecar.explanation`): its text and JSON forms, and the values facts may show."""

from __future__ import annotations

from sidecar.explanation import Step, as_json, duration, listed, refused, shown_value, text_lines, when


def test_a_step_renders_as_columns_and_as_an_object() -> None:
    step = Step("scopes", "deny", "InsufficientScope: ...", (("required_scopes", "admin"),), ("'GET", "", "/x'"))
    assert step.lines() == (
        "scopes       deny  InsufficientScope: ...",
        "                   required_scopes: admin",
        "                   'GET",
        "                   ",  # an empty detail line keeps the column, so the text can be cut at it
        "                   /x'",
    )
    assert as_json([step]) == [
        {
            "stage": "scopes",
            "outcome": "deny",
            "summary": "InsufficientScope: ...",
            "facts": {"required_scopes": "admin"},
            "details": ["'GET", "", "/x'"],
        }
    ]
    assert text_lines([step, step]) == [*step.lines(), *step.lines()]
    assert step.with_facts(("authorizer", "corp")).facts == (("authorizer", "corp"), ("required_scopes", "admin"))
    assert refused("TokenExpired", "the token has expired", ("exp", "1")) == Step(
        "authenticate", "deny", "TokenExpired: the token has expired", (("exp", "1"),)
    )


def test_fact_values_are_readable_bounded_and_never_raise() -> None:
    assert when(1_767_225_600) == "2026-01-01T00:00:00Z (1767225600)"
    assert when(1_767_225_600.25) == "2026-01-01T00:00:00Z (1767225600.250)"
    assert when(float("inf")) == "inf" and when(1e20) == "100000000000000000000"
    assert (duration(59.6), duration(-30), duration(7260)) == ("60 s", "-30 s", "7260 s (2 h 1 min)")
    assert listed(["b", "a"]) == "a, b" and listed([]) == "(none)" and listed([], empty="(absent)") == "(absent)"
    assert listed(str(n) for n in range(3)) == "0, 1, 2"
    assert listed([f"k{n:02d}" for n in range(25)]).endswith("k19, ... (5 more)")
    assert shown_value("evil\r\nX-Injected: 1") == "evil\\r\\nX-Injected: 1"  # one line, whatever the client sent
    assert shown_value("x" * 500) == "x" * 200 + "..."
    assert shown_value(42) == "42"
