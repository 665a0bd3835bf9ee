"""`authz-sidecar envoy-config CONFIG`: the shipped Envoy bootstrap, fitted to one sidecar config.

The shipped files (`render_envoy_config`) must serve any config, so they send everything: every header, the
body, the peer certificate. This renders the same bootstrap with only what the config's routes read crossing the
hop (`sidecar.hop`): a token the sidecar never reads, or a body no route verifies, stays in Envoy.

- **Routes.** Each sidecar route gets an Envoy route (`envoy_routes`: sound matchers in the sidecar's precedence
  order) and a catch-all takes the rest. The body goes only to routes that need it: a profile one of whose routes
  needs it keeps the template's `with_request_body`, and its other routes turn buffering off
  (`check_settings.disable_request_body_buffering`). Not the other way round: Envoy 1.40 sends a body enabled by a
  per-route `with_request_body` as text, ignoring its `pack_as_bytes` (seen in the e2e test), and SigV4 must
  hash the exact bytes. The catch-all gets the body if any route does.
- **Profiles.** Envoy sets `allowed_headers` and `include_peer_certificate` per filter, not per route, so the
  filter is repeated once per distinct need (every header or a named set; with or without the certificate)
  and each route enables exactly one (`ExtAuthzPerRoute.disabled` on the others). A route's named set is what
  every request needs (`config_needs`: the base headers, the policies' and the rate rules' and API keys') and
  what its own authorizer and gates read: Envoy files a request under a route only when the sidecar picks that
  route too (`envoy_routes`), so no other route's authorizer judges it, and a token another route reads stays in
  Envoy. The catch-all gets the union.
- What every request needs (`BASE_HEADERS`): the forwarded chain and scheme Envoy writes and the request id.

The renderer changes only the ext_authz filters and the route list of the template's `ingress` listener, and
writes YAML without the template's comments; `explain` says, route by route, what crosses and why.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from ..hop import ClosedRoute, HopNeeds, NotOffloadable, OffloadRules, OpenRoute, TokenRules, union
from ..policy.context import HEADER_PREFIX
from ..reasons import Denied
from ..runtime import CompiledRoute, Runtime
from ..settings import Config
from ..transports.ext_authz import deny_body
from .envoy import SHIPPED, EnvoyPorts, render_envoy_config
from .envoy_routes import EnvoyRoute, envoy_routes
from .offload import (
    CLIENT_ID_HEADER,
    JWT_AUTHN,
    RBAC,
    Flow,
    decision_log,
    eligibility,
    jwks_cluster,
    principal_fallback,
    provider,
    rbac_per_route,
    refusal_mappers,
)

EXT_AUTHZ = "envoy.filters.http.ext_authz"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
BASE_HEADERS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-request-id"})
"""Read on every request: the source address and scheme (policies, rate rules, logs) and the request id (logs)."""
PARTIAL_BODY = "x-envoy-auth-partial-body"
HTTP_ADDED = ("x-authz-source-address", "x-authz-peer-certificate")
"""What the HTTP-mode template adds to each check (`headers_to_add`); kept in `allowed_headers` too."""
_KEY_HEADERS = {"aws:referer": "referer", "aws:useragent": "user-agent"}


@dataclass(frozen=True, slots=True)
class Profile:
    """One ext_authz filter instance: every header or a named set, with or without the peer certificate."""

    headers: frozenset[str] | None
    """The headers that cross (None: every header)."""
    peer_cert: bool

    @property
    def all_headers(self) -> bool:
        return self.headers is None

    @property
    def name(self) -> str:
        """The filter's name (what routes key their per-route settings by): `.all`, or `.named-` and a digest of
        the set (one filter per distinct set), and `.cert` when the certificate crosses."""
        if self.headers is None:
            kind = "all"
        else:
            digest = hashlib.sha256("\n".join(sorted(self.headers)).encode()).hexdigest()[:8]
            kind = f"named-{digest}"
        return f"{EXT_AUTHZ}.{kind}{'.cert' if self.peer_cert else ''}"


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """What one Envoy route sends: its profile, whether the body goes, and why; with `--offload`, whether Envoy
    decides it itself (`offload`: the rules, or why not)."""

    key: str
    needs: HopNeeds
    profile: Profile
    offload: OffloadRules | NotOffloadable | None = None
    authorizer: str = ""
    scopes: frozenset[str] = frozenset()

    @property
    def offloaded(self) -> OffloadRules | None:
        return None if self.offload is None or isinstance(self.offload, NotOffloadable) else self.offload


@dataclass(frozen=True, slots=True)
class Plan:
    """The whole rendering: the named headers, each Envoy route's plan in order, the catch-all's, and the routes
    left to the catch-all with why."""

    named: frozenset[str]
    routes: tuple[tuple[EnvoyRoute[CompiledRoute], RoutePlan], ...]
    catch_all: RoutePlan
    left: tuple[tuple[str, str], ...]

    @property
    def profiles(self) -> tuple[Profile, ...]:
        """Every profile in use, catch-all's first."""
        seen = [self.catch_all.profile]
        for _, plan in self.routes:
            if plan.profile not in seen:
                seen.append(plan.profile)
        return tuple(seen)


