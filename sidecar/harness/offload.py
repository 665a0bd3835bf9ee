"""`envoy-config --offload`: routes Envoy can decide with its own filters, decided there, exactly as the sidecar would.

A route is offloaded only when its whole judgement can be restated in Envoy's terms (`eligibility`): its authorizer
answers `offload_rules()` with `TokenRules` (a `jwt` authorizer reading one header, keys at a `jwks_uri` or file),
and nothing else on the route judges the request (no resource or endpoint policy, not a private API, no gates:
rate rules, API keys, client certificates). Everything else stays on ext_authz, and `--explain` says why.

An offloaded route gets, instead of ext_authz:
- `jwt_authn`: the signature, `iss`, `exp` and `nbf` (with a clock skew that makes its clock rules the sidecar's:
  `clock_skew`), the keys (remote JWKS through a cluster of its own, or the local file), and the identity headers
  (`claim_to_headers`; the principal header from `sub`, else `client_id`);
- `rbac` over the verified header and payload restating the rest of the sidecar's rules (claims.py, token.py):
  native metadata matchers (`principals`: the algorithm list, no `crit`/`jku`/`x5u`/`jwk`, the JSON types of the
  claims it reads, the dates' range, `aud` any-of or else `client_id`, a principal id and claim headers that can
  travel as they are, the route's scopes, any one of, from `scope` and `scp`) and a small CEL condition for what
  no matcher can say (`condition`: the token's size, `exp` and `iat` against the clock, an `scp` list of strings);
- the authorizer and route headers as route `request_headers_to_add`.

`tests/e2e/test_offload_e2e.py` sends one corpus (valid, expired, early, future-issued, wrong issuer, audience,
scope, algorithm, tampered, forged, missing, odd claims) through an offloaded Envoy and an ext_authz Envoy: the
allow/deny and the upstream identity headers must agree. What differs by design (the status and body of a
refusal, decision logs, metrics) is in docs/envoy-config.md.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..authorizers.jwt.keys import parse_jwks_file
from ..authorizers.jwt.token import UNTRUSTED_HEADERS
from ..hop import NotOffloadable, OffloadRules, OpenRoute, TokenRules
from ..issues import ConfigError
from ..runtime import CompiledRoute, Runtime
from ..settings import DecisionLogSettings
from .cel import Builder, Expr

JWT_AUTHN = "envoy.filters.http.jwt_authn"
RBAC = "envoy.filters.http.rbac"
PAYLOAD, HEADER, FAILURE = "jwt_payload", "jwt_header", "jwt_failure"
_STRINGS = ("iss", "sub", "client_id", "scope")
"""The claims `claim_to_headers` may name on an offloaded route (strings: Envoy renders other JSON its own way)."""
_UNTYPED = ("client_id", "scope")
"""String claims jwt_authn does not type itself (it refuses an `iss` or `sub` that is not a string)."""
_STRINGS_OR_LISTS = ("scp",)
"""Claims read as a string or a list of strings that jwt_authn does not type-check itself (it refuses an `aud` that
is neither: the differential test holds it to that)."""
_MAX_DATE = 2.0**53
MAX_LIST = 16
"""The longest `aud` or `scp` list an offloaded route accepts (`_string_list`)."""


def eligibility(runtime: Runtime, route: CompiledRoute) -> OffloadRules | NotOffloadable:
    """The rules Envoy must check for `route`, or why it stays on ext_authz."""
    if runtime.resource_policy is not None:
        return NotOffloadable("the resource policy judges every route")
    if runtime.endpoint_policies is not None or runtime.private_api:
        return NotOffloadable("VPC endpoint policies or a private API judge every route")
    if route.admit_gates or route.meter_gates:
        names = ", ".join(getattr(g, "name", type(g).__name__) for g in (*route.admit_gates, *route.meter_gates))
        return NotOffloadable(f"gates run on this route ({names})")
    rules = route.authorizer.offload_rules()
    if isinstance(rules, OpenRoute) and route.scopes:
        return NotOffloadable("scopes on an anonymous route: the sidecar refuses every request (no token, no scope)")
    if isinstance(rules, TokenRules):
        odd = [claim for claim, _ in rules.claim_to_headers if claim not in _STRINGS]
        if odd:
            return NotOffloadable(f"claim_to_headers of {', '.join(odd)}: Envoy renders non-string claims its own way")
        reserved = {CLIENT_ID_HEADER} & {h for _, h in rules.claim_to_headers}
        if reserved:
            return NotOffloadable(f"claim_to_headers names {CLIENT_ID_HEADER}, the header offloading uses itself")
        problem = _key_problem(*_keys_of(rules))
        if problem:
            return NotOffloadable(problem)
    return rules


def fetch_jwks(uri: str) -> bytes:
    """The issuer's JWKS as `envoy-config` sees it when rendering (raises `httpx.HTTPError`)."""
    response = httpx.get(uri, timeout=5.0, follow_redirects=False)
    response.raise_for_status()
    return response.content


