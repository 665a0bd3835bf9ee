"""Warnings about a config that is valid but cannot do what it says: `authz-sidecar validate` prints them.

Besides the resource policy's own warnings (statements that cannot match this API at all, `policy/document.py`),
two kinds, both certain (a warning that may be wrong would teach users to ignore them all):

- a route that can never be allowed: a `none` route under a resource policy with no Allow that could cover
  anonymous callers on it, a `sigv4` route that neither an identity policy of the credentials nor a resource
  policy Allow could cover, a `none` route requiring scopes (anonymous callers carry none), every route of a
  private API without a resource policy. A `deny` route is meant to be closed and never warned about.
- a resource policy statement whose Resource names no route of the config (a typo in the stage or path).

"Could cover" over-approximates on purpose: conditions are ignored (they can only narrow an Allow), a route's
`{param}`, `{proxy+}`, `ANY` and `$default` match any text, policy variables match anything, and any principal
that is not provably unable to be the caller counts. So a warning says only what no request can change. The
analysis reads the compiled `Runtime`, once, off the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .authorizers.base import Authorizer
from .authorizers.sigv4.authorizer import SigV4Authorizer
from .authorizers.sigv4.credentials import FileCredentialStore
from .authorizers.static import DenyAuthorizer, NoneAuthorizer
from .issues import ConfigError, ConfigIssue, YamlLocator, format_loc, parse_loc, parse_yaml
from .policy import CompiledPolicy
from .policy.arn import compile_alternatives
from .policy.compile import CompiledStatement
from .policy.context import INVOKE
from .policy.jsonpos import JsonSyntaxError, Located, parse_located
from .request import judged_method
from .routes import RouteKey, parse_match
from .runtime import Runtime
from .settings import ApiSettings, RouteSettings

ANY_TEXT = 0
"""In a route's resource pattern: any text (a `{proxy+}`, the path of `$default`)."""
ANY_SEGMENT = 1
"""In a route's resource pattern: any text without `/` (a `{param}`, the method of `ANY` or `$default`)."""

RoutePattern = tuple[str | int, ...]
"""The resource part of a route's ARNs (after `arn:aws:execute-api:region:account:`): one character, or
`ANY_TEXT` / `ANY_SEGMENT`, per item."""

_Admits = Callable[[CompiledStatement], bool]
"""Whether a statement's Principal could name the caller of a route (identity policies have none: yes)."""


@dataclass(frozen=True, slots=True)
class _Route:
    index: int
    settings: RouteSettings
    authorizer: Authorizer
    patterns: tuple[RoutePattern, ...]
    """With and without a trailing slash: `/admin/` is judged as `/admin/` by policies."""


def lint(runtime: Runtime) -> list[ConfigIssue]:
    """Every warning for a compiled config, located in the config or the policy file, in file order."""
    config = runtime.config
    locator = _config_locator(config.source)
    routes = [_route(i, r, runtime) for i, r in enumerate(config.routes)]
    warnings: list[ConfigIssue] = []
    if config.policy.private_api and runtime.resource_policy is None:
        message = "every route is denied: a private API allows only what the resource policy allows, and there is none"
        warnings.append(locator.issue(("policy", "private_api"), message))
    else:
        for route in routes:
            warnings.extend(locator.issue(loc, why) for loc, why in _never_allowed(route, runtime))
    if runtime.resource_policy is not None:
        warnings.extend(runtime.resource_policy.warnings)  # legal statements that cannot match this API
        if routes:
            warnings.extend(_unmatched_statements(runtime.resource_policy, routes, config.api))
    return sorted(warnings, key=lambda w: (w.file != config.source, w.file, w.line, w.column))


def _config_locator(source: str) -> YamlLocator:
    """Positions in the config file (none for a config that did not come from a file)."""
    if source.startswith("<"):
        return YamlLocator(source, None)
    try:
        _, locator = parse_yaml(Path(source).read_text(encoding="utf-8"), source)
    except (OSError, UnicodeDecodeError, ConfigError):
        return YamlLocator(source, None)
    return locator


def _route(index: int, settings: RouteSettings, runtime: Runtime) -> _Route:
    key = parse_match(settings.match)
    pattern = route_pattern(runtime.config.api, key)
    patterns = (pattern,) if key.is_default or not key.segments else (pattern, (*pattern, "/"))
    return _Route(index, settings, runtime.authorizers[settings.authorizer], patterns)


def route_pattern(api: ApiSettings, key: RouteKey) -> RoutePattern:
    """The resource part of every ARN a request on this route is judged by (`policy.arn.resource_arn`), with
    the parts a request chooses as `ANY_TEXT` or `ANY_SEGMENT`."""
    out: list[str | int] = list(f"{api.id}/{api.stage}/")
    if key.is_default:
        return (*out, ANY_SEGMENT, "/", ANY_TEXT)
    out.extend([ANY_SEGMENT] if key.method == "ANY" else list(judged_method(key.method)))
    if not key.segments:
        out.append("/")
    for segment in key.segments:
        out.append("/")
        if segment.endswith("+}"):
            out.append(ANY_TEXT)
        else:
            out.extend([ANY_SEGMENT] if segment.startswith("{") else list(segment))
    return tuple(out)


