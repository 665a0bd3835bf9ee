"""Errors like a linter's (#19): one mistake, one error; "did you mean"; plain words; every problem at once.

Each test runs `authz-sidecar validate` on real files (`sidecar.cli.main`) and asserts what a user reads on stderr.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.cli import main
from tests.unit.authorizers.jwt.jwt_testkit import public_jwk, rsa_key
from tests.unit.validate_testkit import run_validate

LIBRARY_WORDING = (
    "Value error",
    "Field required",
    "Input should",
    "Extra inputs",
    "String should",
    "Tuple should",
    "List should",
    "validation error",
    "Assertion failed",
    "dict[str,any]",
    "[key]",
)
"""pydantic's own phrases (and union member names it puts in locations): never shown to a user."""


def validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, *extra: str) -> tuple[int, list[str]]:
    return run_validate(tmp_path, capsys, text, *extra)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- one mistake, one error ------------------------------------------------------------------------------------


def test_an_invalid_authorizer_is_one_error_not_one_per_route(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = validate(
        tmp_path,
        capsys,
        """\
        authorizers:
          corp:
            type: jwt
            issuer: https://idp.example.test
            audience: [orders]
        routes:
          - {match: "GET /a", authorizer: corp}
          - {match: "GET /b", authorizer: corp}
          - {match: "GET /c", authorizer: corp, replay_guard: true}
        """,
    )
    assert code == 1
    assert lines == ["DIR/cfg.yaml:5:5: authorizers.corp.audience: unknown key: did you mean `audiences`?"]


def test_an_unknown_type_or_a_broken_section_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = validate(
        tmp_path,
        capsys,
        """\
        authorizers:
          corp: {type: jwtt}
          other: nonsense
        routes:
          - {match: "GET /a", authorizer: corp}
          - {match: "GET /b", authorizer: other}
          - {match: "GET /c", authorizer: nobody}
        """,
    )
    assert code == 1
    assert lines == [
        "DIR/cfg.yaml:2:16: authorizers.corp.type: unknown authorizer type 'jwtt': did you mean `jwt`?",
        "DIR/cfg.yaml:3:10: authorizers.other: expected a mapping with at least a `type`",
        "DIR/cfg.yaml:7:35: routes[2].authorizer: unknown authorizer 'nobody' (corp, other)",
    ]
    code, lines = validate(tmp_path, capsys, 'authorizers: [a]\nroutes:\n  - {match: "GET /a", authorizer: a}\n')
    assert lines == ["DIR/cfg.yaml:1:14: authorizers: expected a mapping of name -> settings"]


def test_an_invalid_redis_connection_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "creds.yaml", "credentials: []\n")
    code, lines = validate(
        tmp_path,
        capsys,
        """\
        redis:
          default: {url: "redis://127.0.0.1:6379/0", timeout_ms: 0}
        cache:
          redis: {signing_key: k}
        authorizers:
          iam: {type: sigv4, credentials: {file: creds.yaml}, replay_redis: default}
          iam2: {type: sigv4, credentials: {file: creds.yaml}, replay_redis: defualt}
        """,
    )
    assert code == 1
    assert lines == [
        "DIR/cfg.yaml:2:58: redis.default.timeout_ms: must be greater than 0",
        "DIR/cfg.yaml:7:70: authorizers.iam2.replay_redis: names Redis connection 'defualt', which `redis:` does "
        "not define (default): did you mean `default`?",
    ]


