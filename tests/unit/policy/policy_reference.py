"""A deliberately naive IAM policy interpreter, the oracle for the property test.

It works on the raw JSON dicts and a plain dict of context values, re-reads everything on every call, matches
wildcards with a textbook recursive matcher and shares no code with `sidecar.policy`. Slow and obvious on purpose:
if the compiled, indexed evaluator ever disagrees with this, the compiled one is wrong.

Supported subset (what the property test generates): Principal/NotPrincipal with "*" or {"AWS": [...]},
Action/NotAction, Resource/NotResource (full ARNs with 6 parts, "*", the short execute-api:/ form, and
`${...}` variables in resources and in String/Arn condition values), and the String*, Numeric*, Date*, Arn*,
IpAddress/NotIpAddress, Bool and Null operators with IfExists and ForAllValues:/ForAnyValue:.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Value = str | list[str] | None


@dataclass
class Caller:
    """Who is calling, as plain data."""

    arn: str = ""
    account: str = ""


@dataclass
class World:
    """One request: the action, the resource ARN, the caller and every context key's value (lower-case keys)."""

    action: str
    resource: str
    caller: Caller
    values: dict[str, Value] = field(default_factory=dict)


@dataclass
class Verdict:
    """The reference answer."""

    effect: str
    deciding: int | None
    matched: list[int]


def as_list(value: Any) -> list[Any]:
    """IAM's "a string or a list of strings"."""
    return value if isinstance(value, list) else [value]


def glob(pattern: list[tuple[str, bool]], text: str) -> bool:
    """Textbook wildcard match; `pattern` is (char, is_wildcard) pairs. `*` matches any run, `?` one char."""
    if not pattern:
        return text == ""
    char, wild = pattern[0]
    if wild and char == "*":
        return any(glob(pattern[1:], text[i:]) for i in range(len(text) + 1))
    if not text:
        return False
    if wild and char == "?":
        return glob(pattern[1:], text[1:])
    return char == text[0] and glob(pattern[1:], text[1:])


def plain(pattern: str) -> list[tuple[str, bool]]:
    """A pattern without variables: every `*` and `?` is a wildcard."""
    return [(c, c in "*?") for c in pattern]


def substitute(pattern: str, world: World) -> list[tuple[str, bool]] | None:
    """Expand `${key}` / `${key, 'default'}` variables into literal characters; None when one has no value."""
    out: list[tuple[str, bool]] = []
    rest = pattern
    while "${" in rest:
        before, _, after = rest.partition("${")
        name, _, rest = after.partition("}")
        out.extend(plain(before))
        name, comma, default = name.partition(",")
        value = world.values.get(name.strip().lower())
        if value is None and comma:
            value = default.strip().strip("'")
        if not isinstance(value, str):
            return None
        out.extend((c, False) for c in value)
    out.extend(plain(rest))
    return out


def arn_match(pattern: list[tuple[str, bool]], arn: str) -> bool:
    """Compare an ARN pattern to an ARN one colon-separated part at a time (the resource part may hold colons)."""
    pattern_parts: list[list[tuple[str, bool]]] = [[]]
    for char, wild in pattern:
        if char == ":" and not wild and len(pattern_parts) < 6:
            pattern_parts.append([])
        else:
            pattern_parts[-1].append((char, wild))
    arn_parts = arn.split(":", 5)
    if len(pattern_parts) != 6 or len(arn_parts) != 6:
        return False
    return all(glob(p, a) for p, a in zip(pattern_parts, arn_parts, strict=True))


def action_ok(statement: dict[str, Any], world: World) -> bool:
    if "Action" in statement:
        return any(glob(plain(a.lower()), world.action.lower()) for a in as_list(statement["Action"]))
    return not any(glob(plain(a.lower()), world.action.lower()) for a in as_list(statement["NotAction"]))


