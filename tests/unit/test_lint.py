"""`validate` warns about routes that can never be allowed and policy statements that match no route (#19).

Every warning asserted here is checked against the server's own decision (`check` logic through the pipeline)
where it says "never allowed", and each kind has configs that must not warn.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.config import default_config, load_config
from sidecar.lint import ANY_SEGMENT, ANY_TEXT, globs_intersect, lint, route_pattern
from sidecar.offline import evaluate, parse_http_request
from sidecar.routes import parse_match
from sidecar.runtime import compile_runtime
from sidecar.settings import ApiSettings
from tests.unit.authorizers.jwt.jwt_testkit import public_jwk, rsa_key
from tests.unit.validate_testkit import run_validate

API = 'api: {id: a1, stage: prod, account: "123456789012", region: us-east-1}\n'
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
ALICE = "arn:aws:iam::123456789012:user/alice"


def statement(resource: str | list[str], principal: Any = "*", effect: str = "Allow", **extra: Any) -> dict[str, Any]:
    return {"Effect": effect, "Principal": principal, "Action": "execute-api:Invoke", "Resource": resource, **extra}


def write_policy(tmp_path: Path, *statements: dict[str, Any]) -> None:
    document = {"Version": "2012-10-17", "Statement": list(statements)}
    (tmp_path / "policy.json").write_text(json.dumps(document, indent=2) + "\n")


def write_credentials(tmp_path: Path, policies: list[dict[str, Any]] | None = None) -> None:
    entry = {"access_key_id": "AKIDEXAMPLE", "secret_access_key": SECRET, "principal_arn": ALICE}
    if policies is not None:
        entry["policies"] = [{"Version": "2012-10-17", "Statement": policies}]
    (tmp_path / "creds.yaml").write_text(json.dumps({"credentials": [entry]}))


def validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, *extra: str) -> tuple[int, list[str]]:
    return run_validate(tmp_path, capsys, API + textwrap.dedent(text), *extra)


def decide(tmp_path: Path, method: str, path: str) -> tuple[str, str]:
    """What the server decides on an unsigned, unauthenticated request (the `check` command's evaluation)."""
    config = load_config(tmp_path / "cfg.yaml")
    check = parse_http_request(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    result = asyncio.run(evaluate(config, check, None))
    return result.decision.reason, "allow" if result.decision.allowed else "deny"


# -- a none route under a resource policy ---------------------------------------------------------------------

NONE_ROUTES = """\
resource_policy: policy.json
authorizers:
  open: {type: none}
routes:
  - {match: "GET /pets/{id}", authorizer: open}
"""


def test_a_none_route_no_allow_can_cover_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_policy(
        tmp_path,
        statement("execute-api:/prod/GET/pets/*", principal={"AWS": "123456789012"}),  # not anonymous callers
        statement("execute-api:/prod/POST/pets/*"),  # another method
        statement("execute-api:/prod/GET/pets/*", effect="Deny"),
    )
    code, lines = validate(tmp_path, capsys, NONE_ROUTES)
    assert code == 0
    assert lines == [
        "warning: DIR/cfg.yaml:6:13: routes[0].match: this route is never allowed: its callers are anonymous "
        "(authorizer 'open'), and no Allow statement of DIR/policy.json with Principal \"*\" covers it",
        "warning: DIR/policy.json:16:19: Statement[1].Resource: this statement never matches a route of this "
        "config: no Resource names one (routes: GET /pets/{id}; their ARNs: "
        "arn:aws:execute-api:us-east-1:123456789012:a1/prod/METHOD/path)",
        "DIR/cfg.yaml: valid (2 warnings)",
    ]
    assert decide(tmp_path, "GET", "/pets/1") == ("AccessDenied", "deny")
    assert main(["validate", "--strict", str(tmp_path / "cfg.yaml")]) == 1
    assert capsys.readouterr().err.splitlines()[-1].endswith("cfg.yaml: valid (2 warnings), refused by --strict")


@pytest.mark.parametrize(
    "allow",
    [
        statement("execute-api:/prod/GET/pets/*"),
        statement("execute-api:/prod/*/pets/*", principal={"AWS": "*"}),
        statement("execute-api:/*", principal={"AWS": ["*", "123456789012"]}),
        statement("*"),
        statement("execute-api:/prod/GET/pets/7", Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}),
        statement("execute-api:/prod/GET/pets/${aws:username}"),
        {"Effect": "Allow", "NotPrincipal": {"AWS": ALICE}, "Action": "execute-api:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": "*", "NotAction": "s3:*", "NotResource": "execute-api:/prod/POST/*"},
    ],
    ids=["exact", "aws-star", "star-in-list", "any-resource", "conditions-ignored", "variable", "notprincipal", "not"],
)
def test_a_none_route_an_allow_could_cover_does_not_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], allow: dict[str, Any]
) -> None:
    write_policy(tmp_path, allow)
    code, lines = validate(tmp_path, capsys, NONE_ROUTES)
    assert code == 0 and lines[-1].startswith("DIR/cfg.yaml: valid")
    assert not [line for line in lines if "never allowed" in line or "never matches" in line], lines


