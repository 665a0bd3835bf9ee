"""Offline evaluation for `authz-sidecar check`: one request, decided exactly as the server would decide it.

Inputs become a real `CheckRequest` first (a raw HTTP/1.1 request is converted the way Envoy converts it), then
go through the same adapter and pipeline the server uses, so `check` cannot drift from `serve`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from google.protobuf import json_format

from . import reasons
from .explanation import DENY, ROUTE, Step, as_json, text_lines
from .pipeline import Pipeline
from .proxy_path import GRPC_MODE, BodyLimit, ProxyRejects, envoy_body, envoy_framing, envoy_path
from .request import ANONYMOUS, Decision, Principal
from .runtime import RuntimeHolder, compile_runtime
from .settings import Config
from .transports.ext_authz import MALFORMED, MalformedRequest, to_request


class InputError(ValueError):
    """The request file cannot be read or parsed."""


def parse_time(text: str) -> float:
    """`--at`: epoch seconds or an ISO 8601 time (`2015-08-30T12:36:00Z`, `20150830T123600Z`)."""
    try:
        return float(text)
    except ValueError:
        pass
    for fmt in ("%Y%m%dT%H%M%SZ",):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--at: not a timestamp: {text!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _split_head(raw: bytes) -> tuple[list[str], bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, body = raw.partition(sep)
        if found:
            return head.decode("utf-8", "surrogateescape").replace("\r\n", "\n").split("\n"), body
    return raw.decode("utf-8", "surrogateescape").replace("\r\n", "\n").rstrip("\n").split("\n"), b""


def parse_http_request(
    raw: bytes,
    source_ip: str = "127.0.0.1",
    scheme: str = "http",
    normalize: bool = True,
    body_limit: BodyLimit = GRPC_MODE,
) -> CheckRequest:
    """A raw HTTP/1.1 request (request line, headers, blank line, body) as the CheckRequest the shipped Envoy
    would send: its target normalized as Envoy normalizes it (`envoy_path`; raises `ProxyRejects` where Envoy
    answers 400 itself), unless `normalize` is False (a proxy that forwards the path as written), and its body
    as `body_limit` makes Envoy send it (`envoy_body`)."""
    lines, body = _split_head(raw)
    request_line = lines[0].split(" ")
    if len(request_line) < 2 or not request_line[0] or not request_line[1]:
        raise InputError(f"not an HTTP request line: {lines[0]!r}")
    method, target = request_line[0], request_line[1]
    if normalize:
        target = envoy_path(target)
    headers: dict[str, str] = {}
    repeated: set[str] = set()
    last = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and last:  # obs-fold continuation
            headers[last] = f"{headers[last]} {line.strip()}"
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise InputError(f"not a header line: {line!r}")
        last = name.strip().lower()
        value = value.strip()
        if last in headers:
            repeated.add(last)
            headers[last] = f"{headers[last]},{value}"
        else:
            headers[last] = value
    envoy_framing(headers, repeated)
    declared = headers.get("content-length")
    if declared is not None and len(body) < int(declared):
        raise InputError(
            f"the body is {len(body)} bytes, less than its Content-Length {declared}: Envoy would wait for the rest"
        )
    authority = headers.pop("host", "")
    # The shipped Envoy (`use_remote_address: true`) appends its peer to X-Forwarded-For before it asks; do the
    # same, so `aws:SourceIp` with `policy.trusted_proxy_hops` comes out as it does behind Envoy.
    forwarded = headers.get("x-forwarded-for")
    headers["x-forwarded-for"] = f"{forwarded}, {source_ip}" if forwarded else source_ip
    headers["x-forwarded-proto"] = scheme  # the edge Envoy overwrites a client's copy with the connection's scheme
    body, size = envoy_body(body, headers, body_limit)
    check = CheckRequest()
    http = check.attributes.request.http
    http.method, http.path, http.host, http.scheme, http.protocol = method, target, authority, scheme, "HTTP/1.1"
    http.headers.update({":authority": authority, ":method": method, ":path": target, ":scheme": scheme, **headers})
    http.raw_body = body
    http.size = size
    check.attributes.source.address.socket_address.address = source_ip
    return check


def load_check_request(path: Path) -> CheckRequest:
    """A CheckRequest in protobuf JSON form."""
    try:
        return json_format.Parse(path.read_text(encoding="utf-8"), CheckRequest())
    except (OSError, json_format.ParseError) as exc:
        raise InputError(f"{path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A decision plus the facts `check` prints about it."""

    decision: Decision
    method: str
    path: str

    def as_dict(self, explain: bool = True) -> dict[str, Any]:
        """The JSON form: the verdict, then (`explain`) the explanation as one object per stage (`Step.as_dict`).
        Only with `--explain`, as in text: an explanation may show a request's header values (SigV4's canonical
        request), which a CI job logging `check`'s output must not collect unasked."""
        d = self.decision
        principal = d.principal
        data = {
            "decision": "allow" if d.allowed else "deny",
            "status": d.status,
            "reason": d.reason,
            "message": d.message,
            "route": d.route,
            "principal": None if principal is None else {"kind": principal.kind, "id": principal.id},
            "headers": [list(h) for h in d.all_headers()],
            "explanation": as_json(d.explanation),
            "request": f"{self.method} {self.path}",
        }
        if not explain:
            del data["explanation"]
        return data

    def as_text(self, explain: bool = True) -> str:
        """The text form; `explain` adds the explanation, stage by stage, as `explain:` lines."""
        d = self.decision
        lines = [
            f"request:   {self.method} {self.path}",
            f"decision:  {'allow' if d.allowed else 'deny'} ({d.status})",
            f"reason:    {d.reason}" + (f" - {d.message}" if d.message else ""),
            f"route:     {d.route or '(none)'}",
        ]
        if d.principal is not None:
            lines.append(f"principal: {_who(d.principal)}")
        lines.extend(f"header:    {name}: {value}" for name, value in d.all_headers())
        if explain:
            lines.extend(f"explain:   {line}" for line in text_lines(d.explanation))
        return "\n".join(lines)