def resource_pattern_ok(pattern: str, world: World, api_prefix: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("execute-api:/"):
        pattern = api_prefix + pattern[len("execute-api:/") :]
    chars = substitute(pattern, world)
    return chars is not None and arn_match(chars, world.resource)


def resource_ok(statement: dict[str, Any], world: World, api_prefix: str) -> bool:
    if "Resource" in statement:
        return any(resource_pattern_ok(r, world, api_prefix) for r in as_list(statement["Resource"]))
    return not any(resource_pattern_ok(r, world, api_prefix) for r in as_list(statement["NotResource"]))


def principal_entry_ok(entry: str, caller: Caller) -> bool:
    if entry == "*":
        return True
    root = re.fullmatch(r"arn:aws:iam::(\d{12}):root", entry)
    if entry.isdigit() or root:
        account = root.group(1) if root else entry
        return caller.account == account
    if entry == caller.arn:
        return True
    session = re.fullmatch(r"arn:aws:sts::(\d{12}):assumed-role/([^/]+)/.*", caller.arn)
    return bool(session) and entry == f"arn:aws:iam::{session.group(1)}:role/{session.group(2)}"  # type: ignore[union-attr]


def principal_value_ok(value: Any, caller: Caller) -> bool:
    if value == "*":
        return True
    return any(principal_entry_ok(e, caller) for e in as_list(value.get("AWS", [])))


def caller_chain(caller: Caller) -> list[str]:
    """The identities IAM may check for a caller, outermost first, each as the one ARN that names it."""
    if not caller.arn:
        return ["<anonymous>"]
    root = f"arn:aws:iam::{caller.account}:root"
    if caller.arn == root:
        return [root]
    session = re.fullmatch(r"arn:aws:sts::(\d{12}):assumed-role/([^/]+)/.*", caller.arn)
    if session:
        return [root, f"arn:aws:iam::{session.group(1)}:role/{session.group(2)}", caller.arn]
    return [root, caller.arn]


def not_principal_ok(value: Any, caller: Caller, effect: str) -> bool:
    """NotPrincipal names identities exactly (a bare account id is its root ARN); the statement is read at each
    level of the caller's chain: a Deny applies unless every level is named, an Allow only if none is."""
    if value == "*":
        return False
    named = {f"arn:aws:iam::{e}:root" if e.isdigit() else e for e in as_list(value.get("AWS", []))}
    levels = [identity in named or "*" in named for identity in caller_chain(caller)]
    return not all(levels) if effect == "Deny" else not any(levels)


def principal_ok(statement: dict[str, Any], world: World) -> bool:
    if "Principal" in statement:
        return principal_value_ok(statement["Principal"], world.caller)
    if "NotPrincipal" in statement:
        return not_principal_ok(statement["NotPrincipal"], world.caller, statement["Effect"])
    return True


def when(text: str) -> float | None:
    """Epoch seconds from epoch text or ISO 8601 (UTC when no zone is given)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def single_test(base: str, request_value: str, policy_value: str, world: World) -> bool:
    """The positive form of operator `base` for one request value against one policy value."""
    if base.startswith(("String", "Arn")):
        tokens = substitute(policy_value, world)
        if tokens is None:
            return False
        text = "".join(c for c, _ in tokens)
        if base in ("StringEquals", "StringNotEquals"):
            return request_value == text
        if base in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
            return request_value.lower() == text.lower()
        if base in ("StringLike", "StringNotLike"):
            return glob(tokens, request_value)
        return arn_match(tokens, request_value)
    if base.startswith("Date"):
        mine, theirs = when(request_value), when(policy_value)
        if mine is None or theirs is None:
            return False
        return {
            "DateEquals": mine == theirs,
            "DateNotEquals": mine == theirs,
            "DateLessThan": mine < theirs,
            "DateLessThanEquals": mine <= theirs,
            "DateGreaterThan": mine > theirs,
            "DateGreaterThanEquals": mine >= theirs,
        }[base]
    if base.startswith("Numeric"):
        try:
            number = float(request_value)
        except ValueError:
            return False
        limit = float(policy_value)
        return {
            "NumericEquals": number == limit,
            "NumericNotEquals": number == limit,
            "NumericLessThan": number < limit,
            "NumericLessThanEquals": number <= limit,
            "NumericGreaterThan": number > limit,
            "NumericGreaterThanEquals": number >= limit,
        }[base]
    if base in ("IpAddress", "NotIpAddress"):
        try:
            return ipaddress.ip_address(request_value) in ipaddress.ip_network(policy_value, strict=False)
        except ValueError:
            return False
    if base == "Bool":
        return request_value.lower() == policy_value.lower()
    raise AssertionError(f"reference does not know {base}")


NEGATED = {
    "StringNotEquals",
    "StringNotEqualsIgnoreCase",
    "StringNotLike",
    "NumericNotEquals",
    "NotIpAddress",
    "DateNotEquals",
    "ArnNotEquals",
    "ArnNotLike",
}


def condition_ok(operator: str, key: str, raw_values: Any, world: World) -> bool:
    qualifier = None
    if ":" in operator:
        qualifier, operator = operator.split(":", 1)
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    policy_values = [str(v).lower() if isinstance(v, bool) else str(v) for v in as_list(raw_values)]
    value = world.values.get(key.lower())
    if base == "Null":
        return any((value is None) == (v.lower() == "true") for v in policy_values)
    negated = base in NEGATED

    def matches(item: str) -> bool:
        return any(single_test(base, item, v, world) for v in policy_values)

    if qualifier == "ForAllValues":
        if value is None:
            return True
        items = [value] if isinstance(value, str) else value
        return all((not matches(x)) if negated else matches(x) for x in items)
    if qualifier == "ForAnyValue":
        if value is None:
            return if_exists
        items = [value] if isinstance(value, str) else value
        return any((not matches(x)) if negated else matches(x) for x in items)
    if value is None:
        return True if negated else if_exists
    items = [value] if isinstance(value, str) else value
    if negated:
        return not any(matches(x) for x in items)
    return any(matches(x) for x in items)


def statement_ok(statement: dict[str, Any], world: World, api_prefix: str) -> bool:
    if not (action_ok(statement, world) and principal_ok(statement, world)):
        return False
    if not resource_ok(statement, world, api_prefix):
        return False
    for operator, block in statement.get("Condition", {}).items():
        for key, values in block.items():
            if not condition_ok(operator, key, values, world):
                return False
    return True


def evaluate(policy: dict[str, Any], world: World, api_prefix: str) -> Verdict:
    """Deny if any matching Deny, else Allow if any matching Allow, else Neither."""
    statements = as_list(policy["Statement"])
    matched = [i for i, s in enumerate(statements) if statement_ok(s, world, api_prefix)]
    denies = [i for i in matched if statements[i]["Effect"] == "Deny"]
    allows = [i for i in matched if statements[i]["Effect"] == "Allow"]
    if denies:
        return Verdict("Deny", denies[0], matched)
    if allows:
        return Verdict("Allow", allows[0], matched)
    return Verdict("Neither", None, matched)
