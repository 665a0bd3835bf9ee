"""Custom-authorizer (Lambda) responses: what a handler returns, validated (`custom/responses.py`), compiled as an
identity policy and evaluated against the request's method ARN, through the pipeline.

The input is the JSON text the handler returns for one request (`handler` below answers it; text that is not JSON
is returned as the string itself). The route is `ANY /lam/{proxy+}` behind a `type: lambda` TOKEN authorizer with
no result cache, and each input asks with its own token (so no decision is reused across inputs), for
`GET /lam/orders/7`. Seeds: allows for the exact ARN, for the stage's wildcard, for another path, denies, explicit
denies over allows, conditions, context values of each type, and malformed ones (no principalId, a string
policy, NaN, nested context, oversized). Oracle: a malformed response is a deny with a documented reason (a 500
`AuthorizerConfigurationException`, as API Gateway answers it), never an allow; an allow only when the response
is an object with a string principalId and a policy document with an Allow statement for `execute-api:Invoke`
(or a wildcard) whose Resource covers the method ARN and no unconditional Deny statement that covers it (an
independent glob check here; statements with conditions or policy variables are left to the engine), and then
the principal is the response's principalId.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.request import Request
from sidecar.runtime import RuntimeHolder, compile_runtime

from ..harness import Loop, OneInput, Target, known_reasons, text

API = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5"
METHOD_ARN = f"{API}/prod/GET/lam/orders/7"
CURRENT: list[Any] = [None]
"""What `handler` returns for the input being run."""


def handler(event: dict[str, Any], context: Any) -> Any:
    """The Lambda handler the config names: it answers whatever the fuzzer wrote."""
    return CURRENT[0]


CONFIG = """
api: {id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}
authorizers:
  lam:
    type: lambda
    handler: tests.fuzz.targets.custom_response:handler
    event_format: token
    result_ttl: 0
    context_to_headers: {stringKey: x-string-key}
routes:
  - {match: "ANY /lam/{proxy+}", authorizer: lam}
"""


def _glob(pattern: str, value: str, fold: bool = False) -> bool:
    """`*` and `?` wildcards over the whole of `value`, by the two-pointer walk that backtracks only to the last
    star (a regex of `.*` per star backtracked for minutes on forty stars: the long run's one timeout)."""
    if fold:
        pattern, value = pattern.lower(), value.lower()
    p = v = 0
    star, mark = -1, 0
    while v < len(value):
        if p < len(pattern) and pattern[p] in ("?", value[v]):
            p, v = p + 1, v + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, v, p + 1
        elif star >= 0:
            mark += 1
            p, v = star + 1, mark
        else:
            return False
    return pattern[p:].strip("*") == ""


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _covers(statement: dict[str, Any]) -> bool | None:
    """Whether the statement applies to Invoke on the method ARN (None: it has conditions or variables)."""
    if "Condition" in statement or "${" in json.dumps(statement):
        return None
    if "NotAction" in statement or "NotResource" in statement:
        return None
    actions = [a for a in _listed(statement.get("Action")) if isinstance(a, str)]
    resources = [r for r in _listed(statement.get("Resource")) if isinstance(r, str)]
    resources = [API + r[len("execute-api:") :] if r.startswith("execute-api:/") else r for r in resources]
    acts = any(_glob(a, "execute-api:Invoke", fold=True) for a in actions)
    return acts and any(r == "*" or _glob(r, METHOD_ARN) for r in resources)


def may_allow(response: Any) -> bool:
    """The independent half of the oracle: could this response allow GET /lam/orders/7?"""
    if not isinstance(response, dict) or not isinstance(response.get("principalId"), str):
        return False
    document = response.get("policyDocument")
    if not isinstance(document, dict):
        return False
    statements = [s for s in _listed(document.get("Statement")) if isinstance(s, dict)]
    verdicts = [(s.get("Effect"), _covers(s)) for s in statements]
    if any(effect == "Deny" and covers for effect, covers in verdicts):
        return False
    return any(effect == "Allow" and covers is not False for effect, covers in verdicts)


class Custom:
    def __init__(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="authz-fuzz-lambda-"))
        self.loop = Loop()
        self.runtime = compile_runtime(parse_config(CONFIG, str(folder / "config.yaml")))
        self.loop.run(self.runtime.start())
        self.pipeline = Pipeline(RuntimeHolder(self.runtime))
        self.reasons = known_reasons()
        self.allowed = 0
        """Allows judged: the seeds must reach some."""

    def one_input(self, data: bytes) -> None:
        source = text(data)
        try:
            response: Any = json.loads(source)
        except ValueError:
            response = source
        CURRENT[0] = response
        token = hashlib.sha256(data).hexdigest()
        request = Request(
            method="GET",
            raw_path="/lam/orders/7",
            path="/lam/orders/7",
            headers={"authorization": token, "host": "api.example.test"},
            host="api.example.test",
        )
        decision = self.loop.run(self.pipeline.check(request))
        assert decision.reason in self.reasons and decision.reason != "InternalError", decision.reason
        if not decision.allowed:
            assert decision.status in (401, 403, 500), decision.status
            return
        assert may_allow(response), "allowed by a response that does not allow the method ARN"
        self.allowed += 1
        assert decision.principal is not None and decision.principal.id == response["principalId"]


@cache
def _custom() -> Custom:
    return Custom()


def _response(effect: str, resource: Any, **extra: Any) -> dict[str, Any]:
    statement = {"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}
    return {"principalId": "user", "policyDocument": {"Version": "2012-10-17", "Statement": [statement]}, **extra}


def seeds() -> list[bytes]:
    two = _response("Allow", f"{API}/prod/*")
    two["policyDocument"]["Statement"].append({"Action": "execute-api:*", "Effect": "Deny", "Resource": METHOD_ARN})
    conditional = _response("Allow", "*")
    conditional["policyDocument"]["Statement"][0]["Condition"] = {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}
    responses: list[Any] = [
        _response("Allow", METHOD_ARN, context={"stringKey": "v", "n": 1, "b": True, "f": 1.5}),
        _response("Allow", f"{API}/prod/*"),
        _response("Allow", "execute-api:/prod/GET/lam/*"),
        _response("Allow", f"{API}/prod/POST/lam/orders/7"),
        _response("Deny", METHOD_ARN),
        _response("Allow", [f"{API}/prod/GET/other", METHOD_ARN], usageIdentifierKey="k"),
        two,
        conditional,
        {"policyDocument": {"Statement": []}},
        _response("Allow", "*", principalId=" padded "),
        _response("Allow", "*", context={"nested": {"a": 1}}),
        {"isAuthorized": True},
        _response("Allow", "*", context={"big": "x" * 9000}),
    ]
    found = [json.dumps(r).encode() for r in responses]
    return [*found, b'{"principalId": "u", "policyDocument": "{}"}', b'{"principalId": NaN}', b"[]", b"allow"]


def prepare() -> OneInput:
    return _custom().one_input


TARGET = Target(
    name="custom_response",
    summary=(
        "custom-authorizer (Lambda) responses: the handler's JSON validated, its policy compiled and evaluated "
        "against the method ARN through the pipeline; oracle: malformed is a deny with a documented reason, an "
        "allow only when an independent glob check finds an Allow (and no unconditional Deny) covering the "
        "method ARN, with the response's principalId"
    ),
    prepare=prepare,
    seeds=seeds,
    max_len=8192,
)
