"""Validation: each class of mistake is reported with the file, JSON path, line and column; warnings for dead code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from policy_support import API, allow

from sidecar.config import ConfigError, ConfigIssue
from sidecar.policy import RESOURCE_POLICY_MAX, load_policy, parse_policy


def _errors(doc: Any, kind: str = "resource", **kwargs: Any) -> list[ConfigIssue]:
    text = doc if isinstance(doc, str) else json.dumps(doc, indent=2)
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, "policies/resource.json", kind=kind, api=API, **kwargs)  # type: ignore[arg-type]
    issues = list(caught.value.issues)
    assert all(issue.file == "policies/resource.json" for issue in issues)
    return issues


def _one(doc: Any, kind: str = "resource") -> ConfigIssue:
    issues = _errors(doc, kind)
    assert len(issues) == 1, issues
    return issues[0]


def _doc(*statements: Any, **top: Any) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements), **top}


def _cond(condition: Any) -> dict[str, Any]:
    return _doc(allow(), allow(Condition=condition))


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        # document shape
        ([], "", "must be a JSON object"),
        ({"Version": "2012-10-17"}, "", "missing Statement"),
        ({"Version": "2012-10-17", "Statement": "x"}, "Statement", "object or a list"),
        (_doc(allow(), Extra=1), "Extra", "unknown top-level key"),
        (_doc(allow(), Id=5), "Id", "Id must be a string"),
        # Version mistakes
        ({"Version": "2012-10-18", "Statement": [allow()]}, "Version", "unknown Version"),
        ({"Version": 2012, "Statement": [allow()]}, "Version", "must be a string"),
        # statements
        (_doc(allow(), "oops"), "Statement[1]", "must be a JSON object"),
        (_doc(allow(), allow(Effects="Allow")), "Statement[1].Effects", "unknown statement key"),
        (_doc(allow(Effect="allow")), "Statement[0].Effect", "unknown Effect 'allow'"),
        (_doc({k: v for k, v in allow().items() if k != "Effect"}), "Statement[0]", "missing Effect"),
        (_doc(allow(Sid="A"), allow(Sid="A")), "Statement[1].Sid", "duplicate Sid"),
        (_doc(allow(Sid=7)), "Statement[0].Sid", "Sid must be a string"),
        # Action
        (_doc(allow(NotAction="s3:*")), "Statement[0].NotAction", "not both"),
        (_doc({k: v for k, v in allow().items() if k != "Action"}), "Statement[0]", "missing Action"),
        (_doc(allow(Action="invoke")), "Statement[0].Action", "malformed action"),
        (_doc(allow(Action=["execute-api:Invoke", 3])), "Statement[0].Action[1]", "wrong value type"),
        (_doc(allow(Action=[])), "Statement[0].Action", "wrong value type"),
        # Resource
        (_doc(allow(Resource="arn:aws:execute-api")), "Statement[0].Resource", "malformed ARN"),
        (_doc(allow(Resource=["execute-api:/*", "pets"])), "Statement[0].Resource[1]", "malformed ARN"),
        (_doc(allow(Resource="arn::execute-api:r:a:x")), "Statement[0].Resource", "partition and service"),
        (_doc(allow(Resource={"arn": "x"})), "Statement[0].Resource", "wrong value type"),
        (_doc(allow(Resource="execute-api:/${aws:username")), "Statement[0].Resource", "unterminated"),
        (
            _doc(allow(Resource="execute-api:/prod/GET/${bad var}")),
            "Statement[0].Resource",
            "malformed policy variable",
        ),
        # Principal
        (_doc({k: v for k, v in allow().items() if k != "Principal"}), "Statement[0]", "needs Principal"),
        (_doc(allow(Principal={"AWS": "12345"})), "Statement[0].Principal.AWS", "malformed principal"),
        (_doc(allow(Principal={"AWS": ["*", "arn:aws:iam::*:root"]})), "Statement[0].Principal.AWS[1]", "wildcards"),
        (_doc(allow(Principal={"Federated": "idp*"})), "Statement[0].Principal.Federated", "wildcards"),
        (_doc(allow(Principal={"Users": "alice"})), "Statement[0].Principal.Users", "unknown principal type"),
        (_doc(allow(Principal="alice")), "Statement[0].Principal", "wrong value type"),
        (_doc(allow(NotPrincipal={"AWS": "123456789012"})), "Statement[0].NotPrincipal", "not both"),
    ],
)
def test_document_mistakes(doc: Any, path: str, fragment: str) -> None:
    issue = _one(doc)
    assert issue.field == path
    assert fragment in issue.message
    assert issue.line >= 1 and issue.column >= 1


@pytest.mark.parametrize(
    ("condition", "path", "fragment"),
    [
        ({"IpAddres": {"aws:SourceIp": "10.0.0.0/8"}}, "Statement[1].Condition.IpAddres", "unknown condition operator"),
        ({"ForSomeValues:StringLike": {"jwt:scope": "a"}}, "Statement[1].Condition.ForSomeValues:StringLike", "set"),
        ({"NullIfExists": {"jwt:sub": "true"}}, "Statement[1].Condition.NullIfExists", "Null cannot"),
        ({"ForAnyValue:Null": {"jwt:sub": "true"}}, "Statement[1].Condition.ForAnyValue:Null", "Null cannot"),
        ({"IpAddress": {"aws:SourceIp": "10.0.0.300/8"}}, "Statement[1].Condition.IpAddress.aws:SourceIp", "bad CIDR"),
        (
            {"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "fe80::/129"]}},
            "Statement[1].Condition.NotIpAddress.aws:SourceIp[1]",
            "bad CIDR",
        ),
        (
            {"NumericLessThan": {"request:header/x": "ten"}},
            "Statement[1].Condition.NumericLessThan.request:header/x",
            "not a number",
        ),
        (
            {"DateLessThan": {"aws:CurrentTime": "tomorrow"}},
            "Statement[1].Condition.DateLessThan.aws:CurrentTime",
            "ISO 8601",
        ),
        ({"Bool": {"aws:SecureTransport": "yes"}}, "Statement[1].Condition.Bool.aws:SecureTransport", "true or false"),
        ({"Null": {"jwt:sub": "maybe"}}, "Statement[1].Condition.Null.jwt:sub", "true or false"),
        (
            {"BinaryEquals": {"request:header/x": "***"}},
            "Statement[1].Condition.BinaryEquals.request:header/x",
            "base64",
        ),
        (
            {"ArnLike": {"aws:PrincipalArn": "user/alice"}},
            "Statement[1].Condition.ArnLike.aws:PrincipalArn",
            "malformed ARN",
        ),
        (
            {"StringEquals": {"aws:SourceVpce": {"a": 1}}},
            "Statement[1].Condition.StringEquals.aws:SourceVpce",
            "wrong value type",
        ),
        (
            {"StringEquals": {"aws:SourceVpce": [None]}},
            "Statement[1].Condition.StringEquals.aws:SourceVpce[0]",
            "wrong value type",
        ),
        (
            {"StringEquals": {"aws:SourceVpce": []}},
            "Statement[1].Condition.StringEquals.aws:SourceVpce",
            "at least one",
        ),
        (
            {"StringEquals": {"SourceVpce": "v"}},
            "Statement[1].Condition.StringEquals.SourceVpce",
            "malformed condition key",
        ),
        ({"StringEquals": "vpce-1"}, "Statement[1].Condition.StringEquals", "wrong value type"),
        (
            {"StringEquals": {"jwt:sub": "${jwt:sub, missing-quotes}"}},
            "Statement[1].Condition.StringEquals.jwt:sub",
            "variable",
        ),
        ("IpAddress", "Statement[1].Condition", "wrong value type"),
    ],
)
def test_condition_mistakes(condition: Any, path: str, fragment: str) -> None:
    issue = _one(_cond(condition))
    assert issue.field == path
    assert fragment in issue.message


def test_identity_policy_must_not_name_a_principal() -> None:
    issue = _one(_doc(allow()), kind="identity")
    assert issue.field == "Statement[0].Principal"
    assert "identity policy" in issue.message


def test_line_and_column_point_at_the_value() -> None:
    text = (
        "{\n"
        '  "Version": "2012-10-17",\n'
        '  "Statement": [\n'
        '    {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "*",\n'
        '     "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}}}\n'
        "  ]\n"
        "}\n"
    )
    issue = _one(text)
    assert (issue.line, issue.column) == (5, 50)
    assert str(issue).startswith("policies/resource.json:5:50: Statement[0].Condition.IpAddress.aws:SourceIp: bad CIDR")


def test_single_statement_object_is_accepted_and_paths_say_so() -> None:
    doc = {"Version": "2012-10-17", "Statement": allow(Effect="Permit")}
    issue = _one(doc)
    assert issue.field == "Statement.Effect"


def test_every_mistake_is_reported_at_once() -> None:
    doc = _doc(allow(Effect="allow"), allow(Action="nope", Condition={"Foo": {"a:b": "c"}}))
    fields = {issue.field for issue in _errors(doc)}
    assert fields == {"Statement[0].Effect", "Statement[1].Action", "Statement[1].Condition.Foo"}


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ('{"Version": "2012-10-17",\n "Statement": [}', 2, 16, "unexpected character"),
        ('{"Version": "2012-10-17", "Version": "2012-10-17"}', 1, 27, "duplicate key 'Version'"),
        ('{"Statement": []} trailing', 1, 19, "after the end"),
        ('{"Statement": ["\\x"]}', 1, 16, "bad string"),
        ("", 1, 1, "unexpected end"),
        ("[" * 100, 1, 34, "nested deeper"),
    ],
)
def test_invalid_json(text: str, line: int, column: int, fragment: str) -> None:
    issue = _one(text)
    assert (issue.line, issue.column) == (line, column)
    assert "invalid JSON" in issue.message and fragment in issue.message


def test_size_limit_counts_without_whitespace() -> None:
    padding = "x" * (RESOURCE_POLICY_MAX - 400)
    small = _doc(allow(Sid="A"), allow(Condition={"StringEquals": {"request:header/x": padding}}))
    parse_policy(json.dumps(small, indent=8), kind="resource", api=API)  # indentation does not count
    big = _doc(allow(), allow(Condition={"StringEquals": {"request:header/x": padding + "x" * 600}}))
    issue = _one(big)
    assert issue.field == "" and "limit is 8192" in issue.message
    identity = {
        "Version": "2012-10-17",
        "Statement": [{k: v for k, v in s.items() if k != "Principal"} for s in big["Statement"]],
    }
    parse_policy(json.dumps(identity), kind="identity", api=API)  # the limit is for resource policies
    parse_policy(json.dumps(big), kind="resource", api=API, max_size=None)
    assert "limit is 100" in _errors(_doc(allow()), max_size=100)[0].message


@pytest.mark.parametrize(
    ("statement", "path", "fragment"),
    [
        (allow(Action="s3:GetObject"), "Statement[1].Action", "never matches"),
        (allow(Action=None, NotAction="execute-api:*"), "Statement[1].NotAction", "never matches"),
        (allow(Resource=None, NotResource="*"), "Statement[1].NotResource", "never matches"),
        (allow(Resource="arn:aws:s3:::bucket/*"), "Statement[1].Resource", "no Resource names this API"),
        (
            allow(Resource="arn:aws:execute-api:us-east-1:123456789012:otherapi/*"),
            "Statement[1].Resource",
            "no Resource",
        ),
        (
            allow(Resource="arn:aws:execute-api:eu-west-1:123456789012:a1b2c3d4e5/*"),
            "Statement[1].Resource",
            "no Resource",
        ),
        (allow(Resource="execute-api:/dev/GET/*"), "Statement[1].Resource", "no Resource"),
        (allow(Principal=None, NotPrincipal="*"), "Statement[1].NotPrincipal", "excludes everyone"),
        (allow(Principal={"CanonicalUser": "79a59df900b949e55d96a1e698fbaced"}), "Statement[1].Principal", "S3-only"),
        (
            allow(Condition={"StringEquals": {"aws:SourceIP6": "x"}}),
            "Statement[1].Condition.StringEquals.aws:SourceIP6",
            "not a key AWS defines",
        ),
    ],
)
def test_warnings(statement: dict[str, Any], path: str, fragment: str) -> None:
    cleaned = {k: v for k, v in statement.items() if v is not None}
    compiled = parse_policy(json.dumps(_doc(allow(), cleaned), indent=2), "p.json", api=API)
    assert any(w.field == path and fragment in w.message for w in compiled.warnings), compiled.warnings


@pytest.mark.parametrize(
    ("condition", "path", "fragment"),
    [
        (
            {"Null": {"jwt:sub": "true"}, "StringEquals": {"jwt:sub": "x"}},
            "Statement[1].Condition.StringEquals.jwt:sub",
            "Null requires jwt:sub to be absent",
        ),
        (
            {"DateGreaterThan": {"aws:CurrentTime": "2026-02-01"}, "DateLessThan": {"aws:CurrentTime": "2026-01-01"}},
            "Statement[1].Condition.DateLessThan.aws:CurrentTime",
            "window on aws:CurrentTime is empty",
        ),
        (
            {"NumericGreaterThan": {"aws:EpochTime": 100}, "NumericLessThanEquals": {"aws:EpochTime": 100}},
            "Statement[1].Condition.NumericLessThanEquals.aws:EpochTime",
            "is empty",
        ),
    ],
)
def test_contradictory_conditions_warn(condition: dict[str, Any], path: str, fragment: str) -> None:
    compiled = parse_policy(json.dumps(_doc(allow(), allow(Condition=condition)), indent=2), "p.json", api=API)
    assert any(w.field == path and fragment in w.message for w in compiled.warnings), compiled.warnings
    assert all(w.line > 1 for w in compiled.warnings)


@pytest.mark.parametrize(
    "condition",
    [
        {"Null": {"jwt:sub": "true"}, "StringNotEquals": {"jwt:sub": "x"}},  # negated: fine when absent
        {"Null": {"jwt:sub": "true"}, "StringEqualsIfExists": {"jwt:sub": "x"}},
        {"Null": {"jwt:sub": "false"}, "StringEquals": {"jwt:sub": "x"}},
        {"DateGreaterThan": {"aws:CurrentTime": "2026-01-01"}, "DateLessThan": {"aws:CurrentTime": "2026-02-01"}},
        {"NumericGreaterThan": {"jwt:n": 5}, "NumericLessThan": {"jwt:n": 3}},  # multi-valued keys may satisfy both
    ],
)
def test_satisfiable_conditions_do_not_warn(condition: dict[str, Any]) -> None:
    compiled = parse_policy(json.dumps(_doc(allow(Condition=condition))), "p.json", api=API)
    assert compiled.warnings == ()


def test_no_warnings_for_a_clean_policy() -> None:
    compiled = parse_policy(
        json.dumps(_doc(allow(Resource=["execute-api:/prod/GET/*", "arn:aws:execute-api:*:*:*/prod/*"]))), api=API
    )
    assert compiled.warnings == ()


def test_variables_without_version_are_literal_and_warned() -> None:
    doc = {"Statement": [allow(Resource="execute-api:/prod/GET/${aws:username}")]}
    compiled = parse_policy(json.dumps(doc), api=API)
    assert compiled.document.variables is False
    assert any("taken literally" in w.message for w in compiled.warnings)
    assert compiled.context_keys == frozenset()


def test_empty_statement_list_warns() -> None:
    compiled = parse_policy(json.dumps(_doc()), api=API)
    assert any(w.field == "Statement" for w in compiled.warnings)


def test_load_policy_from_a_file_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "resource.json"
    file.write_text(json.dumps(_doc(allow(Effect="Alow")), indent=2), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_policy(file, api=API)
    assert caught.value.issues[0].file == str(file)
    assert str(caught.value).startswith(f"{file}:5:")
    file.write_text(json.dumps(_doc(allow())), encoding="utf-8")
    assert load_policy(str(file), api=API).source == str(file)
    with pytest.raises(ConfigError, match="cannot read policy"):
        load_policy(tmp_path / "missing.json")


def test_load_policy_tolerates_a_byte_order_mark(tmp_path: Path) -> None:
    file = tmp_path / "bom.json"
    file.write_bytes(b"\xef\xbb\xbf" + json.dumps(_doc(allow())).encode())
    assert len(load_policy(file, api=API).statements) == 1


def test_identity_policies_may_name_other_apis_without_warnings() -> None:
    statement = {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "arn:aws:execute-api:*:*:other/*"}
    compiled = parse_policy(json.dumps(_doc(statement)), kind="identity", api=API)
    assert compiled.warnings == ()
    s3 = {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "arn:aws:s3:::bucket"}
    assert parse_policy(json.dumps(_doc(s3)), kind="identity", api=API).warnings


def test_load_policy_accepts_text_with_a_source_name() -> None:
    compiled = load_policy(json.dumps(_doc(allow())), source="inline", api=API)
    assert compiled.source == "inline" and len(compiled.statements) == 1


def test_positions_for_deeply_nested_but_valid_json_do_not_crash() -> None:
    deep: Any = "x"
    for _ in range(40):
        deep = [deep]
    issue = _one(_doc(allow(Condition={"StringEquals": {"jwt:sub": deep}})))
    assert issue.field == "Statement[0].Condition.StringEquals.jwt:sub[0]"
    assert issue.line > 1


def test_nan_is_not_json() -> None:
    issue = _one('{"Version": "2012-10-17", "Statement": NaN}')
    assert (issue.line, issue.column) == (1, 40) and "invalid JSON" in issue.message