def _policy_headers(keys: Iterable[str], who: str) -> HopNeeds:
    names = [k[len(HEADER_PREFIX) :] for k in keys if k.startswith(HEADER_PREFIX)]
    names += [_KEY_HEADERS[k] for k in keys if k in _KEY_HEADERS]
    return HopNeeds.of(names, f"{who} reads {', '.join(sorted(set(names)))}")


def _limit_headers(config: Config) -> HopNeeds:
    """Headers the rate rules' keys and the API key source read (a rule whose key part is missing does not count
    the request: leaving its header out would switch the rule off)."""
    names: list[str] = []
    keys = config.api_keys
    wants_key = any(r.api_key_required for r in config.routes)
    for rule in config.rate_limits:
        for part in rule.key:
            if part.lower().startswith("header:"):
                names.append(part.split(":", 1)[1])
            elif part == "forwarded_ip":
                names.append(rule.forwarded_ip.header)
            elif part == "api_key":
                wants_key = True
    if keys is not None and keys.source == "header" and wants_key:
        names.append(keys.header)
    return HopNeeds.of(names, f"rate rules and API keys read {', '.join(sorted(set(names)))}")


def config_needs(runtime: Runtime) -> HopNeeds:
    """What every request needs whatever its route: the base headers, the policies' header keys, the gates'."""
    config = runtime.config
    parts = [HopNeeds.of(BASE_HEADERS, "every request: the forwarded address and scheme, the request id")]
    if runtime.resource_policy is not None:
        parts.append(_policy_headers(runtime.resource_policy.context_keys, "the resource policy"))
    if runtime.endpoint_policies is not None:
        parts.append(_policy_headers(runtime.endpoint_policies.context_keys, "a VPC endpoint policy"))
    settings = runtime.context_settings
    origin = [h for h in (settings.vpce_header, settings.vpc_header) if h]
    parts.append(HopNeeds.of(origin, "policy.vpce_header / vpc_header name the network origin"))
    parts.append(_limit_headers(config))
    return union(parts)


def route_needs(runtime: Runtime, route: CompiledRoute, base: HopNeeds) -> HopNeeds:
    """`base` and what this route's authorizer and certificate gate read (the body with `PARTIAL_BODY`)."""
    needs = base | route.authorizer.hop_needs()
    for gate in route.admit_gates:
        declared = getattr(gate, "hop_needs", None)  # the certificate gate; rate rules are in `base`
        if declared is not None:
            needs = needs | declared(route.key)
    if needs.body and needs.headers is not None:
        needs = needs | HopNeeds.of([PARTIAL_BODY], "a body cut at the buffer limit is marked partial")
    return needs


def plan(runtime: Runtime, offload: bool = False) -> Plan:
    """Which profile and body setting each route gets (see the module's docstring); with `offload`, which
    routes Envoy decides itself (`offload.py`)."""
    base = config_needs(runtime)
    matchers, left = envoy_routes(runtime.routes)
    by_key = {text: route_needs(runtime, target, base) for _, text, target in runtime.routes.entries}
    routes = tuple((m, _route_plan(m.key, by_key[m.key], runtime, m.target, offload)) for m in matchers)
    everything = union([base, *by_key.values()])
    catch_all = _route_plan("(catch-all)", everything)
    named = frozenset().union(*(n.headers for n in (base, *by_key.values()) if n.headers is not None))
    return Plan(named, routes, catch_all, tuple(left))


