"""Condition operators: parsed and validated at load, compiled into closures over the per-request context.

Semantics follow the IAM documentation:
- several keys under one operator are ANDed, several values for one key are ORed;
- a missing key makes a positive operator false and a negated one (`StringNotEquals`, `NotIpAddress`,
  `ArnNotLike`, `NumericNotEquals`, `DateNotEquals`, ...) true; the `IfExists` suffix makes a missing key true;
- `ForAllValues:` is true when every request value matches (vacuously true when the key is missing or empty),
  `ForAnyValue:` when at least one does (false when missing); with a negated operator the per-value test is
  negated ("matches none of the policy values");
- a multi-valued key under a plain operator: positive operators match if any value matches, negated operators
  match only if no value matches (so a negated operator never lets one matching value slip through).

Each compiled check is a closure `check(ctx) -> bool`; static values are folded into sets, one combined regex or
sorted CIDR intervals, and only templated values (`${aws:username}`) do any work per request.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .arn import ArnSet, arn_problem, compile_alternatives, rendered_matches
from .context import EvalContext, decode_binary, parse_date
from .variables import Template, VariableError, has_variables, parse_template

Test = Callable[[EvalContext, str], bool]
Check = Callable[[EvalContext], bool]

# family, negated
_OPERATORS: dict[str, tuple[str, bool]] = {
    "StringEquals": ("string", False),
    "StringNotEquals": ("string", True),
    "StringEqualsIgnoreCase": ("string_ic", False),
    "StringNotEqualsIgnoreCase": ("string_ic", True),
    "StringLike": ("like", False),
    "StringNotLike": ("like", True),
    "NumericEquals": ("num_eq", False),
    "NumericNotEquals": ("num_eq", True),
    "NumericLessThan": ("num_lt", False),
    "NumericLessThanEquals": ("num_le", False),
    "NumericGreaterThan": ("num_gt", False),
    "NumericGreaterThanEquals": ("num_ge", False),
    "DateEquals": ("date_eq", False),
    "DateNotEquals": ("date_eq", True),
    "DateLessThan": ("date_lt", False),
    "DateLessThanEquals": ("date_le", False),
    "DateGreaterThan": ("date_gt", False),
    "DateGreaterThanEquals": ("date_ge", False),
    "Bool": ("bool", False),
    "BinaryEquals": ("binary", False),
    "IpAddress": ("ip", False),
    "NotIpAddress": ("ip", True),
    "ArnEquals": ("arn", False),
    "ArnLike": ("arn", False),
    "ArnNotEquals": ("arn", True),
    "ArnNotLike": ("arn", True),
    "Null": ("null", False),
}
_BY_LOWER = {name.lower(): name for name in _OPERATORS}
_TEMPLATED = frozenset({"string", "string_ic", "like", "arn"})
_QUALIFIERS = {"forallvalues": "ForAllValues", "foranyvalue": "ForAnyValue"}
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "eq": lambda a, b: a == b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}


class ConditionError(ValueError):
    """An operator or value the policy language does not allow."""


@dataclass(frozen=True, slots=True)
class Operator:
    """A parsed operator name such as `ForAnyValue:StringLikeIfExists`."""

    text: str
    name: str
    family: str
    negated: bool
    qualifier: str | None
    if_exists: bool


def parse_operator(text: str) -> Operator:
    """Parse an operator; raise `ConditionError` naming the problem."""
    qualifier: str | None = None
    rest = text
    prefix, sep, tail = text.partition(":")
    if sep:
        qualifier = _QUALIFIERS.get(prefix.lower())
        if qualifier is None:
            raise ConditionError(f"unknown set operator {prefix!r}: use ForAllValues: or ForAnyValue:")
        rest = tail
    if_exists = rest.lower().endswith("ifexists") and rest.lower() != "ifexists"
    base = rest[: -len("IfExists")] if if_exists else rest
    name = _BY_LOWER.get(base.lower())
    if name is None:
        raise ConditionError(f"unknown condition operator {text!r} (known: {', '.join(_OPERATORS)})")
    family, negated = _OPERATORS[name]
    if family == "null" and (if_exists or qualifier):
        raise ConditionError("Null cannot take IfExists or a ForAllValues:/ForAnyValue: prefix")
    return Operator(text, name, family, negated, qualifier, if_exists)


def value_problem(op: Operator, value: str, variables: bool) -> str | None:
    """Why `value` is not valid for `op` (None if it is)."""
    family = op.family
    if variables and family in _TEMPLATED and has_variables(value):
        try:
            parse_template(value)
        except VariableError as exc:
            return str(exc)
        return None
    if family.startswith("num_"):
        try:
            float(value)
        except ValueError:
            return f"{value!r} is not a number"
    elif family.startswith("date_"):
        if parse_date(value) is None:
            return f"{value!r} is not an ISO 8601 date/time or epoch seconds"
    elif family in ("bool", "null"):
        if value.lower() not in ("true", "false"):
            return f"{op.name} takes true or false, not {value!r}"
    elif family == "binary":
        if decode_binary(value) is None:
            return f"{value!r} is not base64"
    elif family == "ip":
        try:
            policy_network(value)
        except ValueError as exc:
            return str(exc)
    elif family == "arn":
        return arn_problem(value)
    return None


def compile_condition(op: Operator, key: str, values: Sequence[str], variables: bool) -> Check:
    """A closure deciding `op` for context key `key` (lower-cased) against validated `values`."""
    if op.family == "null":
        wanted = frozenset(v.lower() == "true" for v in values)
        return lambda ctx: (ctx.get(key) is None) in wanted
    test = _test(op.family, values, variables)
    return _compose(key, test, op.negated, op.qualifier, op.if_exists)


def template_keys(values: Sequence[str], family: str, variables: bool) -> frozenset[str]:
    """Context keys read by policy variables inside these values."""
    if not variables or family not in _TEMPLATED:
        return frozenset()
    keys: set[str] = set()
    for value in values:
        if has_variables(value):
            keys |= parse_template(value).keys
    return frozenset(keys)


def _compose(key: str, test: Test, negated: bool, qualifier: str | None, if_exists: bool) -> Check:
    if qualifier == "ForAllValues":

        def for_all(ctx: EvalContext) -> bool:
            value = ctx.get(key)
            if value is None:
                return True
            items = (value,) if isinstance(value, str) else value
            return all(test(ctx, x) != negated for x in items)

        return for_all
    if qualifier == "ForAnyValue":

        def for_any(ctx: EvalContext) -> bool:
            value = ctx.get(key)
            if value is None:
                return if_exists
            items = (value,) if isinstance(value, str) else value
            return any(test(ctx, x) != negated for x in items)

        return for_any
    if negated:

        def negative(ctx: EvalContext) -> bool:
            value = ctx.get(key)
            if value is None:
                return True
            if isinstance(value, str):
                return not test(ctx, value)
            return not any(test(ctx, x) for x in value)

        return negative

    def positive(ctx: EvalContext) -> bool:
        value = ctx.get(key)
        if value is None:
            return if_exists
        if isinstance(value, str):
            return test(ctx, value)
        return any(test(ctx, x) for x in value)

    return positive


def _split(values: Sequence[str], variables: bool) -> tuple[list[str], list[Template]]:
    static: list[str] = []
    templates: list[Template] = []
    for value in values:
        if variables and has_variables(value):
            templates.append(parse_template(value))
        else:
            static.append(value)
    return static, templates


def _test(family: str, values: Sequence[str], variables: bool) -> Test:
    if family in _TEMPLATED:
        static, templates = _split(values, variables)
        return _with_templates(_static_test(family, static), family, templates)
    if family.startswith("num_"):
        return _numeric(_COMPARE[family[4:]], [float(v) for v in values])
    if family.startswith("date_"):
        dates = [d for d in (parse_date(v) for v in values) if d is not None]
        return _dated(_COMPARE[family[5:]], dates)
    if family == "bool":
        wanted = frozenset(v.lower() for v in values)
        return lambda ctx, v: v.lower() in wanted
    if family == "binary":
        blobs = frozenset(b for b in (decode_binary(v) for v in values) if b is not None)
        return lambda ctx, v: decode_binary(v) in blobs
    if family == "ip":
        return _ip_test(values)
    raise ConditionError(f"no test for operator family {family}")  # pragma: no cover - table and code agree


def _static_test(family: str, values: list[str]) -> Test | None:
    if not values:
        return None
    if family == "string":
        exact = frozenset(values)
        return lambda ctx, v: v in exact
    if family == "string_ic":
        folded = frozenset(v.casefold() for v in values)
        return lambda ctx, v: v.casefold() in folded
    if family == "arn":
        arns = ArnSet(values).matches
        return lambda ctx, v: arns(v)
    match = compile_alternatives(values, arn=False, ignore_case=False).fullmatch
    return lambda ctx, v: match(v) is not None


def _with_templates(static: Test | None, family: str, templates: list[Template]) -> Test:
    if not templates:
        return static if static is not None else (lambda ctx, v: False)

    def templated(ctx: EvalContext, value: str) -> bool:
        if static is not None and static(ctx, value):
            return True
        return any(_template_matches(template, family, ctx, value) for template in templates)

    return templated


def _template_matches(template: Template, family: str, ctx: EvalContext, value: str) -> bool:
    if family in ("string", "string_ic"):
        text = template.render_text(ctx.get)
        if text is None:
            return False
        return text == value if family == "string" else text.casefold() == value.casefold()
    rendered = template.render(ctx.get)
    if rendered is None:
        return False
    return rendered_matches(rendered, value, arn=family == "arn")


def _numeric(compare: Callable[[float, float], bool], numbers: list[float]) -> Test:
    def test(ctx: EvalContext, value: str) -> bool:
        try:
            number = float(value)
        except ValueError:
            return False
        return any(compare(number, n) for n in numbers)

    return test


def _dated(compare: Callable[[float, float], bool], dates: list[float]) -> Test:
    def test(ctx: EvalContext, value: str) -> bool:
        when = ctx.date(value)
        return when is not None and any(compare(when, d) for d in dates)

    return test


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def policy_network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A policy's address or CIDR as a network; raise `ValueError` naming the problem.

    IPv4-mapped IPv6 networks (`::ffff:198.51.100.0/120`, the form a dual-stack Envoy reports) become their IPv4
    network (`198.51.100.0/24`): request addresses in that form are compared as IPv4, so the mapped form would
    never match. A mapped address with a prefix under /96 reaches past the mapped range and is refused.
    """
    text = value.strip()
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"bad CIDR {value!r}: expected an IPv4/IPv6 address or network like 203.0.113.0/24") from None
    if isinstance(network, ipaddress.IPv4Network):
        return network
    written = ipaddress.IPv6Address(text.partition("/")[0].partition("%")[0])
    if written.ipv4_mapped is None:
        return network
    if network.prefixlen < _MAPPED.prefixlen:
        raise ValueError(
            f"bad CIDR {value!r}: an IPv4-mapped network needs a prefix of /96 or more (it spans more than the "
            "IPv4-mapped range ::ffff:0:0/96); write the IPv4 network, e.g. 198.51.100.0/24"
        )
    mapped = network.network_address.ipv4_mapped
    assert mapped is not None  # the prefix keeps the network inside ::ffff:0:0/96
    return ipaddress.IPv4Network((mapped, network.prefixlen - _MAPPED.prefixlen))


def _ip_test(values: Sequence[str]) -> Test:
    """CIDRs folded into sorted, merged integer intervals per IP version: one bisect per request value."""
    ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for value in values:
        network = policy_network(value)
        ranges[network.version].append((int(network.network_address), int(network.broadcast_address)))
    starts: dict[int, list[int]] = {}
    ends: dict[int, list[int]] = {}
    for version, spans in ranges.items():
        merged: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        starts[version] = [s for s, _ in merged]
        ends[version] = [e for _, e in merged]

    def test(ctx: EvalContext, value: str) -> bool:
        parsed = ctx.ip(value)
        if parsed is None:
            return False
        version, number = parsed
        position = bisect_right(starts[version], number) - 1
        return position >= 0 and number <= ends[version][position]

    return test