def _who(principal: Principal) -> str:
    """`anonymous`, or `kind id` (`jwt user-123`, `sigv4 arn:aws:iam::...`): the kind only when it says more."""
    if principal.id == principal.kind or principal.kind == ANONYMOUS.kind:
        return principal.id
    return f"{principal.kind} {principal.id}"


def _clock_from(at: float) -> Callable[[], float]:
    """A clock that reads `at` now and runs on from there: what a server whose clock is set to `at` would read,
    so keys fetched for this check count as fetched at `at` (a JWKS is never stale offline just because `at`
    lies past its staleness limit) while the request itself is judged at exactly `at`."""
    start = time.monotonic()
    return lambda: at + (time.monotonic() - start)


async def evaluate(
    config: Config, check: CheckRequest, at: float | None = None, ready_timeout: float = 10.0
) -> CheckResult:
    """Decide one CheckRequest with a fresh runtime for `config` (starting and stopping its authorizers)."""
    if at is not None:
        check.attributes.request.time.FromNanoseconds(int(at * 1e9))
    runtime = compile_runtime(config, clock=time.time if at is None else _clock_from(at), private_limits=True)
    await runtime.start()
    try:
        await runtime.wait_ready(ready_timeout)
        try:
            request = to_request(check)
        except MalformedRequest as exc:
            http = check.attributes.request.http
            refusal = Step(
                ROUTE, DENY, f"{MALFORMED.reason}: {exc} (the request is refused before any route is matched)"
            )
            return CheckResult(replace(MALFORMED, explanation=(refusal,)), http.method, http.path)
        decision = await Pipeline(RuntimeHolder(runtime), explain=True).decide(request)
        return CheckResult(decision, request.method, request.raw_path)
    finally:
        await runtime.stop()


def dumps(result: CheckResult, explain: bool = True) -> str:
    """JSON output for `--output json` (the explanation with `--explain` only)."""
    return json.dumps(result.as_dict(explain), indent=2)


async def decide_http(
    config: Config,
    raw: bytes,
    at: float | None = None,
    source_ip: str = "127.0.0.1",
    scheme: str = "http",
    normalize: bool = True,
    body_limit: BodyLimit = GRPC_MODE,
    ready_timeout: float = 10.0,
) -> CheckResult:
    """`check --http`: a raw request decided as the server decides what the shipped Envoy forwards of it; a
    request Envoy answers itself (`ProxyRejects`) gets Envoy's status (400, or 413 for a body over the limit in
    HTTP mode), with why."""
    try:
        check = parse_http_request(raw, source_ip, scheme, normalize, body_limit)
    except ProxyRejects as refusal:
        method, _, rest = _split_head(raw)[0][0].partition(" ")
        message = f"Envoy (as shipped) answers {refusal.status} itself, the sidecar is never asked: {refusal}"
        decision = reasons.deny(refusal.reason, message, refusal.status)
        never_asked = Step(ROUTE, DENY, f"{decision.reason}: {message}")
        return CheckResult(replace(decision, explanation=(never_asked,)), method, rest.rpartition(" ")[0] or rest)
    return await evaluate(config, check, at, ready_timeout)