def test_a_broken_section_does_not_hide_the_others(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = validate(
        tmp_path,
        capsys,
        """\
        listen: {grpc: 9191}
        plugins: sidecar
        authorizers:
          open: {type: none}
        routes:
          - {match: "GET /a", authorizer: opn}
          - {match: "GET /a", authorizer: open}
        """,
    )
    assert code == 1
    assert lines == [
        "DIR/cfg.yaml:1:16: listen.grpc: expected a string",
        "DIR/cfg.yaml:2:10: plugins: expected a list of Python module names",
        "DIR/cfg.yaml:6:35: routes[0].authorizer: unknown authorizer 'opn' (open): did you mean `open`?",
        "DIR/cfg.yaml:7:13: routes[1].match: duplicates routes[0]",
    ]


# -- did you mean ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "resource_polciy: p.json\n",
            "DIR/cfg.yaml:1:1: resource_polciy: unknown key: did you mean `resource_policy`?",
        ),
        ("listen: {admn: '127.0.0.1:1'}\n", "DIR/cfg.yaml:1:10: listen.admn: unknown key: did you mean `admin`?"),
        (
            "cache: {redis: {signing_ky: x, url: 'redis://h:1'}}\n",
            "DIR/cfg.yaml:1:17: cache.redis.signing_ky: unknown key: did you mean `signing_key`?",
        ),
        (
            "redis: {default: {url: 'redis://h:1', timout_ms: 5}}\n",
            "DIR/cfg.yaml:1:39: redis.default.timout_ms: unknown key: did you mean `timeout_ms`?",
        ),
        (
            "authorizers:\n  a: {type: deny, mesage: closed}\n",
            "DIR/cfg.yaml:2:19: authorizers.a.mesage: unknown key: did you mean `message`?",
        ),
        (
            "authorizers:\n  a: {typ: none}\n",
            "DIR/cfg.yaml:2:7: authorizers.a.typ: unknown key: did you mean `type`?",
        ),
        (
            "authorizers:\n  a: {type: sigv4, credentails: {file: c.yaml}}\n",
            "DIR/cfg.yaml:2:20: authorizers.a.credentails: unknown key: did you mean `credentials`?",
        ),
        (
            "authorizers:\n  a: {type: sigv4, credentials: {fil: c.yaml}}\n",
            "DIR/cfg.yaml:2:34: authorizers.a.credentials.fil: unknown key: did you mean `file`?",
        ),
        (
            "authorizers:\n  a: {type: cognito, region: us-east-1, user_pool_id: us-east-1_A, client_id: [x]}\n",
            "DIR/cfg.yaml:2:68: authorizers.a.client_id: unknown key: did you mean `client_ids`?",
        ),
        (
            "authorizers:\n  a: {type: none}\nroutes:\n  - {match: 'GET /', authoriser: a}\n",
            "DIR/cfg.yaml:4:22: routes[0].authoriser: unknown key: did you mean `authorizer`?",
        ),
        (
            "authorizers:\n  a: {type: none}\nroutes:\n  - {match: 'GET /', authorizer: a, cache_tl: 1}\n",
            "DIR/cfg.yaml:4:37: routes[0].cache_tl: unknown key: did you mean `cache_ttl`?",
        ),
    ],
)
def test_unknown_keys_close_to_a_known_one_say_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    """And the key it was meant to be is not also reported missing (`authoriser`, `client_id`)."""
    code, lines = validate(tmp_path, capsys, text)
    assert (code, lines) == (1, [expected])


def test_an_unknown_key_far_from_any_says_only_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = validate(tmp_path, capsys, "listen: {colour: red}\n")
    assert (code, lines) == (1, ["DIR/cfg.yaml:1:10: listen.colour: unknown key"])


# -- plain words ------------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    "routes:\n  - {authorizer: a}\n",
    "routes:\n  - nope\n",
    "routes: nope\n",
    "cache: {ttl: soon, local: {max_entries: 1.5}}\n",
    "cache: {local: {max_entries: -1, enabled: maybe}}\n",
    "server: {gc_threshold: [1, 2], grpc_engine: fast}\n",
    "http: {flavor: apache, path_prefix: authz, trusted_peers: [not-an-ip]}\n",
    "http: {max_body_bytes: 4096, max_buffered_bytes: 2048}\n",
    "api: {id: 'a b', account: '12'}\n",
    "listen: {grpc: nope, admin: [1]}\n",
    "policy: {max_resource_policy_size: 10}\n",
    "redis: {default: {url: 3}}\n",
    "redis: {default: {timeout_ms: 1}}\n",
    "plugins: [no.such.module]\n",
    "authorizers:\n  a: {type: jwt}\n",
    "authorizers:\n  a: {type: jwt, issuer: 'https://i.example', audiences: [], leeway: -1, algorithms: [HS256]}\n",
    "authorizers:\n  a: {type: jwt, issuer: 'https://i.example', audiences: [x], identity_source: 'body.token'}\n",
    "authorizers:\n  a: {type: jwt, issuer: 'https://i.example', audiences: [x], claim_to_headers: {sub: 3}}\n",
    "authorizers:\n  a: {type: cognito, region: mars, user_pool_id: nope, client_ids: x, token_use: [refresh]}\n",
    "authorizers:\n  a: {type: sigv4, credentials: {file: c.yaml}, service: 'Execute API', regions: ['']}\n",
    "authorizers:\n  a: {type: sigv4, credentials: {file: c.yaml}, region: a, regions: [b], algorithms: []}\n",
    "authorizers:\n  a: {type: sigv4, credentials: {file: c.yaml, reload_interval: -1}, deny_status: 500}\n",
]