def _keys_of(rules: TokenRules) -> tuple[bytes | None, str]:
    """The route's key set as bytes (the file, or fetched from `jwks_uri` now), or None, and where it is."""
    where = rules.jwks_file or rules.jwks_uri or ""
    try:
        if rules.jwks_file is not None:
            return Path(rules.jwks_file).read_bytes(), where
        return fetch_jwks(where), where
    except (OSError, httpx.HTTPError):
        return None, where


def _key_problem(data: bytes | None, where: str) -> str:
    """Why Envoy would verify with keys at `where` that the sidecar does not use ('' when none). jwt_authn takes
    every key of the set as it stands: one the sidecar skips (weak or ROCA RSA, not for signing, unsupported), one
    without a `kid` (tried for any token's `kid`), or an EC key without an `alg` (the sidecar binds it to its
    curve's algorithm, jwt_authn does not). Checked when rendering: a key set changed later is not (docs)."""
    if data is None:
        return f"the keys at {where} could not be read to check them"
    try:
        keyset, _ = parse_jwks_file(data, where)
        raw = json.loads(data)
    except (ConfigError, ValueError):
        return f"the keys at {where} are not a key set the sidecar reads"
    if keyset.skipped:
        return f"the keys at {where} include keys the sidecar skips, which Envoy would use"
    if any(key.kid is None for key in keyset.keys):
        return f"the keys at {where} include a key without a kid, which Envoy would try for any token"
    if any(isinstance(k, dict) and k.get("kty") == "EC" and "alg" not in k for k in raw.get("keys", [])):
        return f"the keys at {where} include an EC key without an alg, which Envoy would not bind to its curve"
    return ""


def _needs_kid(rules: TokenRules) -> bool:
    """Whether the token must name its key: unless the route's keys are one local key, jwt_authn would try every
    key for a token without a `kid`, where the sidecar refuses one that several keys could verify."""
    if rules.jwks_file is None:
        return True
    try:
        keyset, _ = parse_jwks_file(Path(rules.jwks_file).read_bytes(), rules.jwks_file)
    except (OSError, ConfigError):
        return True
    return len(keyset.keys) > 1


def clock_skew(rules: TokenRules) -> int:
    """jwt_authn's clock skew for the sidecar's leeway `L` (whole seconds). jwt_authn truncates the clock to whole
    seconds `t` and refuses when `t > exp + skew` or `t + skew < nbf`; the sidecar refuses when `now >= exp + L` or
    `nbf > now + L` on the true time. With skew `L - 1` the expiry rule is the sidecar's exactly for an integer
    `exp` (an integer is above the true time iff it is above its whole seconds), and never looser for a
    fractional one (jwt_authn truncates it); the nbf rule is at most a second stricter. So with a leeway of a
    second or more, Envoy's own clock check is the sidecar's and no CEL restates it (`condition`); with no leeway
    the skew is 0 and CEL restates both (a skew of 0 would be a second looser on expiry)."""
    return max(0, int(rules.leeway) - 1)


