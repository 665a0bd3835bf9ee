"""IAM policy JSON and condition values: the policy compiler (`parse_policy`) and the compiled matchers.

The input is the text of a policy document; the first byte picks its kind (resource or identity). Seeds: policies
using every condition operator family, variables, NotPrincipal/NotAction/NotResource, and broken ones.
Oracle: a bad document is a `ConfigError` whose every issue is located in the document (its file, a line and
column >= 0, and a field or a line), never another exception; a compiled one evaluates, against a handful of
fixed requests and principals, to Allow, Deny or Neither with an explanation, the same answer twice in a row and
the same again from a second compilation of the same text (a decision is deterministic, nothing cached in
between changes it).
"""

from __future__ import annotations

import json

from sidecar.config import ConfigError
from sidecar.policy import CompiledPolicy, ContextSettings, EvalContext, parse_policy
from sidecar.request import ANONYMOUS, Principal
from sidecar.routes import AmbiguousPath
from tests.unit.policy.policy_support import API, ARN_BASE, iam_user, jwt_user, request

from ..harness import OneInput, Target, text

FILE = "fuzz.json"
SETTINGS = ContextSettings(trusted_proxy_hops=1)
CASES = [
    (request(), ANONYMOUS),
    (request("POST", "/pets/7?a=b", "10.1.2.3", {"x-forwarded-for": "192.0.2.1", "user-agent": "fuzz"}), iam_user()),
    (
        request("DELETE", "/admin/users/alice", "2001:db8::1", {"referer": "https://x.test/"}, time=1_900_000_000),
        jwt_user("alice", groups=["admins", "ops"], n=3, flag=True, iat=1_600_000_000, scope="orders.read"),
    ),
    (request("GET", "/a%2Fb/%E2%82%AC", "127.0.0.1", trusted_peer=True), Principal(kind="custom", id="x", arn="")),
]


def _verdicts(compiled: CompiledPolicy) -> list[tuple[str, str]]:
    found = []
    for req, principal in CASES:
        try:
            context = EvalContext(req, principal, API, SETTINGS)
        except AmbiguousPath:
            found.append(("ambiguous", ""))
            continue
        result = compiled.evaluate(context)
        assert result.effect.value in ("Allow", "Deny", "Neither"), result.effect
        assert result.explain()
        found.append((result.effect.value, repr((result.deciding, result.matched))))
    return found


def one_input(data: bytes) -> None:
    if not data:
        return
    kind = "identity" if data[0] & 1 else "resource"
    source = text(data[1:])
    try:
        compiled = parse_policy(source, FILE, kind=kind, api=API, max_size=None)  # type: ignore[arg-type]
    except ConfigError as exc:
        assert exc.issues
        for issue in exc.issues:
            assert issue.file == FILE and issue.line >= 0 and issue.column >= 0, issue
            assert issue.field or issue.line, issue
        return
    first = _verdicts(compiled)
    assert _verdicts(compiled) == first, "the same policy answered twice differently"
    again = parse_policy(source, FILE, kind=kind, api=API, max_size=None)  # type: ignore[arg-type]
    assert _verdicts(again) == first, "a second compilation of the same text answered differently"


def _doc(*statements: dict[str, object], version: str = "2012-10-17") -> bytes:
    return b"\x00" + json.dumps({"Version": version, "Statement": list(statements)}, indent=1).encode()


INVOKE = {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke"}
SOURCE_IP = "aws:SourceIp"
SEED_STATEMENTS: list[dict[str, object]] = [
    {**INVOKE, "Resource": f"{ARN_BASE}/*"},
    {**INVOKE, "Resource": "execute-api:/prod/GET/pets", "Condition": {"IpAddress": {SOURCE_IP: "10.0.0.0/8"}}},
    {**INVOKE, "Resource": "*", "Condition": {"ForAnyValue:StringLike": {"jwt:groups": ["adm*", "o?s"]}}},
    {
        "Effect": "Deny",
        "NotPrincipal": {"AWS": "arn:aws:iam::123456789012:user/alice"},
        "NotAction": "x:y",
        "NotResource": "execute-api:/*/POST/*",
        "Condition": {"NumericGreaterThanEquals": {"jwt:n": "2"}},
    },
    {
        **INVOKE,
        "Resource": "execute-api:/*/*/admin/users/${jwt:sub}",
        "Condition": {
            "DateLessThanIfExists": {"aws:CurrentTime": "2030-01-01T00:00:00Z"},
            "Bool": {"aws:SecureTransport": "true"},
            "Null": {"jwt:scope": "false"},
        },
    },
    {
        **INVOKE,
        "Resource": "*",
        "Condition": {
            "ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:user/*"},
            "BinaryEquals": {"jwt:b": "AAE="},
            "StringEqualsIgnoreCase": {"aws:UserAgent": "FUZZ"},
        },
    },
    {**INVOKE, "Resource": "*", "Condition": {"NotIpAddress": {SOURCE_IP: ["::1/128", "300.1.1.1"]}}},
]


def seeds() -> list[bytes]:
    identity = {"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}
    return [
        *(_doc(statement) for statement in SEED_STATEMENTS),
        _doc(*SEED_STATEMENTS[2:4]),
        b"\x01" + json.dumps(identity).encode(),
        b'\x00{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Effect": "Deny"}]}',
        b'\x00{"Statement": [',
        b"\x00[]",
        b"\x00null",
        b'\x00{"Version": "2008-10-17", "Statement": []}',
    ]


def prepare() -> OneInput:
    return one_input


TARGET = Target(
    name="policy",
    summary=(
        "IAM policy JSON and condition values (parse_policy, the compiled matchers, variables); oracle: a bad "
        "document is a ConfigError whose every issue is located in it, never another exception; a compiled one "
        "answers Allow/Deny/Neither with an explanation, identically twice and after recompiling"
    ),
    prepare=prepare,
    seeds=seeds,
)
