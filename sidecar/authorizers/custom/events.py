"""The event a handler receives, built exactly as API Gateway builds it for each format, so a handler written
for API Gateway (and powertools' event classes) reads it unchanged:

- `token`: REST TOKEN, `{type, authorizationToken, methodArn}`;
- `request`: REST REQUEST, the request's headers, query, path parameters, stage variables and `requestContext`;
- `http-1.0`: an HTTP API's payload format 1.0, the REST REQUEST shape plus `version` and `identitySource`;
- `http-2.0`: an HTTP API's payload format 2.0 (`routeArn`, `routeKey`, `rawPath`, `cookies`, repeated headers
  and query parameters comma-joined, `requestContext.http`).

`resource`, `routeKey` and `pathParameters` come from the route the pipeline matched: the authorizer instance
that serves a route knows its key (`Authorizer.for_route`) and reads the parameters from the path with a table of
that one route, so nothing about routing travels on the `Request`. `methodArn` / `routeArn` is the resource ARN
the policy stage evaluates (`policy.arn.resource_arn`: the judged method, HEAD as GET, and the canonical path),
so a policy the handler writes for the ARN it was given matches the request it was given. `sourceIp` is the
address `aws:SourceIp` reads (`policy.context.client_address`: with `policy.trusted_proxy_hops`, the client
behind the trusted proxies, not the last proxy), so a handler and the policies see the same caller.

Events are built only when the handler is called (a cache miss) and are fresh objects each time: a handler may
change its event.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote

from ...policy.arn import resource_arn
from ...policy.context import DEFAULT_SETTINGS, ContextSettings, client_address, resource_path
from ...request import Request, judged_method
from ...routes import DEFAULT_ROUTE, AmbiguousPath, RouteTable, parse_match
from ...settings import ApiSettings
from ..mtls.cert import CertificateError, from_pem
from .context import new_request_id

__all__ = ["EventFormat", "EventSpec", "RouteInfo", "client_certificate", "method_arn"]

EventFormat = Literal["token", "request", "http-1.0", "http-2.0"]
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """The matched route as events name it: `key` (`GET /pets/{id}`, `$default`), `resource` (`/pets/{id}`)."""

    key: str = DEFAULT_ROUTE
    resource: str = DEFAULT_ROUTE
    table: RouteTable[bool] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, match: str) -> RouteInfo:
        """The route whose key is `match` (validated by the config already)."""
        key = parse_match(match)
        if key.is_default:
            return cls()
        resource = "/" + "/".join(key.segments)
        templated = any(segment.startswith("{") for segment in key.segments)
        return cls(f"{key.method} {resource}", resource, RouteTable([(match, True)]) if templated else None)

    def path_parameters(self, request: Request) -> dict[str, str]:
        """The route's `{param}` / `{proxy+}` values in this request's path (decoded, as the router read them)."""
        if self.table is None:
            return {}
        try:
            found = self.table.match(judged_method(request.method), request.path)
        except AmbiguousPath:  # the pipeline refuses these before any authorizer runs
            return {}
        return dict(found.params) if found is not None else {}


def method_arn(api: ApiSettings, request: Request) -> str:
    """The `methodArn` / `routeArn`: exactly the resource ARN the policy stage evaluates for this request."""
    return resource_arn(api, judged_method(request.method), resource_path(request.path))


def client_certificate(certificate: str) -> dict[str, Any] | None:
    """API Gateway's `clientCert` for the peer's certificate (Envoy sends it URL-encoded PEM), or None when there
    is none or it cannot be read: the same `ClientCert` model the mtls engine verifies (`authorizers/mtls/cert.py`)."""
    if not certificate:
        return None
    try:
        return from_pem(unquote(certificate) if "%" in certificate else certificate).api_gateway()
    except CertificateError:
        return None


def _request_time(seconds: float) -> str:
    """`12/Mar/2020:19:03:58 +0000` (month names spelled out here: `%b` follows the locale)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{moment.day:02d}/{_MONTHS[moment.month - 1]}/{moment.year}:{moment:%H:%M:%S} +0000"