def resource_could_match(resource: str, api: ApiSettings, route: RoutePattern) -> bool:
    """Whether a policy's Resource pattern could match some ARN of the route (`route_pattern`)."""
    if resource == "*":
        return True
    parts = _without_variables(resource).split(":", 5)
    if len(parts) < 6:
        return True  # `arn:aws:execute-api:*`: the trailing star covers the rest
    head = compile_alternatives([":".join(parts[:5])], arn=True, ignore_case=False)
    if head.fullmatch(f"arn:aws:execute-api:{api.region}:{api.account}") is None:
        return False
    return globs_intersect(parts[5], route)


def _without_variables(pattern: str) -> str:
    """`${aws:username}` (or an escape such as `${*}`) becomes `*`: whatever it is replaced with, a star matches."""
    out, rest = [], pattern
    while "${" in rest:
        before, _, after = rest.partition("${")
        close = after.find("}")
        if close < 0:
            break
        out.append(before + "*")
        rest = after[close + 1 :]
    return "".join(out) + rest


def globs_intersect(pattern: str, route: RoutePattern) -> bool:
    """Whether some text matches both an IAM glob (`*` any text, `?` one character) and a route pattern.

    A search over pairs of positions, one in each (the product of the two automata): at most
    len(pattern) * len(route) states, each visited once."""
    end_p, end_r = len(pattern), len(route)
    seen: set[tuple[int, int]] = set()
    stack = [(0, 0)]
    while stack:
        state = stack.pop()
        if state in seen:
            continue
        seen.add(state)
        i, j = state
        if i == end_p and j == end_r:
            return True
        p = pattern[i] if i < end_p else None
        r = route[j] if j < end_r else None
        if p == "*":
            stack.append((i + 1, j))  # the star ends
        if isinstance(r, int):
            stack.append((i, j + 1))  # the route's wildcard ends
        stack.extend(_consume(i, j, p, r))
    return False


def _consume(i: int, j: int, p: str | None, r: str | int | None) -> list[tuple[int, int]]:
    """The states after both sides read one character they can agree on (none if they cannot)."""
    if p is None or r is None or (p == "*" and isinstance(r, int)):
        return []  # the end of a side, or two wildcards reading on (it leads nowhere new)
    if p == "*":
        return [(i, j + 1)]  # the star reads the route's character
    if isinstance(r, int):
        return [] if r == ANY_SEGMENT and p == "/" else [(i + 1, j)]  # the route's wildcard reads `p` (`?`: any)
    return [(i + 1, j + 1)] if p in ("?", r) else []


# -- routes that can never be allowed ------------------------------------------------------------------------


def _never_allowed(route: _Route, runtime: Runtime) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(where, why) for a route no request can be allowed on: the first reason found, one warning per route."""
    authorizer = route.authorizer
    loc: tuple[str | int, ...] = ("routes", route.index, "match")
    policy = runtime.resource_policy
    if isinstance(authorizer, DenyAuthorizer):
        return
    if isinstance(authorizer, NoneAuthorizer):
        name = route.settings.authorizer
        if route.settings.scopes:
            scopes = ("routes", route.index, "scopes")
            yield (
                scopes,
                f"this route is never allowed: its callers are anonymous (authorizer {name!r}) and carry no scopes",
            )
        elif policy is not None and not _allows(policy, route, runtime.config.api, _admits_anonymous):
            yield (
                loc,
                (
                    f"this route is never allowed: its callers are anonymous (authorizer {name!r}), and no Allow "
                    f'statement of {policy.source} with Principal "*" covers it'
                ),
            )
        return
    if isinstance(authorizer, SigV4Authorizer):
        yield from _never_allowed_sigv4(route, authorizer, runtime, loc)
        return
    if runtime.private_api and policy is not None and not _allows(policy, route, runtime.config.api, _admits_any):
        yield (
            loc,
            (
                "this route is never allowed: a private API allows only what the resource policy allows, and no "
                f"Allow statement of {policy.source} covers this route"
            ),
        )


def _never_allowed_sigv4(
    route: _Route, authorizer: SigV4Authorizer, runtime: Runtime, loc: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """A SigV4 caller is allowed by an identity policy of its credential or by the resource policy."""
    api = runtime.config.api
    policy = runtime.resource_policy
    if policy is not None and _allows(policy, route, api, _admits_iam):
        return
    store = authorizer.verifier.store
    identity = [p for c in store.current.credentials.values() for p in c.policies if isinstance(p, CompiledPolicy)]
    if runtime.private_api or not any(_allows(p, route, api, _admits_any) for p in identity):
        where = f" in {store.path}" if isinstance(store, FileCredentialStore) else ""
        resource = f"no Allow statement of {policy.source} covers it" if policy else "there is no resource policy"
        why = (
            "the API is private" if runtime.private_api else f"no credential{where} has an identity policy allowing it"
        )
        yield loc, f"this route is never allowed for SigV4 callers: {why}, and {resource}"


def _allows(policy: CompiledPolicy, route: _Route, api: ApiSettings, admits: _Admits) -> bool:
    """Whether some Allow statement could apply to some request on the route (conditions ignored)."""
    return any(
        statement.spec.effect == "Allow"
        and statement.action_match(INVOKE)
        and admits(statement)
        and _covers(statement, route, api)
        for statement in policy.statements
    )


def _covers(statement: CompiledStatement, route: _Route, api: ApiSettings) -> bool:
    spec = statement.spec
    if spec.not_resource:
        return "*" not in spec.resources  # what it leaves out cannot be told without a subset test: assume it covers
    if not spec.resources:
        return True
    return any(resource_could_match(r, api, p) for r in spec.resources for p in route.patterns)


def _admits_anonymous(statement: CompiledStatement) -> bool:
    """Anonymous callers have no account, ARN, issuer or service: only `"*"` (or `{"AWS": "*"}`) names them, and
    an Allow's NotPrincipal other than `"*"` cannot list them, so it admits them."""
    principal = statement.spec.principal
    if principal is None:
        return True
    if statement.spec.not_principal:
        return not principal.wildcard
    return principal.wildcard