def _route_plan(
    key: str, needs: HopNeeds, runtime: Runtime | None = None, route: CompiledRoute | None = None, offload: bool = False
) -> RoutePlan:
    verdict = eligibility(runtime, route) if offload and runtime is not None and route is not None else None
    name, scopes = (route.authorizer.name, route.scopes) if route is not None else ("", frozenset())
    return RoutePlan(key, needs, Profile(needs.headers, needs.peer_cert), verdict, name, scopes)


def render(
    runtime: Runtime, ports: EnvoyPorts | None = None, template: str = "envoy.yaml", offload: bool = False
) -> str:
    """The bootstrap YAML for `runtime`'s config (see the module's docstring); `ports`: the shipped file's;
    `offload`: Envoy decides the routes it can itself (`offload.py`)."""
    doc = yaml.safe_load(render_envoy_config(ports or SHIPPED[template], template))
    built = plan(runtime, offload)
    hcm = _ingress_hcm(doc)
    filters = hcm["http_filters"]
    index = next(i for i, f in enumerate(filters) if f["name"] == EXT_AUTHZ)
    original = filters[index]["typed_config"]
    plans = [rp for _, rp in built.routes] + [built.catch_all]
    buffering = {rp.profile for rp in plans if rp.needs.body}
    filters[index : index + 1] = [_filter(original, p, p in buffering) for p in built.profiles]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    action = vhost["routes"][-1]["route"]
    names = [p.name for p in built.profiles]
    out = []
    for m, rp in built.routes:
        rules = rp.offloaded
        if isinstance(
            rules, TokenRules
        ):  # Envoy decides a canonical `Bearer` token; any other spelling asks the sidecar
            out.append({**_route(_canonical_token(m.match(), rules), action, rp, names, False), "_offload": 1})
        elif rules is not None:
            out.append({**_route(m.match(), action, rp, names, False), "_offload": 1})
            continue
        out.append(_route(m.match(), action, rp, names, rp.profile in buffering))
    out.append(_route({"prefix": "/"}, action, built.catch_all, names, built.catch_all.profile in buffering))
    vhost["routes"] = out
    offloaded = [rp for _, rp in built.routes if rp.offloaded is not None]
    if offloaded:
        _add_offload(doc, hcm, runtime, offloaded, out, names)
    for route in out:
        del route["_key"]
        route.pop("_offload", None)
    # No wrapping: a flow-style condition is one long line (wrapped, each piece would be indented again).
    return _HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1 << 30)


class _Dumper(yaml.SafeDumper):
    """SafeDumper, with `Flow` mappings in flow style."""


_Dumper.add_representer(
    Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", dict(data), flow_style=True)
)


_HEADER = """# Envoy in front of authz-sidecar, fitted to one sidecar config by `authz-sidecar envoy-config`: only
# what the config's routes read crosses the hop (docs/envoy-config.md). Generated: edit the sidecar config and
# render again.
"""


def _add_offload(
    doc: dict[str, Any],
    hcm: dict[str, Any],
    runtime: Runtime,
    offloaded: list[RoutePlan],
    routes: list[dict[str, Any]],
    ext_authz: list[str],
) -> None:
    """jwt_authn and rbac before the ext_authz filters (when a token route is offloaded), client identity headers
    removed first, and each offloaded route switched from ext_authz to what decides it in Envoy."""
    tokens = {rp.authorizer: rp.offloaded for rp in offloaded if isinstance(rp.offloaded, TokenRules)}
    filters = hcm["http_filters"]
    if tokens:
        _add_token_filters(doc, hcm, runtime, tokens)
    _remove_identity_headers(filters, runtime)
    by_key = {rp.key: rp for rp in offloaded}
    for route in routes:
        found = by_key.get(route["_key"])
        if found is not None and route.get("_offload"):
            _offloaded_route(route, found, runtime, ext_authz)


