"""A handler's response, validated strictly and turned into what the pipeline evaluates.

Two shapes, as API Gateway reads them: the IAM form `{principalId, policyDocument, context, usageIdentifierKey}`
(every format) and, for HTTP API 2.0 with `simple_responses`, `{isAuthorized, context}`. The policy document is
validated and compiled by `sidecar.policy`'s own parser (as an identity policy), so the pipeline evaluates it like
any other, against each request's ARN. `context` values must be strings, numbers or booleans. Anything else, or a
response larger than `max_response_bytes` once encoded as JSON, is malformed: a 500, never an allow. Keys other
than these are ignored, as API Gateway ignores them.

`encode` / `decode` carry a validated response as bytes: the seam through which results are shared between
replicas (`ResultStore`); decoding validates again, so bytes from elsewhere are never trusted more than a handler.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...issues import ConfigError
from ...memo import BoundedMemo
from ...policy import CompiledPolicy, parse_policy
from ...request import header_safe
from ...settings import ApiSettings

__all__ = ["ALLOW_ALL_TEXT", "MalformedResponse", "ResponseReader", "Verdict"]

MAX_PRINCIPAL_ID = 1024
"""Characters of a `principalId`: it becomes an upstream header and a decision log field."""
MAX_CONTEXT_KEY = 128
_POLICY_MEMO = 1024
ALLOW_ALL_TEXT = (
    '{"Version":"2012-10-17","Statement":[{"Sid":"isAuthorized","Effect":"Allow","Action":"execute-api:Invoke",'
    '"Resource":"*"}]}'
)
"""What a simple response's `isAuthorized: true` means: the request is allowed, whatever its ARN."""


class MalformedResponse(ValueError):
    """A response API Gateway would refuse: 500. The message says what is wrong, never a value it holds."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A validated response. `policy` is None for a simple response that said `isAuthorized: false`."""

    principal_id: str
    policy: CompiledPolicy | None
    context: Mapping[str, str | int | float | bool] = field(default_factory=lambda: MappingProxyType({}))
    usage_identifier_key: str | None = field(default=None, repr=False)
    simple: bool = False
    document: Any = field(default=None, repr=False, compare=False)
    """The policy document as the handler returned it (for `encode`)."""


def _check_context(raw: Any) -> Mapping[str, str | int | float | bool]:
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, dict):
        raise MalformedResponse("context must be an object")
    for key, value in raw.items():
        if not isinstance(key, str) or not key or len(key) > MAX_CONTEXT_KEY:
            raise MalformedResponse(f"context keys must be strings of 1-{MAX_CONTEXT_KEY} characters")
        if not isinstance(value, str | int | float | bool):
            raise MalformedResponse(f"context value {key!r} is {type(value).__name__}: only strings, numbers, booleans")
        if isinstance(value, float) and not math.isfinite(value):
            raise MalformedResponse(f"context value {key!r} is not a finite number")
    return MappingProxyType(dict(raw))


def _json_text(raw: Any) -> str:
    try:
        return json.dumps(raw, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise MalformedResponse(f"the response is not JSON ({type(raw).__name__} or a value inside it)") from None


class ResponseReader:
    """Validates one authorizer's responses: its API (short-form ARNs), size bound and response shape."""

    def __init__(self, name: str, api: ApiSettings, max_bytes: int, simple: bool) -> None:
        self.name = name
        self.api = api
        self.max_bytes = max_bytes
        self.simple = simple
        self.source = f"returned by authorizer {name}"
        self._policies: BoundedMemo[str, CompiledPolicy] = BoundedMemo(_POLICY_MEMO)
        self.allow_all = parse_policy(ALLOW_ALL_TEXT, f"{self.source} (isAuthorized)", kind="identity", api=api)

    def encoded(self, raw: Any) -> str:
        """`raw` as compact JSON: what its size is judged by, and what a caller may remember verdicts by (the same
        text is the same response); `MalformedResponse` unless it is an object, JSON, within `max_bytes`."""
        if not isinstance(raw, dict):
            raise MalformedResponse(f"the response is {type(raw).__name__}, not an object")
        text = _json_text(raw)
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.max_bytes:
            raise MalformedResponse(f"the response is {size} bytes as JSON; max_response_bytes is {self.max_bytes}")
        return text

    def read(self, raw: Any, encoded: str | None = None) -> Verdict:
        """The verdict in `raw`, or `MalformedResponse`. `encoded`: what `encoded(raw)` returned, if the caller
        has it already (then it is not computed again)."""
        if encoded is None:
            self.encoded(raw)
        return self._simple(raw) if self.simple else self._iam(raw)

    def _simple(self, raw: dict[str, Any]) -> Verdict:
        authorized = raw.get("isAuthorized")
        if not isinstance(authorized, bool):
            raise MalformedResponse("isAuthorized must be true or false")
        context = _check_context(raw.get("context"))
        return Verdict(self.name, self.allow_all if authorized else None, context, simple=True)

    def _iam(self, raw: dict[str, Any]) -> Verdict:
        principal = raw.get("principalId")
        if not isinstance(principal, str) or not principal or len(principal) > MAX_PRINCIPAL_ID:
            raise MalformedResponse(f"principalId must be a string of 1-{MAX_PRINCIPAL_ID} characters")
        if not header_safe(principal):
            raise MalformedResponse("principalId holds control characters or spaces at its ends")
        document = raw.get("policyDocument")
        if not isinstance(document, dict):
            raise MalformedResponse("policyDocument must be an object")
        usage = raw.get("usageIdentifierKey")
        if usage is not None and not isinstance(usage, str):
            raise MalformedResponse("usageIdentifierKey must be a string")
        context = _check_context(raw.get("context"))
        return Verdict(principal, self._policy(document), context, usage, document=document)

    def _policy(self, document: dict[str, Any]) -> CompiledPolicy:
        """The compiled document; handlers return a handful of distinct policies, so compiling is remembered."""
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
        policy = self._policies.get(text)
        if policy is None:
            try:
                policy = parse_policy(text, self.source, kind="identity", api=self.api, max_size=None)
            except ConfigError as exc:
                first = exc.issues[0] if exc.issues else None
                where = f" at {first.field}" if first is not None and first.field else ""
                raise MalformedResponse(f"policyDocument is not a valid policy{where}") from None
            self._policies.put(text, policy)
        return policy

    # -- the seam for sharing results (`ResultStore`) -----------------------------------------------------------

    def encode(self, verdict: Verdict) -> bytes:
        """`verdict` as JSON bytes, in the handler's own response shape (so `decode` validates it as one)."""
        if verdict.simple:
            raw: dict[str, Any] = {"isAuthorized": verdict.policy is not None}
        else:
            raw = {"principalId": verdict.principal_id, "policyDocument": verdict.document}
            if verdict.usage_identifier_key is not None:
                raw["usageIdentifierKey"] = verdict.usage_identifier_key
        if verdict.context:
            raw["context"] = dict(verdict.context)
        return json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")

    def decode(self, data: bytes) -> Verdict:
        """The verdict `encode` wrote, validated again; `MalformedResponse` for anything else."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise MalformedResponse("a stored result is not JSON") from None
        return self.read(raw)