def _admits_iam(statement: CompiledStatement) -> bool:
    """A SigV4 caller is an IAM identity: named by `"*"`, an account or an ARN, never by Federated, Service or
    CanonicalUser entries alone."""
    principal = statement.spec.principal
    if principal is None:
        return True
    if statement.spec.not_principal:
        return not principal.wildcard
    return principal.wildcard or bool(principal.accounts or principal.arns)


def _admits_any(statement: CompiledStatement) -> bool:
    """Some caller of an authenticating authorizer (a token's issuer, a plugin's principal) could be named."""
    principal = statement.spec.principal
    return principal is None or not (statement.spec.not_principal and principal.wildcard)


# -- statements that match no route --------------------------------------------------------------------------


def _unmatched_statements(policy: CompiledPolicy, routes: Iterable[_Route], api: ApiSettings) -> list[ConfigIssue]:
    """Statements whose every Resource pattern misses every route. Patterns that name no resource of this API at
    all were warned about when the policy loaded (`policy.warnings`), and are not warned about twice."""
    routes = list(routes)
    patterns = [p for route in routes for p in route.patterns]
    keys = listed_routes(route.settings.match for route in routes)
    already = {w.field for w in policy.warnings}
    out = []
    positions: Located | None = None
    for statement in policy.statements:
        spec = statement.spec
        field = f"{spec.path}.Resource"
        if spec.not_resource or not spec.resources or field in already:
            continue
        if any(resource_could_match(r, api, p) for r in spec.resources for p in patterns):
            continue
        base = f"arn:aws:execute-api:{api.region}:{api.account}:{api.id}/{api.stage}/"
        which = f"statement {spec.sid!r}" if spec.sid else "this statement"
        message = (
            f"{which} never matches a route of this config: no Resource names one (routes: {keys}; "
            f"their ARNs: {base}METHOD/path)"
        )
        if positions is None:
            positions = _positions(policy)  # parsed once per run, and only when there is something to locate
        out.append(_policy_issue(policy, positions, (*parse_loc(spec.path), "Resource"), message))
    return out


def _positions(policy: CompiledPolicy) -> Located | None:
    try:
        return parse_located(policy.document.text)
    except JsonSyntaxError:  # it loaded, so it parses; kept for safety
        return None


def _policy_issue(
    policy: CompiledPolicy, positions: Located | None, path: tuple[str | int, ...], message: str
) -> ConfigIssue:
    line, column = positions.position(path) if positions is not None else (0, 0)
    return ConfigIssue(policy.source, line, column, format_loc(path), message)


MAX_LISTED_ROUTES = 10
"""Route keys a warning lists, so a misspelt path is seen beside the routes it missed."""


def listed_routes(keys: Iterable[str]) -> str:
    """Route keys for a message: in config order, cut after `MAX_LISTED_ROUTES` with a count of the rest."""
    items = list(keys)
    shown = ", ".join(items[:MAX_LISTED_ROUTES])
    return shown if len(items) <= MAX_LISTED_ROUTES else f"{shown}, ... ({len(items) - MAX_LISTED_ROUTES} more)"