def provider(name: str, rules: TokenRules, upstream_principal: str | None) -> dict[str, Any]:
    """One `jwt_authn` provider for authorizer `name`."""
    out: dict[str, Any] = {
        "issuer": rules.issuer,
        "from_headers": [{"name": rules.header, "value_prefix": "Bearer "}],
        "forward": True,
        "require_expiration": True,
        "clock_skew_seconds": clock_skew(rules),
        "payload_in_metadata": PAYLOAD,
        "header_in_metadata": HEADER,
        "failed_status_in_metadata": FAILURE,
    }
    if rules.token_cache_size > 0:  # as the sidecar: no token cache when its size is 0 (jwt_authn: no config, none)
        out["jwt_cache_config"] = {"jwt_cache_size": rules.token_cache_size}
    if rules.jwks_file is not None:
        out["local_jwks"] = {"filename": rules.jwks_file}
    else:
        assert rules.jwks_uri is not None
        out["remote_jwks"] = {
            "http_uri": {"uri": rules.jwks_uri, "cluster": jwks_cluster_name(name), "timeout": "5s"},
            "cache_duration": "300s",
            "async_fetch": {"fast_listener": False},
        }
    # The principal is `sub`, else `client_id` (claims.principal_id). jwt_authn appends, so `sub` goes to the
    # principal header and `client_id` to `CLIENT_ID_HEADER`, which `principal_fallback` moves over only when
    # the token had no `sub`.
    heads = [{"header_name": h, "claim_name": c} for c, h in rules.claim_to_headers]
    if upstream_principal is not None:
        heads += [
            {"header_name": upstream_principal, "claim_name": "sub"},
            {"header_name": CLIENT_ID_HEADER, "claim_name": "client_id"},
        ]
    if heads:
        out["claim_to_headers"] = heads
    return out


CLIENT_ID_HEADER = "x-authz-offload-client-id"
"""Where jwt_authn puts `client_id` for the principal header's fallback: removed from client requests before
jwt_authn runs, and after it (`principal_fallback`), so it never reaches the upstream."""


def principal_fallback(upstream_principal: str) -> dict[str, Any]:
    """A header_mutation after jwt_authn: the principal header from `client_id` when jwt_authn set none from
    `sub`, then `CLIENT_ID_HEADER` removed (one principal header, as the sidecar sends)."""
    added = {
        "header": {"key": upstream_principal, "value": f"%REQ({CLIENT_ID_HEADER})%"},
        "append_action": "ADD_IF_ABSENT",
    }
    return {
        "name": "envoy.filters.http.header_mutation.principal",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"append": added}, {"remove": CLIENT_ID_HEADER}]},
        },
    }


def jwks_cluster_name(authorizer: str) -> str:
    return f"jwks_{authorizer}"


def jwks_cluster(authorizer: str, uri: str) -> dict[str, Any]:
    """An Envoy cluster that reaches `uri`'s host (TLS with SNI for https)."""
    parts = urlsplit(uri)
    host = parts.hostname or "localhost"
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    cluster: dict[str, Any] = {
        "name": jwks_cluster_name(authorizer),
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": jwks_cluster_name(authorizer),
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}
            ],
        },
    }
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
                "common_tls_context": {"validation_context": _verified(host)},
            },
        }
    return cluster


SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"
"""The CA bundle Envoy checks an https JWKS server's certificate against: Debian's (the image's `ca-certificates`),
as the sidecar's own client checks it against its trust store. Without it Envoy would take keys from anyone
who can answer for the issuer's host, and verify tokens they signed."""


def _verified(host: str) -> dict[str, Any]:
    """A validation context: the system CAs, and the certificate must name `host` (DNS or IP address SAN)."""
    try:
        ipaddress.ip_address(host)
        san_type = "IP_ADDRESS"
    except ValueError:
        san_type = "DNS"
    return {
        "trusted_ca": {"filename": SYSTEM_CAS},
        "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": host}}],
    }


