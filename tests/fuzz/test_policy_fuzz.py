"""Hostile input never crashes the engine: bad documents raise ConfigError, odd requests evaluate to a verdict."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import ConfigError
from sidecar.policy import ContextSettings, EvalContext, authorize, parse_policy
from sidecar.request import Principal
from sidecar.routes import AmbiguousPath
from tests.unit.policy.policy_support import API, allow, request

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12))
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=12,
)
WORDS = st.sampled_from(
    [
        "Version", "Statement", "Effect", "Allow", "Deny", "Principal", "NotPrincipal", "Action", "NotAction",
        "Resource", "NotResource", "Condition", "Sid", "*", "execute-api:Invoke", "execute-api:/*", "AWS",
        "StringLike", "IpAddress", "ForAnyValue:StringEquals", "aws:SourceIp", "10.0.0.0/8", "${aws:username}",
        "2012-10-17", "arn:aws:execute-api:*:*:*/*", "Null", "true", "DateLessThanIfExists", "${",
    ]
)  # fmt: skip
POLICYISH = st.recursive(
    st.one_of(WORDS, SCALARS),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(WORDS, inner, max_size=5)),
    max_leaves=25,
)


def _compile_or_reject(document: Any) -> None:
    try:
        compiled = parse_policy(json.dumps(document), "fuzz.json", api=API, max_size=None)
    except ConfigError as exc:
        assert exc.issues and all(issue.file == "fuzz.json" for issue in exc.issues)
        return
    result = compiled.evaluate(EvalContext(request(), Principal(kind="anonymous", id="anonymous"), API))
    assert result.effect.value in ("Allow", "Deny", "Neither")
    assert result.explain()


@settings(max_examples=300, deadline=None)
@given(POLICYISH)
def test_random_documents_compile_or_raise_config_error(document: Any) -> None:
    _compile_or_reject(document)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_random_statements_compile_or_raise_config_error(statement: Any) -> None:
    _compile_or_reject({"Version": "2012-10-17", "Statement": [allow(), statement]})


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_random_text_is_a_located_json_error_or_a_policy(text: str) -> None:
    try:
        parse_policy(text, "fuzz.json", api=API)
    except ConfigError as exc:
        assert all(issue.line >= 0 and issue.column >= 0 for issue in exc.issues)


ANYTHING_POLICY = parse_policy(
    json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                allow(Condition={"ForAnyValue:StringLike": {"jwt:groups": "a*"}, "NumericLessThan": {"jwt:n": 5}}),
                allow(Condition={"DateGreaterThan": {"jwt:iat": "2020-01-01"}, "Bool": {"jwt:flag": "true"}}),
                allow(Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}, "BinaryEquals": {"jwt:b": "AAE="}}),
                allow(Resource="execute-api:/prod/*/${jwt:sub}/*", Condition={"Null": {"aws:username": "true"}}),
                allow(Condition={"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:user/${jwt:sub}"}}),
            ],
        }
    ),
    api=API,
)


@settings(max_examples=300, deadline=None)
@given(
    claims=st.dictionaries(st.sampled_from(["groups", "n", "iat", "flag", "b", "sub", "iss", "scope"]), JSON),
    headers=st.dictionaries(st.sampled_from(["x-forwarded-for", "user-agent", "referer"]), st.text(max_size=40)),
    source=st.text(max_size=40),
    path=st.text(alphabet="/%.a-z0-9", max_size=30).map(lambda p: "/" + p),
    arn=st.text(max_size=30),
)
def test_odd_requests_and_claims_still_get_a_verdict(
    claims: dict[str, Any], headers: dict[str, str], source: str, path: str, arn: str
) -> None:
    principal = Principal(kind="jwt", id="x", arn=arn, claims=claims)
    req = request(path=path, source=source, headers=headers)
    try:
        ctx = EvalContext(req, principal, API, ContextSettings(trusted_proxy_hops=2))
    except AmbiguousPath:
        return  # refused before evaluation (the pipeline answers 400); never an allow
    result = ANYTHING_POLICY.evaluate(ctx)
    assert result.effect.value in ("Allow", "Neither")
    assert authorize(None, result).allowed is (result.effect.value == "Allow")
    assert result.explain()
