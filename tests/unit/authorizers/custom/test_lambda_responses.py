"""A handler's response, validated strictly: the shapes API Gateway accepts become verdicts with a compiled
policy, anything else is malformed (a 500 through the pipeline, never an allow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.authorizers.custom.responses import MalformedResponse, ResponseReader
from sidecar.policy import EvalContext
from sidecar.policy.compile import Effect
from sidecar.request import ANONYMOUS
from sidecar.settings import ApiSettings

from . import handlers
from .lambda_testkit import ARN, HANDLERS, pipeline, request, token

API = ApiSettings(id="a1b2c3d4e5", stage="prod", account="123456789012", region="us-east-1")
GOOD = handlers.generate_policy("user", "Allow", f"{ARN}/GET/pets/*")


def reader(simple: bool = False, max_bytes: int = 8192) -> ResponseReader:
    return ResponseReader("auth", API, max_bytes, simple)


def with_(**changes: Any) -> dict[str, Any]:
    response = {**GOOD, **changes}
    return {k: v for k, v in response.items() if v is not ...}


def test_an_iam_response_becomes_a_verdict_with_a_compiled_identity_policy() -> None:
    verdict = reader().read({**GOOD, "usageIdentifierKey": "usage-key-1", "ignored": "extra keys are ignored"})
    assert verdict.principal_id == "user"
    assert dict(verdict.context) == {"stringKey": "value", "numberKey": 123, "booleanKey": True}
    assert verdict.usage_identifier_key == "usage-key-1"
    assert "usage-key-1" not in repr(verdict)
    assert verdict.policy is not None and verdict.policy.kind == "identity"
    ctx = EvalContext(request("/pets/7"), ANONYMOUS, API)
    assert verdict.policy.evaluate(ctx).effect is Effect.ALLOW
    assert verdict.policy.evaluate(EvalContext(request("/owners/1"), ANONYMOUS, API)).effect is Effect.NEITHER


def test_the_same_policy_is_compiled_once() -> None:
    read = reader()
    assert read.read(GOOD).policy is read.read(dict(GOOD)).policy


def test_simple_responses() -> None:
    read = reader(simple=True)
    allowed = read.read({"isAuthorized": True, "context": {"tenant": "acme"}})
    assert allowed.policy is read.allow_all and dict(allowed.context) == {"tenant": "acme"}
    assert read.read({"isAuthorized": False}).policy is None
    with pytest.raises(MalformedResponse):
        read.read({"isAuthorized": "true"})  # a string is not a boolean
    with pytest.raises(MalformedResponse):
        read.read(GOOD)  # the IAM form where simple responses were configured


MALFORMED: list[tuple[str, Any]] = [
    ("not an object", ["principalId", "user"]),
    ("null", None),
    ("a string", "Allow"),
    ("no principalId", with_(principalId=...)),
    ("principalId a number", with_(principalId=42)),
    ("principalId empty", with_(principalId="")),
    ("principalId with a newline", with_(principalId="alice\r\nx-admin: true")),
    ("principalId too long", with_(principalId="a" * 1025)),
    ("no policyDocument", with_(policyDocument=...)),
    ("policyDocument a string", with_(policyDocument='{"Version": "2012-10-17"}')),
    ("policy without Statement", with_(policyDocument={"Version": "2012-10-17"})),
    (
        "policy with a bad Effect",
        with_(
            policyDocument={"Version": "2012-10-17", "Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}]}
        ),
    ),
    (
        "policy with an unknown key",
        with_(policyDocument={"Version": "2012-10-17", "Statement": [], "Extra": 1}),
    ),
    ("context a list", with_(context=["a"])),
    ("context value null", with_(context={"a": None})),
    ("context value nested", with_(context={"a": {"b": 1}})),
    ("context value a list", with_(context={"a": [1, 2]})),
    ("context value not finite", with_(context={"a": float("inf")})),
    ("context key empty", with_(context={"": "x"})),
    ("usageIdentifierKey a number", with_(usageIdentifierKey=7)),
    ("not JSON at all", with_(context={"a": object()})),
    ("huge", with_(context={"blob": "x" * 9000})),
]


@pytest.mark.parametrize(("case", "response"), MALFORMED, ids=[case for case, _ in MALFORMED])
def test_malformed_responses_are_refused(case: str, response: Any) -> None:
    with pytest.raises(MalformedResponse) as caught:
        reader().read(response)
    assert "xxxxxxxx" not in str(caught.value) and "alice" not in str(caught.value)  # never the values


@pytest.mark.parametrize(
    ("case", "response"),
    [MALFORMED[0], MALFORMED[6], MALFORMED[11], MALFORMED[16], MALFORMED[-1]],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_through_the_pipeline_a_malformed_response_is_a_500(
    tmp_path: Path, case: str, response: Any, caplog: pytest.LogCaptureFixture
) -> None:
    handlers.reset()
    handlers.MALFORMED["response"] = response
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:malformed\nevent_format: token")
    decision = await pipe.check(request(headers=token("secret-token-value")))
    assert (decision.allowed, decision.status, decision.reason) == (False, 500, "AuthorizerConfigurationException")
    assert len(handlers.CALLS) == 1
    assert "malformed response" in caplog.text
    assert "secret-token-value" not in caplog.text
    # failures are not cached: the next request calls again
    await pipe.check(request(headers=token("secret-token-value")))
    assert len(handlers.CALLS) == 2


async def test_an_unsendable_context_header_value_is_malformed(tmp_path: Path) -> None:
    handlers.reset()
    handlers.MALFORMED["response"] = with_(context={"tenant": "acme\nx-admin: 1"})
    settings = f"handler: {HANDLERS}:malformed\nevent_format: token\ncontext_to_headers: {{tenant: x-tenant}}"
    decision = await pipeline(tmp_path, settings).check(request(headers=token("t")))
    assert (decision.status, decision.reason) == (500, "AuthorizerConfigurationException")


def test_encode_and_decode_carry_a_verdict_and_validate_again() -> None:
    read = reader()
    verdict = read.read({**GOOD, "usageIdentifierKey": "k"})
    back = read.decode(read.encode(verdict))
    assert (back.principal_id, dict(back.context), back.usage_identifier_key) == ("user", dict(verdict.context), "k")
    assert back.policy is verdict.policy  # the same text: the compiled policy is reused
    simple = reader(simple=True)
    denied = simple.read({"isAuthorized": False})
    assert simple.decode(simple.encode(denied)).policy is None
    with pytest.raises(MalformedResponse):
        read.decode(b'{"principalId": "forged", "policyDocument": "allow everything"}')
    with pytest.raises(MalformedResponse):
        read.decode(b"\xff not json")


async def test_a_sid_a_handler_wrote_reaches_decisions_escaped_and_cut(tmp_path: Path) -> None:
    """The deciding statement's Sid goes to decision logs: a handler's Sid with control characters, of any length,
    must not reach them as it is."""
    handlers.reset()
    sid = "Read\x1b[31m\nforged line" + "x" * 5000
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Sid": sid, "Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*"}],
    }
    handlers.MALFORMED["response"] = with_(policyDocument=document)
    decision = await pipeline(tmp_path, f"handler: {HANDLERS}:malformed\nevent_format: token").check(
        request(headers=token("t"))
    )
    assert decision.allowed
    assert decision.statement.startswith("Read\\x1b[31m\\nforged line")
    assert decision.statement.isprintable() and len(decision.statement) < 300