def test_a_none_route_without_a_resource_policy_is_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = NONE_ROUTES.replace("resource_policy: policy.json\n", "")
    assert validate(tmp_path, capsys, text) == (0, ["DIR/cfg.yaml: valid"])


def test_a_none_route_with_scopes_warns_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_policy(tmp_path, statement("execute-api:/prod/POST/nothing"))
    text = NONE_ROUTES.replace("authorizer: open}", "authorizer: open, scopes: [pets.read]}")
    code, lines = validate(tmp_path, capsys, text)
    assert code == 0
    assert lines[0] == (
        "warning: DIR/cfg.yaml:6:57: routes[0].scopes: this route is never allowed: its callers are anonymous "
        "(authorizer 'open') and carry no scopes"
    )
    assert [line for line in lines if "routes[0]" in line] == lines[:1]  # one reason, not every reason
    assert decide(tmp_path, "GET", "/pets/1") == ("InsufficientScope", "deny")


def test_a_deny_route_is_meant_to_be_closed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_policy(tmp_path, statement("execute-api:/prod/GET/admin/*", effect="Deny"))
    text = """\
    resource_policy: policy.json
    authorizers:
      closed: {type: deny}
    routes:
      - {match: "ANY /admin/{proxy+}", authorizer: closed}
    """
    assert validate(tmp_path, capsys, text) == (0, ["DIR/cfg.yaml: valid"])


# -- sigv4 routes ------------------------------------------------------------------------------------------------

SIGV4_ROUTES = """\
authorizers:
  iam: {type: sigv4, credentials: {file: creds.yaml}}
routes:
  - {match: "GET /orders/{id}", authorizer: iam}
"""