def condition(rules: TokenRules, iat: bool | None = None, scp_list: bool | None = None) -> Expr:
    """The CEL part of the route's rules (see the module's docstring): what neither jwt_authn nor RBAC's native
    matchers can say (`principals` says the rest, far cheaper: Envoy's CEL walks the metadata from its root for
    every claim it reads, several us a walk). The token's size, `exp` and `iat` against the clock (`exp` because
    jwt_authn's cache answers without the skew), `nbf` when the leeway is 0 (`clock_skew`), and that an `scp`
    list holds only strings (a native list matcher matches when any one element does). `iat` and `scp_list` say
    what the policy's native matchers already know (`rbac_per_route`): that the token has an `iat` (True) or
    none (False), that its `scp` is present and not a string (True) or absent or a string (False); None:
    unknown, so the condition asks (one more walk each)."""
    b = Builder()
    meta = b.index(b.field(b.ident("metadata"), "filter_metadata"), JWT_AUTHN)

    def payload() -> Expr:
        return b.index(meta, PAYLOAD)

    def claim(name: str) -> Expr:
        return b.index(payload(), name)

    def has(name: str) -> Expr:
        return b.within(b.string(name), payload())

    def at_most(value: Expr, bound: Expr) -> Expr:
        return b.call("_<=_", value, bound)

    def now() -> Expr:
        # whole seconds since the epoch, at most the true time: each clock rule below is stated so that it holds
        # only if the sidecar's rule holds at the true time (stricter by under a second, never looser)
        return b.call("double", b.call("int", b.field(b.ident("request"), "time")))

    leeway = b.number(rules.leeway)
    terms = [
        b.call("_<=_", b.call("size", b.index(b.field(b.ident("request"), "headers"), rules.header)),
               b.number(rules.max_token_bytes + len("Bearer "))),
    ]  # fmt: skip
    if iat is not False:
        issued = at_most(claim("iat"), b.call("_+_", now(), leeway))
        terms.append(issued if iat else b.or_(b.not_(has("iat")), issued))
    # exp (required, an integer: jwt_authn; in range: `principals`): the true time before exp + leeway, on every
    # request: jwt_authn's JWT cache judges a hit by the JWT library's fixed 60 s skew, not the configured one (a
    # cached token passed its exp by under a minute was let through: tests/e2e/test_offload_e2e.py)
    terms.append(at_most(b.call("_+_", now(), b.number(1.0)), b.call("_+_", claim("exp"), leeway)))
    if clock_skew(rules) != int(rules.leeway) - 1:
        # no leeway: jwt_authn's skew of 0 truncates a fractional nbf (a cached token was past its nbf already)
        terms.append(b.or_(b.not_(has("nbf")), at_most(claim("nbf"), b.call("_+_", now(), leeway))))
    for name in _STRINGS_OR_LISTS:
        if scp_list:
            terms.append(_string_list(b, claim)(name))
        elif scp_list is None:
            terms.append(b.or_(b.not_(has(name)), b.is_type(claim(name), "string"), _string_list(b, claim)(name)))
    return b.and_(*terms)


Matcher = dict[str, Any]
_SAFE_CHAR = r"[^\x00-\x1f\x7f-\x{9f}]"
_SAFE_EDGE = r"[^\x00-\x1f\x7f-\x{9f} ]"
_SAFE = f"{_SAFE_EDGE}(?:{_SAFE_CHAR}*{_SAFE_EDGE})?"
"""A non-empty value `header_safe` accepts (no control character, no space at either end), as a full match."""
_PRESENT: Matcher = {"present_match": True}
_STRING: Matcher = {"string_match": {"safe_regex": {"regex": "(?s).*"}}}
"""Any JSON string (a string matcher sees only string values)."""
_DATE: Matcher = {"double_match": {"range": {"start": -1.7976931348623157e308, "end": _MAX_DATE}}}
"""A JSON number the sidecar takes as a date: below 2^53. The sidecar takes 2^53 itself too, but an integer just
above it (2^53 + 1, which it refuses) parses to the same double: Envoy refuses both (one value stricter)."""