@pytest.mark.parametrize("text", BAD_CONFIGS)
def test_no_validation_library_wording(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    code, lines = validate(tmp_path, capsys, text)
    assert code == 1 and lines
    for line in lines:
        assert line.startswith("DIR/cfg.yaml:"), line
        assert not any(phrase in line for phrase in LIBRARY_WORDING), line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("routes:\n  - {authorizer: a}\n", "DIR/cfg.yaml:2:5: routes[0].match: missing required key"),
        ("cache: {ttl: soon}\n", "DIR/cfg.yaml:1:14: cache.ttl: expected a number"),
        (
            "cache: {local: {max_entries: 1.5}}\n",
            "DIR/cfg.yaml:1:30: cache.local.max_entries: expected an integer (no fraction)",
        ),
        ("cache: {local: {max_entries: x}}\n", "DIR/cfg.yaml:1:30: cache.local.max_entries: expected an integer"),
        ("cache: {local: {max_entries: -1}}\n", "DIR/cfg.yaml:1:30: cache.local.max_entries: must be at least 0"),
        ("cache: {ttl: 4000}\n", "DIR/cfg.yaml:1:14: cache.ttl: must be at most 3600"),
        ("cache: {local: {enabled: maybe}}\n", "DIR/cfg.yaml:1:26: cache.local.enabled: expected true or false"),
        ("http: {flavor: apache}\n", "DIR/cfg.yaml:1:16: http.flavor: must be 'envoy', 'nginx' or 'traefik'"),
        (
            "http: {path_prefix: authz}\n",
            "DIR/cfg.yaml:1:21: http.path_prefix: must start with '/' and not end with '/' (e.g. /authz)",
        ),
        ("api: {account: '12'}\n", "DIR/cfg.yaml:1:16: api.account: an AWS account id is 12 digits"),
        ("server: {gc_threshold: [700, 10]}\n", "DIR/cfg.yaml:1:24: server.gc_threshold: too few items"),
        ("routes: [nope]\n", "DIR/cfg.yaml:1:10: routes[0]: expected a mapping"),
        ("plugins: []\nroutes: {}\n", "DIR/cfg.yaml:2:9: routes: expected a list of routes"),
        (
            "authorizers:\n  a: {type: jwt, issuer: 'https://i.example', audiences: []}\n",
            "DIR/cfg.yaml:2:58: authorizers.a.audiences: needs at least 1 item",
        ),
        (
            "authorizers:\n  a: {type: sigv4, credentials: {file: c.yaml}, service: 'Execute API'}\n",
            "DIR/cfg.yaml:2:58: authorizers.a.service: a service name is lower-case letters, digits and '-', e.g. "
            "execute-api",
        ),
    ],
)
def test_plain_words(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    code, lines = validate(tmp_path, capsys, text)
    assert (code, lines) == (1, [expected])


def test_errors_never_quote_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A value in the wrong place may be a secret: errors name where it is and what is expected, never what it is."""
    code, lines = validate(
        tmp_path,
        capsys,
        """\
        redis:
          default: {url: "redis://:hunter2@127.0.0.1:6379/0", timeout_ms: hunter2, cluster: hunter2}
        cache:
          redis: {url: [hunter2], signing_key: {hunter2: 1}}
        authorizers:
          a: {type: jwt, issuer: "https://u:hunter2@idp.example.test", audiences: [x]}
          b: {type: jwt, issuer: "https://idp.example.test", audiences: [x], jwks_uri: "http://u:hunter2@h.example"}
        """,
    )
    assert code == 1 and len(lines) == 6
    assert not any("hunter2" in line for line in lines), lines
    assert (
        "DIR/cfg.yaml:6:26: authorizers.a.issuer: must not carry credentials (user:password@): the keys are public"
        in lines
    )


# -- credentials files ------------------------------------------------------------------------------------------

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def test_every_problem_in_a_credentials_file_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "broken.json", '{"Version": "2012-10-17",\n "Statement": [{"Effect": "Allow"}]}\n')
    write(
        tmp_path,
        "creds.yaml",
        f"""\
        credential: []
        credentials:
          - access_key_id: "AK 1"
            secret_access_key: {SECRET}
            secret_access_key_env: AWS_SECRET
            principal_arn: alice
            policies:
              - {{Version: "2012-10-17", Statement: [{{Effect: Maybe, Action: "execute-api:Invoke", Resource: "*"}}]}}
              - missing.json
              - broken.json
              - 3
          - access_key_id: AK2
            principal_arn: arn:aws:iam::123456789012:user/b
            expirs: 2027-01-01
          - access_key_id: AK2
            secret_acces_key: {SECRET}
            principal_arn: arn:aws:iam::123456789012:user/c
            session_token: t
            session_token_file: t.txt
          - just a string
        """,
    )
    code, lines = validate(tmp_path, capsys, "authorizers:\n  iam: {type: sigv4, credentials: {file: creds.yaml}}\n")
    assert code == 1
    assert lines == [
        "DIR/broken.json:2:16: Statement[0]: missing Action (or NotAction)",
        "DIR/broken.json:2:16: Statement[0]: missing Resource (or NotResource)",
        "DIR/creds.yaml:1:1: credential: unknown key: did you mean `credentials`?",
        "DIR/creds.yaml:3:20: credentials[0].access_key_id: must not contain spaces or '/'",
        "DIR/creds.yaml:5:28: credentials[0].secret_access_key_env: give only one of secret_access_key, "
        "secret_access_key_env, secret_access_key_file (also secret_access_key)",
        "DIR/creds.yaml:6:20: credentials[0].principal_arn: expected an IAM or STS principal ARN, e.g. "
        "arn:aws:iam::123456789012:user/alice or arn:aws:sts::123456789012:assumed-role/Role/session",
        "DIR/creds.yaml:8:54: credentials[0].policies[0].Statement[0].Effect: unknown Effect 'Maybe': use \"Allow\" "
        'or "Deny"',
        "DIR/creds.yaml:9:9: credentials[0].policies[1]: cannot read policy file DIR/missing.json: No such file or "
        "directory",
        "DIR/creds.yaml:11:9: credentials[0].policies[3]: expected a mapping or a string",
        "DIR/creds.yaml:12:5: credentials[1]: missing required key `secret_access_key` (or secret_access_key_env, "
        "secret_access_key_file)",
        "DIR/creds.yaml:14:5: credentials[1].expirs: unknown key: did you mean `expires`?",
        "DIR/creds.yaml:15:20: credentials[2].access_key_id: duplicate access_key_id (also credentials[1])",
        "DIR/creds.yaml:16:5: credentials[2].secret_acces_key: unknown key: did you mean `secret_access_key`?",
        "DIR/creds.yaml:19:25: credentials[2].session_token_file: give only one of session_token, "
        "session_token_env, session_token_file (also session_token)",
        "DIR/creds.yaml:20:5: credentials[3]: expected a mapping",
    ]
    assert not any(SECRET in line for line in lines)


def test_credentials_file_wording_is_plain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        tmp_path,
        "creds.yaml",
        """\
        credentials:
          - {access_key_id: "", secret_access_key: "", principal_arn: 3, enabled: maybe, expires: soon}
          - {access_key_id: [x], secret_access_key: s, principal_arn: "arn:aws:iam::123456789012:user/a", user_id: ""}
        """,
    )
    code, lines = validate(tmp_path, capsys, "authorizers:\n  iam: {type: sigv4, credentials: {file: creds.yaml}}\n")
    assert code == 1
    assert lines == [
        "DIR/creds.yaml:2:21: credentials[0].access_key_id: must not be empty",
        "DIR/creds.yaml:2:44: credentials[0].secret_access_key: must not be empty",
        "DIR/creds.yaml:2:63: credentials[0].principal_arn: expected a string",
        "DIR/creds.yaml:2:75: credentials[0].enabled: expected true or false",
        "DIR/creds.yaml:2:91: credentials[0].expires: expected a date and time, e.g. 2027-01-01T00:00:00Z",
        "DIR/creds.yaml:3:21: credentials[1].access_key_id: expected a string",
        "DIR/creds.yaml:3:108: credentials[1].user_id: must not be empty",
    ]


# -- JWKS files ------------------------------------------------------------------------------------------------

JWT_CONFIG = """\
authorizers:
  corp: {type: jwt, issuer: "https://idp.example.test", audiences: [orders], jwks_file: jwks.json}
"""


def test_a_jwks_file_with_broken_json_names_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = json.dumps(public_jwk(rsa_key(), "k1"))
    write(tmp_path, "jwks.json", '{"keys": [\n  ' + key + '\n  {"kty": "RSA"}\n]}\n')
    code, lines = validate(tmp_path, capsys, JWT_CONFIG)
    assert (code, lines) == (1, ["DIR/jwks.json:3:3: invalid JSON: expected ',' or ']'"])


def test_a_jwks_file_without_a_usable_key_names_each_key_and_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    keys = [
        public_jwk(weak, "weak"),
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "EC", "crv": "P-192", "x": "AA", "y": "AA"},
    ]
    write(tmp_path, "jwks.json", '{"keys": [\n' + ",\n".join("  " + json.dumps(k) for k in keys) + "\n]}\n")
    code, lines = validate(tmp_path, capsys, JWT_CONFIG)
    assert code == 1
    assert lines == [
        "DIR/jwks.json:2:3: keys[0]: unusable key (kid 'weak'): RSA key of 1024 bits is shorter than 2048 "
        "(no key in the set is usable)",
        "DIR/jwks.json:3:3: keys[1]: unusable key (kid 'hmac'): symmetric (oct) keys are never used: HMAC tokens "
        "are not accepted (no key in the set is usable)",
        "DIR/jwks.json:4:3: keys[2]: unusable key: unsupported EC curve 'P-192' (no key in the set is usable)",
    ]


def test_a_jwks_file_with_a_skipped_key_beside_good_ones_warns_and_is_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = [public_jwk(rsa_key(), "good"), {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]
    write(tmp_path, "jwks.json", '{"keys": [\n' + ",\n".join("  " + json.dumps(k) for k in keys) + "\n]}\n")
    code, lines = validate(tmp_path, capsys, JWT_CONFIG)
    assert code == 0
    assert lines == [
        "warning: DIR/jwks.json:3:3: keys[1]: unusable key (kid 'hmac'): symmetric (oct) keys are never used: HMAC "
        "tokens are not accepted",
        "DIR/cfg.yaml: valid (1 warning)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"keys": 3}', 'DIR/jwks.json:1:10: keys: not a JWKS: expected an object with a "keys" array'),
        ("[1, 2]", 'DIR/jwks.json:1:1: not a JWKS: expected an object with a "keys" array'),
        ('{"keys": []}', "DIR/jwks.json:1:10: keys: the key set is empty: there is no key to verify tokens with"),
        ("", "DIR/jwks.json:1:1: invalid JSON: unexpected end of document"),
    ],
)
def test_a_jwks_file_that_is_not_a_key_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    write(tmp_path, "jwks.json", text)
    assert validate(tmp_path, capsys, JWT_CONFIG) == (1, [expected])


def test_a_valid_config_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = validate(
        tmp_path, capsys, "authorizers:\n  open: {type: none}\nroutes:\n  - {match: 'GET /', authorizer: open}\n"
    )
    assert (code, lines) == (0, ["DIR/cfg.yaml: valid"])


def test_a_file_a_key_names_that_cannot_be_read_is_reported_at_that_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "resource_policy: nope.json\n"
        "authorizers:\n"
        '  corp: {type: jwt, issuer: "https://i.test", audiences: [a], jwks_file: missing.json}\n'
        "routes:\n"
        '  - {match: "GET /a", authorizer: corp}\n'
    )
    assert main(["validate", str(config)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{config}:3:9: authorizers.corp: cannot read JWKS file {tmp_path}/missing.json: No such file or directory",
        f"{config}:1:18: resource_policy: cannot read the policy file {tmp_path}/nope.json: no such file",
    ]


def test_an_invalid_entrys_policies_keep_their_own_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "creds.yaml").write_text(
        "credentials:\n"
        "  - access_key_id: AKIAIOSFODNN7EXAMPLE\n"
        "    secret_access_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
        "    principal_arn: arn:aws:iam::123456789012:user/a\n"
        "    policies: [5, null, {}]\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        "authorizers:\n  iam: {type: sigv4, credentials: {file: creds.yaml}}\n"
        'routes:\n  - {match: "GET /a", authorizer: iam}\n'
    )
    assert main(["validate", str(config)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{tmp_path}/creds.yaml:5:16: credentials[0].policies[0]: expected a mapping or a string",
        f"{tmp_path}/creds.yaml:5:19: credentials[0].policies[1]: expected a mapping or a string",
        f"{tmp_path}/creds.yaml:5:25: credentials[0].policies[2]: missing Statement",
    ]