@dataclass(frozen=True, slots=True)
class EventSpec:
    """How one authorizer builds its events: the format and what the config says about the API."""

    format: EventFormat
    api: ApiSettings
    stage_variables: Mapping[str, str] = field(default_factory=dict)
    context_settings: ContextSettings = DEFAULT_SETTINGS
    """How the caller's address is read (`policy.trusted_proxy_hops`): `sourceIp` is `aws:SourceIp`'s address."""

    def build(
        self, request: Request, route: RouteInfo, identity: tuple[str, ...], now: float, request_id: str | None = None
    ) -> dict[str, Any]:
        """The event for `request` on `route`; `identity` holds the identity sources' values (the token first).
        `request_id` is its `requestContext.requestId`, the call's Lambda context's `aws_request_id` too (default:
        Envoy's `x-request-id`, else a new one)."""
        if self.format == "token":
            return {"type": "TOKEN", "authorizationToken": identity[0], "methodArn": method_arn(self.api, request)}
        request_id = request_id or request.request_id or new_request_id()
        if self.format == "http-2.0":
            return self._v2(request, route, identity, now, request_id)
        event = self._rest(request, route, now, request_id)
        if self.format == "http-1.0":
            joined = ",".join(identity) if identity else None
            return {"version": "1.0", **event, "identitySource": joined, "authorizationToken": joined}
        return event

    def _rest(self, request: Request, route: RouteInfo, now: float, request_id: str) -> dict[str, Any]:
        query = request.query
        headers = dict(request.headers)
        return {
            "type": "REQUEST",
            "methodArn": method_arn(self.api, request),
            "resource": route.resource,
            "path": request.path,
            "httpMethod": request.method,
            "headers": headers,
            "multiValueHeaders": {name: [value] for name, value in headers.items()},
            "queryStringParameters": {name: values[-1] for name, values in query.items()} if query else None,
            "multiValueQueryStringParameters": {name: list(vs) for name, vs in query.items()} if query else None,
            "pathParameters": route.path_parameters(request),
            "stageVariables": dict(self.stage_variables),
            "requestContext": self._rest_context(request, route, now, request_id),
        }

    def _rest_context(self, request: Request, route: RouteInfo, now: float, request_id: str) -> dict[str, Any]:
        api = self.api
        when = request.time or now
        return {
            "resourceId": hashlib.sha256(route.resource.encode()).hexdigest()[:6],
            "resourcePath": route.resource,
            "httpMethod": request.method,
            "extendedRequestId": request_id,
            "requestTime": _request_time(when),
            "path": request.path,
            "accountId": api.account,
            "protocol": request.protocol or "HTTP/1.1",
            "stage": api.stage,
            "domainPrefix": request.host.split(".", 1)[0],
            "requestTimeEpoch": int(when * 1000),
            "requestId": request_id,
            "identity": _identity(request, client_address(request, self.context_settings)),
            "domainName": request.host,
            "apiId": api.id,
        }

    def _v2(
        self, request: Request, route: RouteInfo, identity: tuple[str, ...], now: float, request_id: str
    ) -> dict[str, Any]:
        api = self.api
        headers = {name: value for name, value in request.headers.items() if name != "cookie"}
        cookies = [part.strip() for part in request.headers.get("cookie", "").split(";") if part.strip()]
        query = request.query
        when = request.time or now
        certificate = client_certificate(request.peer_certificate)
        event: dict[str, Any] = {
            "version": "2.0",
            "type": "REQUEST",
            "routeArn": method_arn(api, request),
            "identitySource": list(identity),
            "routeKey": route.key,
            "rawPath": request.path,
            "rawQueryString": request.query_string,
            "headers": headers,
            "requestContext": {
                "accountId": api.account,
                "apiId": api.id,
                "authentication": {"clientCert": certificate} if certificate is not None else None,
                "domainName": request.host,
                "domainPrefix": request.host.split(".", 1)[0],
                "http": {
                    "method": request.method,
                    "path": request.path,
                    "protocol": request.protocol or "HTTP/1.1",
                    "sourceIp": client_address(request, self.context_settings),
                    "userAgent": request.headers.get("user-agent", ""),
                },
                "requestId": request_id,
                "routeKey": route.key,
                "stage": api.stage,
                "time": _request_time(when),
                "timeEpoch": int(when * 1000),
            },
        }
        # Format 2.0 leaves out what a request does not have.
        if cookies:
            event["cookies"] = cookies
        if query:
            event["queryStringParameters"] = {name: ",".join(values) for name, values in query.items()}
        parameters = route.path_parameters(request)
        if parameters:
            event["pathParameters"] = parameters
        if self.stage_variables:
            event["stageVariables"] = dict(self.stage_variables)
        return event


def _identity(request: Request, source_ip: str) -> dict[str, Any]:
    """A REST `requestContext.identity`: the caller's address, agent, API key and certificate; the IAM and Cognito
    fields API Gateway fills for other authorizer types are present and null."""
    return {
        "cognitoIdentityPoolId": None,
        "accountId": None,
        "cognitoIdentityId": None,
        "caller": None,
        "sourceIp": source_ip,
        "principalOrgId": None,
        "accessKey": None,
        "cognitoAuthenticationType": None,
        "cognitoAuthenticationProvider": None,
        "userArn": None,
        "userAgent": request.headers.get("user-agent"),
        "user": None,
        "apiKey": request.headers.get("x-api-key"),
        "apiKeyId": None,
        "clientCert": client_certificate(request.peer_certificate),
    }