def principals(rules: TokenRules, scopes: frozenset[str]) -> Matcher:
    """The route's rules as RBAC's native matchers over jwt_authn's dynamic metadata (the verified header and
    payload): the algorithm list, no `crit`/`jku`/`x5u`/`jwk` (a presence matcher sees a value of any JSON type),
    the string claims jwt_authn does not type itself, the dates' range, `aud` any-of or else `client_id`, the
    principal and claim headers that can travel, the scopes. Only what a native matcher can say exactly is here;
    the rest is CEL's (`condition`)."""
    exact = [_exact(a) for a in sorted(rules.audiences)]
    ids = [
        _header("alg", _one_of([_exact(a) for a in sorted(rules.algorithms)])),
        # a kid, non-empty (jwt_authn reads "" as none): required unless the keys are one local key
        _header("kid", _regex("(?s).+"))
        if _needs_kid(rules)
        else _any([_absent_header("kid"), _header("kid", _regex("(?s).+"))]),
        # jwt_authn ignores these header parameters; the sidecar refuses a token that carries any (token.py)
        *(_absent_header(name) for name in ("crit", *UNTRUSTED_HEADERS)),
        # jwt_authn types `iss` and `sub` itself (and `aud`: a string or a list), not these
        *(_any([_absent(name), _claim(name, _STRING)]) for name in _UNTYPED),
        _claim("exp", _DATE),
        *(_any([_absent(name), _claim(name, _DATE)]) for name in ("nbf", "iat")),
        _any(
            [
                _claim(
                    "aud",
                    _one_of([*exact, {"list_match": {"one_of": _one_of(exact)}}]),
                ),
                _claim("client_id", _one_of(exact)),
            ]
        ),
        # The principal: a non-empty `sub` that can travel, else a `client_id` that can (an empty `sub` is refused:
        # jwt_authn would send it, where the sidecar names the caller by client_id).
        _any([_claim("sub", _regex(_SAFE)), _all([_absent("sub"), _claim("client_id", _regex(_SAFE))])]),
        *(_any([_absent(name), _claim(name, _regex(f"(?:{_SAFE})?"))]) for name, _ in rules.claim_to_headers),
    ]
    if scopes:
        ids.append(_any([_scope(s) for s in sorted(scopes)]))
    return _all(ids)


def _scope(scope: str) -> Matcher:
    """`scope` is among the space-separated `scope`, or in `scp` (a list, or a space-separated string). A scope
    that is empty or holds white space can only be an `scp` list's entry (the sidecar splits the strings)."""
    if not scope or any(c.isspace() for c in scope):
        return _claim("scp", {"list_match": {"one_of": _exact(scope)}})
    word = _regex(r"(?s)(?:|.*\s)" + "".join(f"\\x{{{ord(c):x}}}" for c in scope) + r"(?:|\s.*)")
    return _any([_claim("scope", word), _claim("scp", _one_of([word, {"list_match": {"one_of": _exact(scope)}}]))])


def _jwt_metadata(path: tuple[str, ...], value: Matcher) -> Matcher:
    return {"metadata": {"filter": JWT_AUTHN, "path": [{"key": key} for key in path], "value": value}}


def _claim(name: str, value: Matcher) -> Matcher:
    return _jwt_metadata((PAYLOAD, name), value)


def _header(name: str, value: Matcher) -> Matcher:
    return _jwt_metadata((HEADER, name), value)


def _absent(name: str) -> Matcher:
    return {"not_id": _claim(name, _PRESENT)}


def _absent_header(name: str) -> Matcher:
    return {"not_id": _header(name, _PRESENT)}


def _exact(value: str) -> Matcher:
    return {"string_match": {"exact": value}}


def _regex(pattern: str) -> Matcher:
    return {"string_match": {"safe_regex": {"regex": pattern}}}


def _one_of(values: list[Matcher]) -> Matcher:
    return values[0] if len(values) == 1 else {"or_match": {"value_matchers": values}}


def _any(ids: list[Matcher]) -> Matcher:
    return ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}}


def _all(ids: list[Matcher]) -> Matcher:
    return ids[0] if len(ids) == 1 else {"and_ids": {"ids": ids}}