def _add_token_filters(
    doc: dict[str, Any],
    hcm: dict[str, Any],
    runtime: Runtime,
    tokens: Mapping[str, TokenRules],
) -> None:
    filters = hcm["http_filters"]
    providers = {name: provider(name, rules, runtime.upstream_headers.principal) for name, rules in tokens.items()}
    clusters = doc["static_resources"]["clusters"]
    for name, rules in tokens.items():
        if rules.jwks_file is None and rules.jwks_uri is not None:
            clusters.append(jwks_cluster(name, rules.jwks_uri))
    at = next(i for i, f in enumerate(filters) if f["name"].startswith(EXT_AUTHZ))
    jwt = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": providers,
        "requirement_map": {name: {"provider_name": name} for name in providers},
    }
    rbac = {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"}
    added = [{"name": JWT_AUTHN, "typed_config": jwt}, {"name": RBAC, "typed_config": rbac}]
    principal = runtime.upstream_headers.principal
    if principal is not None:
        added.insert(1, principal_fallback(principal))
    filters[at:at] = added
    # The canonical-token matcher (`CANONICAL_BEARER`) compiles to ~150 RE2 instructions, over Envoy's default
    # limit of 100 for a route's regex; every regex here is the renderer's own, none a user's.
    layers = doc.setdefault("layered_runtime", {"layers": []})["layers"]
    layers.append({"name": "envoy-config", "static_layer": {"re2.max_program_size.error_level": REGEX_PROGRAM_LIMIT}})
    hcm["local_reply_config"] = {"mappers": refusal_mappers()}
    log = decision_log(runtime.config.decision_log)
    if log is not None:
        hcm.setdefault("access_log", []).append(log)


def _offloaded_route(route: dict[str, Any], rp: RoutePlan, runtime: Runtime, ext_authz: list[str]) -> None:
    names = runtime.upstream_headers
    rules = rp.offloaded
    per_filter: dict[str, Any] = {name: {"@type": PER_ROUTE, "disabled": True} for name in ext_authz}
    added = [(names.authorizer, rp.authorizer), (names.route, rp.key)]
    if isinstance(rules, TokenRules):
        per_filter[JWT_AUTHN] = {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
            "requirement_name": rp.authorizer,
        }
        per_filter[RBAC] = rbac_per_route(rules, rp.scopes)
    elif isinstance(rules, OpenRoute):
        added.append((names.principal, rules.principal))
    elif isinstance(rules, ClosedRoute):
        refusal = Denied(rules.reason, rules.message, rules.status).decision(route=rp.key, challenge=None)
        route.pop("route")
        route["direct_response"] = {"status": rules.status, "body": {"inline_string": deny_body(refusal)}}
        route["response_headers_to_add"] = [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
        added = []
    route["typed_per_filter_config"] = per_filter
    if added:
        route["request_headers_to_add"] = [
            {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"} for k, v in added if k
        ]


_B64 = "[A-Za-z0-9_-]"
_CANONICAL_SEGMENT = f"(?:{_B64}{{4}})*(?:{_B64}[AQgw]|{_B64}{{2}}[AEIMQUYcgkosw048])?"
"""Canonical unpadded base64url: a last group of 2 or 3 characters leaves its unused low bits zero (the sidecar
refuses any other spelling as malformed; absl's decoder, jwt_authn's, ignores those bits, so one token would
have many spellings)."""
CANONICAL_BEARER = f"^Bearer {_CANONICAL_SEGMENT}\\.{_CANONICAL_SEGMENT}\\.{_CANONICAL_SEGMENT}$"
"""The one spelling jwt_authn reads as the sidecar does: its `value_prefix` is case-sensitive and it cannot also
take a bare token (a second, empty prefix would read `Bearer x` as a token of its own, and every token must
verify); each segment canonical base64url. The sidecar's other spellings (`bearer`, a bare token, extra spaces,
non-canonical base64url) skip the offloaded route and reach the sidecar through the route's ext_authz twin below
it."""


REGEX_PROGRAM_LIMIT = 400


def _canonical_token(match: Mapping[str, Any], rules: TokenRules) -> dict[str, Any]:
    wanted = {"name": rules.header, "string_match": {"safe_regex": {"regex": CANONICAL_BEARER}}}
    return {**match, "headers": [*match.get("headers", []), wanted]}


def _remove_identity_headers(filters: list[dict[str, Any]], runtime: Runtime) -> None:
    """Every identity header any part of the config sets, removed from client requests before anything runs (the
    sidecar removes them on its allows; on an offloaded route jwt_authn sets them)."""
    mutation = next(f for f in filters if f["name"] == "envoy.filters.http.header_mutation")
    removals = mutation["typed_config"]["mutations"]["request_mutations"]
    present = {r.get("remove") for r in removals}
    names = {*runtime.identity_headers, CLIENT_ID_HEADER}
    removals += [{"remove": name} for name in sorted(names) if name not in present]


def _ingress_hcm(doc: Mapping[str, Any]) -> dict[str, Any]:
    listener = next(x for x in doc["static_resources"]["listeners"] if x["name"] == "ingress")
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def _filter(original: Mapping[str, Any], profile: Profile, body: bool) -> dict[str, Any]:
    config = copy.deepcopy(dict(original))
    if not body:
        config.pop("with_request_body", None)
    http = config.get("http_service")
    named = profile.headers
    if named is None:
        config.pop("allowed_headers", None)
        if http is not None:  # Envoy's HTTP mode sends a fixed few unless told otherwise
            config["allowed_headers"] = {"patterns": [{"safe_regex": {"regex": ".*"}}]}
    else:
        names = sorted(named | (set(HTTP_ADDED) if http is not None else set()))
        config["allowed_headers"] = {"patterns": [{"exact": name} for name in names]}
        if http is not None and "authorization" not in named:
            # Envoy's HTTP mode sends Authorization whatever `allowed_headers` says: a token no route reads
            # would still cross the hop.
            config["disallowed_headers"] = {"patterns": [{"exact": "authorization"}]}
    if http is not None:
        request = http.get("authorization_request", {})
        added = request.get("headers_to_add", [])
        request["headers_to_add"] = [
            h for h in added if profile.peer_cert or h.get("key") != "x-authz-peer-certificate"
        ]
    else:
        config["include_peer_certificate"] = profile.peer_cert
    return {"name": profile.name, "typed_config": config}


def _route(
    match: Mapping[str, Any], action: Mapping[str, Any], plan: RoutePlan, names: list[str], buffering: bool
) -> dict[str, Any]:
    """`buffering`: the route's filter buffers bodies (one of its routes needs them), so a route that does not
    turns it off."""
    per_filter: dict[str, Any] = {}
    for name in names:
        if name != plan.profile.name:
            per_filter[name] = {"@type": PER_ROUTE, "disabled": True}
        elif buffering and not plan.needs.body:
            per_filter[name] = {"@type": PER_ROUTE, "check_settings": {"disable_request_body_buffering": True}}
    route: dict[str, Any] = {
        "name": plan.key,  # Envoy's %ROUTE_NAME% and route stats name the sidecar's route key
        "match": dict(match),
        "route": copy.deepcopy(dict(action)),
        "_key": plan.key,
    }
    if per_filter:
        route["typed_per_filter_config"] = per_filter
    return route


def explain(runtime: Runtime, offload: bool = False) -> str:
    """Route by route, what crosses the hop and why (`envoy-config --explain`); with `offload`, which routes
    Envoy decides itself and why the others cannot be."""
    built = plan(runtime, offload)
    base = config_needs(runtime).why
    common = config_needs(runtime).headers or frozenset()
    lines = [f"headers every route gets ({len(common)}): {', '.join(sorted(common))}"]
    lines += [f"   because {why}" for why in base]
    for position, (matcher, rp) in enumerate(built.routes, 1):
        lines.append(f"{position}. {matcher.key}  path ~ {matcher.regex}  -> {_summary(rp)}")
        if isinstance(rp.offload, NotOffloadable):
            lines.append(f"     stays on ext_authz: {rp.offload.reason}")
        if not isinstance(rp.offloaded, OpenRoute | ClosedRoute):
            lines += [f"     because {why}" for why in rp.needs.why if why not in base]
    lines.append(f"{len(built.routes) + 1}. catch-all (every other request)  -> {_summary(built.catch_all)}")
    lines += [f"   left to the catch-all: {key}: {why}" for key, why in built.left]
    return "\n".join(lines) + "\n"


def _summary(rp: RoutePlan) -> str:
    how = {TokenRules: f"jwt_authn provider {rp.authorizer} + rbac", OpenRoute: "open", ClosedRoute: "closed"}
    if isinstance(rp.offloaded, TokenRules):
        twin = _summary(RoutePlan(rp.key, rp.needs, rp.profile))
        return f"decided by Envoy itself ({how[TokenRules]}) for a 'Bearer <jws>' token; other spellings: {twin}"
    if rp.offloaded is not None:
        return f"decided by Envoy itself ({how[type(rp.offloaded)]}): nothing crosses the hop"
    named = rp.profile.headers
    headers = "every header" if named is None else f"the named headers ({len(named)})"
    extras = [x for x, on in (("the body", rp.needs.body), ("the peer certificate", rp.needs.peer_cert)) if on]
    return f"{headers}{''.join(', ' + x for x in extras)} (filter {rp.profile.name})"


__all__ = ["Plan", "Profile", "RoutePlan", "config_needs", "explain", "plan", "render", "route_needs"]