def test_a_sigv4_route_nothing_can_allow_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_credentials(
        tmp_path, [{"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "execute-api:/prod/GET/users/*"}]
    )
    code, lines = validate(tmp_path, capsys, SIGV4_ROUTES)
    assert (code, lines) == (
        0,
        [
            "warning: DIR/cfg.yaml:5:13: routes[0].match: this route is never allowed for SigV4 callers: no "
            "credential in DIR/creds.yaml has an identity policy allowing it, and there is no resource policy",
            "DIR/cfg.yaml: valid (1 warning)",
        ],
    )
    write_credentials(tmp_path)  # no identity policy at all
    assert validate(tmp_path, capsys, SIGV4_ROUTES)[1][0].endswith("there is no resource policy")


@pytest.mark.parametrize(
    ("identity", "resource"),
    [
        ([{"Effect": "Allow", "Action": "execute-api:*", "Resource": "execute-api:/prod/GET/orders/*"}], None),
        ([{"Effect": "Allow", "Action": "*", "Resource": "*"}], None),
        (None, statement("execute-api:/prod/GET/orders/*", principal={"AWS": "123456789012"})),
        (None, statement("execute-api:/prod/*", principal={"AWS": ALICE})),
    ],
    ids=["identity", "identity-star", "resource-account", "resource-arn"],
)
def test_a_sigv4_route_something_could_allow_does_not_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], identity: list[dict[str, Any]] | None, resource: Any
) -> None:
    write_credentials(tmp_path, identity)
    text = SIGV4_ROUTES
    if resource is not None:
        write_policy(tmp_path, resource)
        text = "resource_policy: policy.json\n" + text
    assert validate(tmp_path, capsys, text) == (0, ["DIR/cfg.yaml: valid"])


def test_a_sigv4_route_a_federated_allow_cannot_cover_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_credentials(tmp_path)
    write_policy(tmp_path, statement("execute-api:/prod/GET/orders/*", principal={"Federated": "idp.example.test"}))
    code, lines = validate(tmp_path, capsys, "resource_policy: policy.json\n" + SIGV4_ROUTES)
    assert code == 0
    assert lines[0].endswith(
        "routes[0].match: this route is never allowed for SigV4 callers: no credential in DIR/creds.yaml has an "
        "identity policy allowing it, and no Allow statement of DIR/policy.json covers it"
    )


# -- private APIs ------------------------------------------------------------------------------------------------


def test_a_private_api_without_a_resource_policy_warns_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = """\
    policy: {private_api: true}
    authorizers:
      open: {type: none}
    routes:
      - {match: "GET /a", authorizer: open}
      - {match: "GET /b", authorizer: open}
    """
    code, lines = validate(tmp_path, capsys, text)
    assert (code, lines) == (
        0,
        [
            "warning: DIR/cfg.yaml:2:23: policy.private_api: every route is denied: a private API allows only what "
            "the resource policy allows, and there is none",
            "DIR/cfg.yaml: valid (1 warning)",
        ],
    )
    assert decide(tmp_path, "GET", "/a") == ("AccessDenied", "deny")


def test_a_token_route_of_a_private_api_warns_when_no_allow_covers_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [public_jwk(rsa_key(), "k1")]}))
    write_policy(tmp_path, statement("execute-api:/prod/GET/public/*"))
    text = """\
    policy: {private_api: true}
    resource_policy: policy.json
    authorizers:
      corp: {type: jwt, issuer: "https://idp.example.test", audiences: [orders], jwks_file: jwks.json}
    routes:
      - {match: "GET /public/{proxy+}", authorizer: corp}
      - {match: "GET /orders", authorizer: corp}
    """
    code, lines = validate(tmp_path, capsys, text)
    assert (code, lines) == (
        0,
        [
            "warning: DIR/cfg.yaml:8:13: routes[1].match: this route is never allowed: a private API allows only "
            "what the resource policy allows, and no Allow statement of DIR/policy.json covers this route",
            "DIR/cfg.yaml: valid (1 warning)",
        ],
    )


# -- statements that match no route -------------------------------------------------------------------------


def test_statements_that_match_no_route_warn_with_label_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(
        tmp_path,
        statement("execute-api:/prod/GET/pets/*", Sid="Pets"),
        statement(["execute-api:/prod/GET/pet/*", "execute-api:/prod/POST/pets"], Sid="PathTypo"),
        statement("execute-api:/prd/GET/pets/*", Sid="StageTypo"),
        statement("execute-api:/prod/DELETE/admin/*", effect="Deny"),
    )
    text = NONE_ROUTES.replace("  open: {type: none}\n", "  open: {type: none}\n  closed: {type: deny}\n")
    text += '  - {match: "ANY /admin/{proxy+}", authorizer: closed}\n'
    code, lines = validate(tmp_path, capsys, text)
    assert code == 0
    assert lines == [
        "warning: DIR/policy.json:15:19: Statement[1].Resource: statement 'PathTypo' never matches a route of this "
        "config: no Resource names one (routes: GET /pets/{id}, ANY /admin/{proxy+}; their ARNs: "
        "arn:aws:execute-api:us-east-1:123456789012:a1/prod/METHOD/path)",
        "warning: DIR/policy.json:25:19: Statement[2].Resource: this statement never matches: no Resource names "
        "this API (its resources are arn:aws:execute-api:us-east-1:123456789012:a1/prod/METHOD/path)",
        "DIR/cfg.yaml: valid (2 warnings)",
    ]


@pytest.mark.parametrize(
    ("match", "resource"),
    [
        ("GET /pets/{id}", "execute-api:/prod/GET/pets/7"),
        ("GET /pets/{id}", "execute-api:/prod/GET/pets/"),
        ("GET /pets", "execute-api:/prod/GET/pets/"),
        ("ANY /pets", "execute-api:/prod/DELETE/pets"),
        ("ANY /files/{proxy+}", "execute-api:/prod/PUT/files/a/b/c.txt"),
        ("$default", "execute-api:/prod/PATCH/anything/at/all"),
        ("GET /", "execute-api:/prod/GET/"),
        ("GET /pets/{id}", "execute-api:/prod/G?T/pets/*"),
        ("GET /pets/{id}", "arn:aws:execute-api:*:123456789012:a1/*"),
        ("GET /pets/{id}", "arn:aws:execute-api:*"),
    ],
)
def test_statements_that_could_match_a_route_do_not_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], match: str, resource: str
) -> None:
    write_policy(tmp_path, statement(resource, effect="Deny"), statement("*"))
    text = NONE_ROUTES.replace("GET /pets/{id}", match)
    assert validate(tmp_path, capsys, text) == (0, ["DIR/cfg.yaml: valid"])


def test_the_default_config_has_no_warnings() -> None:
    assert lint(compile_runtime(default_config())) == []


# -- the matching itself ---------------------------------------------------------------------------------------

API_SETTINGS = ApiSettings(id="a1", stage="prod", account="123456789012", region="us-east-1")


@pytest.mark.parametrize(
    ("glob", "match", "expected"),
    [
        ("a1/prod/GET/pets/*", "GET /pets/{id}", True),
        ("a1/prod/GET/pets", "GET /pets/{id}", False),
        ("a1/prod/GET/pets/7/x", "GET /pets/{id}", False),  # a {param} is one segment
        ("a1/prod/GET/pets/7/x", "GET /pets/{proxy+}", True),
        ("a1/prod/GET/pet/*", "ANY /admin/{proxy+}", False),  # the method is one segment too
        ("a1/prod/*/admin/x", "ANY /admin/{proxy+}", True),
        ("a1/prod/???/admin/x", "GET /admin/{proxy+}", True),
        ("a1/prod/????/admin/x", "GET /admin/{proxy+}", False),
        ("a1/*/GET/*", "$default", True),
        ("a1/prod/GET/pets*", "GET /pets", True),
        ("*", "GET /pets", True),
        ("", "GET /pets", False),
    ],
)
def test_globs_intersect(glob: str, match: str, expected: bool) -> None:
    assert globs_intersect(glob, route_pattern(API_SETTINGS, parse_match(match))) is expected


def test_route_patterns() -> None:
    assert route_pattern(API_SETTINGS, parse_match("ANY /a/{b}/{c+}")) == (
        *"a1/prod/",
        ANY_SEGMENT,
        *"/a/",
        ANY_SEGMENT,
        "/",
        ANY_TEXT,
    )
    assert route_pattern(API_SETTINGS, parse_match("$default")) == (*"a1/prod/", ANY_SEGMENT, "/", ANY_TEXT)