def _string_list(b: Builder, claim: Callable[[str], Expr]) -> Callable[[str], Expr]:
    """`claim(name)` is a list of at most `MAX_LIST` strings. Envoy's RBAC compiles no comprehensions
    ("Comprehension support is disabled"), so the elements are checked one by one, each guarded by the size; a
    longer list is refused (the one place an offloaded route is stricter than the sidecar: docs/envoy-config.md)."""

    def check(name: str) -> Expr:
        size = b.call("size", claim(name))
        terms = [b.is_type(claim(name), "list"), b.call("_<=_", size, b.integer(MAX_LIST))]
        for i in range(MAX_LIST):
            item = b.call("_[_]", claim(name), b.integer(i))
            terms.append(b.or_(b.call("_<=_", size, b.integer(i)), b.is_type(item, "string")))
        return b.and_(*terms)

    return check


class Flow(dict[str, Any]):
    """A mapping written in YAML's flow style (one line of JSON-like text): the condition is a deep tree, which
    block style would indent into hundreds of kilobytes."""


JWT_FAILURES = (
    ("Jwt is expired", "TokenExpired", "the token has expired"),
    ("Jwt not yet valid", "TokenNotYetValid", "the token is not valid yet (nbf)"),
    ("Jwt verification fails", "InvalidSignature", "the token's signature does not verify"),
    ("Jwt issuer is not configured", "InvalidIssuer", "the token comes from another issuer"),
    ("Jwks doesn't have key to match kid or alg from Jwt", "UnknownKey", "no key of the issuer matches the token"),
)
"""jwt_authn's failure messages (its `failed_status_in_metadata`) and the sidecar's reason codes for them; any
other failure is `TokenMalformed`."""
_INVALID_TOKEN = 'Bearer error="invalid_token"'


_RBAC_STATUS: dict[str, Any] = {
    "status_code_filter": {
        "comparison": {"op": "EQ", "value": {"default_value": 403, "runtime_key": "authz_sidecar.offload.rbac_status"}}
    }
}
"""A 403: how an RBAC refusal shows in a local-reply or access-log filter."""


