"""Explanations: what each stage of the pipeline checked and what it found, for `check --explain`.

One model for every stage: a decision's explanation is a tuple of `Step`s in pipeline order (route, admit,
authenticate, scopes, policy, meter; a stage that did not run has no step), each with an outcome, a one-line
summary, key/value facts and free detail lines, rendered as `explain:` lines in `check`'s text output and as
objects in its JSON.

Explanations are built only when the pipeline runs with `explain=True` (`check`), never while serving: a stage
that refuses attaches an `Explainer` (a function, called only in that mode) to its `Denied` rather than the text
itself, so the hot path pays for nothing and no explanation can reach a decision log or a deny body. What a step
may say: what was checked and what was found (claim values such as `exp`, `iss` and `aud`, scopes, access key
ids, AWS's canonical request and string to sign); never a secret, a signature or a whole token.

A leaf: it imports nothing of ours, so the pipeline, the authorizers and the policy engine all build steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ROUTE = "route"
ADMIT = "admit"
AUTHENTICATE = "authenticate"
SCOPES = "scopes"
POLICY = "policy"
METER = "meter"
STAGES = (ROUTE, ADMIT, AUTHENTICATE, SCOPES, POLICY, METER)
"""The stages, in the order a request meets them."""

PASS = "pass"
"""The stage let the request on (for the last stage of an allow: the request is allowed)."""
DENY = "deny"
"""The stage refused the request: the last step of a deny."""

Fact = tuple[str, str]

_INDENT = " " * 19
"""Where facts and details start under a step's head line (past the `stage` and `outcome` columns). Every detail
line gets it, empty ones too, so `check`'s text can be cut back to the detail text at one fixed column."""


@dataclass(frozen=True, slots=True)
class Step:
    """What one stage checked and found.

    `facts` are short named values (`exp`, `judged_at`, `required_scopes`), one line each, in the order worth
    reading; `details` are longer text kept line by line (a policy's statement-by-statement trace, AWS's
    canonical request block), shown as they are.
    """

    stage: str
    outcome: str
    summary: str
    facts: tuple[Fact, ...] = ()
    details: tuple[str, ...] = ()

    def lines(self) -> tuple[str, ...]:
        """The text form: a head line, then the facts and the details indented under the summary."""
        head = f"{self.stage:<12} {self.outcome:<5} {self.summary}"
        return (
            head,
            *(f"{_INDENT}{name}: {value}" for name, value in self.facts),
            *(f"{_INDENT}{line}" for line in self.details),
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: `facts` as an object (names are unique within a step), `details` as a list of lines."""
        return {
            "stage": self.stage,
            "outcome": self.outcome,
            "summary": self.summary,
            "facts": dict(self.facts),
            "details": list(self.details),
        }

    def with_facts(self, *facts: Fact) -> Step:
        """This step with `facts` put first (the pipeline adds which authorizer refused)."""
        return Step(self.stage, self.outcome, self.summary, (*facts, *self.facts), self.details)


Explainer = Callable[[], Step]
"""Builds a refusing stage's step on demand (`Denied.explain`): called only when explaining."""


def refused(reason: str, message: str, *facts: Fact, details: tuple[str, ...] = (), stage: str = AUTHENTICATE) -> Step:
    """The step of a stage that refused: its reason code and message as the summary, then what it found."""
    return Step(stage, DENY, f"{reason}: {message}", facts, details)


def text_lines(steps: Iterable[Step]) -> list[str]:
    """Every step's text lines, in order."""
    return [line for step in steps for line in step.lines()]


def as_json(steps: Iterable[Step]) -> list[dict[str, Any]]:
    """Every step's JSON object, in order."""
    return [step.as_dict() for step in steps]


# -- small helpers for the facts stages report ---------------------------------------------------------------


def when(epoch: float) -> str:
    """A time as `2026-01-01T00:00:00Z (1767225600)`: readable, and exact for comparing with a claim."""
    try:
        number = f"{epoch:.0f}" if epoch == int(epoch) else f"{epoch:.3f}"
    except (OverflowError, ValueError):  # inf, nan: nothing a check lets through, but never a crash
        return str(epoch)
    try:
        stamp = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return number
    return f"{stamp} ({number})"


def duration(seconds: float) -> str:
    """`6901 s (1 h 55 min)`: exact seconds, and a rough reading once it is more than a couple of minutes."""
    try:
        whole = round(seconds)
    except (OverflowError, ValueError):  # inf, nan: never a crash in an explanation
        return f"{seconds} s"
    if abs(whole) < 120:
        return f"{whole} s"
    minutes = abs(whole) // 60
    rough = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    return f"{whole} s ({rough})"


def listed(values: Iterable[str], empty: str = "(none)", limit: int = 20) -> str:
    """Values for one fact line: sorted, comma-separated, cut after `limit` with a count of the rest."""
    items = sorted(values)
    if not items:
        return empty
    shown = ", ".join(shown_value(v) for v in items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items) - limit} more)"


MAX_VALUE_CHARS = 200
"""A value the client chose (a claim, a header) is cut to this many characters in a fact."""


def shown_value(value: object) -> str:
    """A value as a fact shows it: strings as they are (cut to `MAX_VALUE_CHARS`, control characters escaped),
    anything else as its repr."""
    text = value if isinstance(value, str) else repr(value)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "..."