def refusal_mappers() -> list[dict[str, Any]]:
    """`local_reply_config` mappers giving an offloaded route's refusals the sidecar's JSON body and reason code
    (`{"message": ..., "reason": ...}`) as far as Envoy can tell them apart: jwt_authn's failures by their message,
    and the RBAC condition's refusal (a verified token that breaks a claim rule or lacks the route's scope) as
    `AccessDenied`. Only replies of offloaded routes match: the failure and payload metadata are jwt_authn's, which
    runs nowhere else, so the sidecar's own refusals pass through unchanged."""

    def failure(value: dict[str, Any]) -> dict[str, Any]:
        path = [{"key": FAILURE}, {"key": "message"}]
        return _metadata({"filter": JWT_AUTHN, "path": path, "value": value})

    def reply(reason: str, message: str, challenge: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "body_format_override": {
                "json_format": {"message": message, "reason": reason},
                "content_type": "application/json",
            }
        }
        if challenge:
            header = {"key": "www-authenticate", "value": _INVALID_TOKEN}
            out["headers_to_add"] = [{"header": header, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
        return out

    mappers = [
        {"filter": failure({"string_match": {"exact": text}}), **reply(reason, message, True)}
        for text, reason, message in JWT_FAILURES
    ]
    mappers.append(
        {"filter": failure({"present_match": True}), **reply("TokenMalformed", "the token is malformed", True)}
    )
    verified = {"filter": JWT_AUTHN, "path": [{"key": PAYLOAD}], "value": {"present_match": True}}
    mappers.append(
        {
            "filter": {"and_filter": {"filters": [_RBAC_STATUS, _metadata(verified)]}},
            **reply("AccessDenied", "the token does not meet this route's claim rules or scopes", False),
        }
    )
    return mappers


def decision_log(settings: DecisionLogSettings) -> dict[str, Any] | None:
    """An access log of offloaded token routes' requests, one JSON line each on stdout with the decision log's field
    names where Envoy knows the value (`sidecar/logs.py`; never a header value but the identity ones, never the
    query). Only requests jwt_authn judged are logged: the sidecar logs its own. It follows the sidecar's own
    `decision_log` settings: none when they are off (the line costs Envoy ~10-20 us a request,
    docs/performance.md), and allows sampled at `allow_sample_rate` (refusals always: jwt_authn's, and every 403
    of a verified token, which an upstream's own 403 also is)."""
    if not settings.enabled:
        return None
    meta = f"%DYNAMIC_METADATA({JWT_AUTHN}"
    fields = {
        "time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "route": "%ROUTE_NAME%",
        "method": "%REQ(:METHOD)%",
        "path": "%PATH(WQ)%",
        "source_ip": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "principal": f"{meta}:{PAYLOAD}:sub)%",
        "authorizer": "%REQ(X-AUTHZ-AUTHORIZER)%",
        "status": "%RESPONSE_CODE%",
        "reason": f"{meta}:{FAILURE}:message)%",
        "decided_by": "envoy",
    }
    judged = {
        "or_filter": {
            "filters": [
                _metadata({"filter": JWT_AUTHN, "path": [{"key": key}], "value": {"present_match": True}})
                for key in (PAYLOAD, FAILURE)
            ]
        }
    }
    if settings.allow_sample_rate < 1.0:
        refused = _metadata({"filter": JWT_AUTHN, "path": [{"key": FAILURE}], "value": {"present_match": True}})
        sampled = {
            "runtime_filter": {
                "runtime_key": "authz_sidecar.offload.allow_sample",
                "percent_sampled": {
                    "numerator": round(settings.allow_sample_rate * 1_000_000),
                    "denominator": "MILLION",
                },
                "use_independent_randomness": True,
            }
        }
        judged = {"and_filter": {"filters": [judged, {"or_filter": {"filters": [refused, _RBAC_STATUS, sampled]}}]}}
    return {
        "name": "envoy.access_loggers.stdout",
        "filter": judged,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"json_format": fields},
        },
    }


def _metadata(matcher: dict[str, Any]) -> dict[str, Any]:
    """A metadata filter that does not match when the key is absent (Envoy's default matches: every local reply,
    the sidecar's own refusals included, would be rewritten)."""
    return {"metadata_filter": {"matcher": matcher, "match_if_key_not_found": False}}


def rbac_per_route(rules: TokenRules, scopes: frozenset[str]) -> dict[str, Any]:
    """The route's `RBACPerRoute`: allow only when the native matchers and the condition hold. The rules are three
    policies, one per shape of token, so that the condition need not ask the metadata what a native matcher already
    told (each CEL walk costs several us; a matcher far less): an `iat` and no `scp` list (the common token: two walks,
    `exp` and `iat`), no `iat` and no `scp` list (one), an `scp` list. Each policy's first matcher tells the shapes
    apart, so the policies a token does not fit fail at once; RBAC tries them in name order, the first that matches
    allows, and exactly one can."""
    rules_ = principals(rules, scopes)
    plain = _any([_absent("scp"), _claim("scp", _STRING)])
    shapes = {
        "sidecar-rules-1-iat": ([_claim("iat", _PRESENT), plain], condition(rules, iat=True, scp_list=False)),
        "sidecar-rules-2-no-iat": ([_absent("iat"), plain], condition(rules, iat=False, scp_list=False)),
        "sidecar-rules-3-scp-list": (
            [_claim("scp", _PRESENT), {"not_id": _claim("scp", _STRING)}],
            condition(rules, scp_list=True),
        ),
    }
    policies = {
        name: {
            "permissions": [{"any": True}],
            "principals": [Flow(_all([*shape, rules_]))],
            "condition": Flow(expr),
        }
        for name, (shape, expr) in shapes.items()
    }
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
        "rbac": {"rules": {"action": "ALLOW", "policies": policies}},
    }


__all__ = ["condition", "eligibility", "jwks_cluster", "provider", "rbac_per_route"]
