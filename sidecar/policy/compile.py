"""Compiling a validated `PolicyDocument` into an indexed, closure-based evaluator: the policy hot path.

Each statement becomes a tuple of checks (principal, resource, one per condition key) that read the lazy
`EvalContext`. Statements are filtered by action once per action (requests almost always carry
`execute-api:Invoke`), then indexed by resource so a request only visits statements that could match it:

- `exact`: resource patterns without wildcards, one dict lookup on the request's ARN;
- `prefix`: the pattern's literal text before its first wildcard, cut back to a `:` or `/` boundary
  (`...:api-id/prod/GET/orders/`); the request probes its own prefixes at each boundary length in use;
- `suffix`: the literal text after the last wildcard, for patterns like `.../prod/*/orders/7` whose prefix
  says little; probed the same way from the end;
- `always`: `Resource: "*"`, `NotResource` and other patterns with no usable literal.

A statement goes into whichever of prefix/suffix names more path segments, so the number of candidates depends on
how many statements share the request's resource, not on the policy size. Evaluation then applies the IAM rule:
an explicit Deny wins, then an Allow, else the policy has no opinion ("Neither", an implicit deny).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..issues import ConfigError, ConfigIssue
from ..memo import BoundedMemo
from .arn import ArnSet, compile_alternatives, literal_prefix, literal_suffix, rendered_matches
from .conditions import Check, compile_condition, template_keys
from .context import HEADER_PREFIX, INVOKE, REQUEST_KEYS, EvalContext
from .document import RESOURCE_POLICY_MAX, Kind, PolicyDocument, PrincipalSpec, StatementSpec, parse_document
from .variables import Template, has_variables, parse_template

if TYPE_CHECKING:
    from ..request import Principal
    from ..settings import ApiSettings

_BOUNDARY = frozenset(":/")
MEMO_ENTRIES = 4096
"""Resource ARNs whose candidate lists each index remembers."""
MEMO_KEY_CHARS = 512
"""Longer ARNs are looked up every time rather than remembered (bounds the memo to about 2 MB)."""
_BASE_BOUNDARIES = 7  # arn:aws:execute-api:region:account:api-id/stage/ holds 5 colons and 2 slashes


class Effect(StrEnum):
    """A policy's verdict on one request. `NEITHER` is IAM's implicit deny: no statement applied."""

    ALLOW = "Allow"
    DENY = "Deny"
    NEITHER = "Neither"


@dataclass(frozen=True, slots=True)
class StatementRef:
    """Names a statement in explanations and decision logs: its Sid when it has one, else its JSON path."""

    index: int
    sid: str | None
    effect: str
    path: str

    @property
    def label(self) -> str:
        """`Sid` or `Statement[i]`."""
        return self.sid if self.sid else self.path


def _always(ctx: EvalContext) -> bool:
    """The check of an element that matches everything (`"*"`); the hot path leaves it out."""
    return True


def _never(ctx: EvalContext) -> bool:
    """The check of an element that matches nothing (`NotPrincipal: "*"`)."""
    return False


class CompiledStatement:
    """One statement as checks over the context.

    `checks` (with `labels`) are every element in document order, for explanations. `fast` is what the hot path
    runs: the action was already filtered by the index, `"*"` elements are dropped, and so is the resource check
    when the index only offers this statement for exactly its literal ARNs.
    """

    __slots__ = ("action_match", "checks", "deny", "fast", "labels", "ref", "spec")

    def __init__(
        self,
        spec: StatementSpec,
        action_match: Callable[[str], bool],
        checks: Sequence[tuple[str, Check]],
        implied: frozenset[str] = frozenset(),
    ) -> None:
        self.spec = spec
        self.ref = StatementRef(spec.index, spec.sid, spec.effect, spec.path)
        self.deny = spec.effect == "Deny"
        self.action_match = action_match
        self.labels = tuple(label for label, _ in checks)
        self.checks = tuple(check for _, check in checks)
        self.fast = tuple(check for label, check in checks if check is not _always and label not in implied)

    def matches(self, ctx: EvalContext) -> bool:
        """Whether every element applies (the action was checked by the index)."""
        for check in self.fast:  # noqa: SIM110 - a plain loop beats all() over a generator on the hot path
            if not check(ctx):
                return False
        return True

    def first_failure(self, ctx: EvalContext) -> str | None:
        """The first element that does not apply, in document order (None if the statement matches)."""
        if not self.action_match(ctx.action):
            return "NotAction" if self.spec.not_action else "Action"
        for label, check in zip(self.labels, self.checks, strict=True):
            if not check(ctx):
                return label
        return None


class Evaluation(NamedTuple):
    """One policy's (or one authorizer's) verdict: effect, deciding statement, the statements that matched.

    `explain()` recomputes the full trace (every statement, first failing element) only when asked, so the hot
    path pays for nothing but the verdict. A NamedTuple because one is built per policy per request and it is
    several times cheaper to construct than a frozen dataclass.
    """

    effect: Effect
    deciding: StatementRef | None = None
    matched: tuple[StatementRef, ...] = ()
    source: str = ""
    policy: CompiledPolicy | None = None
    context: EvalContext | None = None
    parts: tuple[Evaluation, ...] = ()
    """For a combined result with no single deciding policy: each policy's own evaluation (for explanations)."""

    @property
    def allowed(self) -> bool:
        """An explicit Allow."""
        return self.effect is Effect.ALLOW

    @property
    def denied(self) -> bool:
        """An explicit Deny."""
        return self.effect is Effect.DENY

    def explain(self) -> tuple[str, ...]:
        """Human-readable lines: the verdict, the deciding statement, and why each other statement did not match."""
        from .explain import explain_evaluation

        return explain_evaluation(self)


AUTHENTICATED = Evaluation(Effect.ALLOW, source="authorizer")
"""The identity-side result of an authorizer that authenticates without policies (JWT, Cognito): an Allow."""
NOT_AUTHENTICATED = Evaluation(Effect.NEITHER, source="authorizer")


class _Index:
    """Candidate statements for a resource ARN (see the module docstring)."""

    __slots__ = ("_memo", "always", "exact", "multi", "prefix", "prefix_lengths", "suffix", "suffix_lengths")

    def __init__(self, statements: Iterable[CompiledStatement]) -> None:
        always: list[CompiledStatement] = []
        buckets: dict[str, dict[str, list[CompiledStatement]]] = {"exact": {}, "prefix": {}, "suffix": {}}
        self.multi = False
        for statement in statements:
            keys = _index_keys(statement.spec)
            if keys is None:
                always.append(statement)
                continue
            self.multi = self.multi or len(keys) > 1
            for kind, key in keys:
                buckets[kind].setdefault(key, []).append(statement)
        self.always = tuple(always)
        self.exact = {k: tuple(v) for k, v in buckets["exact"].items()}
        self.prefix = {k: tuple(v) for k, v in buckets["prefix"].items()}
        self.suffix = {k: tuple(v) for k, v in buckets["suffix"].items()}
        self.prefix_lengths = tuple(sorted({len(k) for k in self.prefix}))
        self.suffix_lengths = tuple(sorted({len(k) for k in self.suffix}))
        self._memo: BoundedMemo[str, tuple[CompiledStatement, ...]] = BoundedMemo(MEMO_ENTRIES)

    def candidates(self, resource: str) -> tuple[CompiledStatement, ...]:
        """Statements that could match `resource`, memoized per ARN (paths repeat; the memo is bounded)."""
        hit = self._memo.get(resource)
        if hit is None:
            hit = self._lookup(resource)
            if len(resource) > MEMO_KEY_CHARS:
                return hit  # clients choose paths: long unique ones must not pin megabytes of memo
            self._memo.put(resource, hit)
        return hit

    def _lookup(self, resource: str) -> tuple[CompiledStatement, ...]:
        out = list(self.always)
        hit = self.exact.get(resource)
        if hit:
            out.extend(hit)
        size = len(resource)
        for n in self.prefix_lengths:
            if n > size:
                break
            if resource[n - 1] in _BOUNDARY:
                hit = self.prefix.get(resource[:n])
                if hit:
                    out.extend(hit)
        for n in self.suffix_lengths:
            if n >= size:
                break
            if resource[-n - 1] in _BOUNDARY:
                hit = self.suffix.get(resource[-n:])
                if hit:
                    out.extend(hit)
        if self.multi:
            out = list({id(s): s for s in out}.values())
        return tuple(out)


def _boundaries(text: str) -> int:
    return text.count(":") + text.count("/")


def _index_keys(spec: StatementSpec) -> list[tuple[str, str]] | None:
    """Where a statement lives in the index; None for the `always` list."""
    if spec.not_resource or not spec.resources:
        return None
    keys: list[tuple[str, str]] = []
    for pattern in spec.resources:
        key = _pattern_key(pattern)
        if key is None:
            return None
        keys.append(key)
    return keys


def _pattern_key(pattern: str) -> tuple[str, str] | None:
    prefix = literal_prefix(pattern)
    if prefix == pattern:
        return "exact", pattern
    cut = max(prefix.rfind(":"), prefix.rfind("/"))
    prefix_key = prefix[: cut + 1]
    suffix = literal_suffix(pattern)
    first = min((i for i in (suffix.find(":"), suffix.find("/")) if i >= 0), default=-1)
    suffix_key = suffix[first + 1 :] if first >= 0 else ""
    prefix_score = _boundaries(prefix_key) - _BASE_BOUNDARIES
    suffix_score = _boundaries(suffix_key) + 1 if suffix_key else -(10**9)
    if suffix_score > prefix_score:
        return "suffix", suffix_key
    return ("prefix", prefix_key) if prefix_key else None


class CompiledPolicy:
    """A policy ready to evaluate; safe to share between requests and tasks (only internal memos ever change)."""

    def __init__(self, document: PolicyDocument, warnings: tuple[ConfigIssue, ...] = ()) -> None:
        self.document = document
        self.warnings = warnings
        self.source = document.source
        self.kind: Kind = document.kind
        self.statements = tuple(_compile_statement(s, document.variables) for s in document.statements)
        self.context_keys = _context_keys(document)
        """Lower-cased condition keys and variables this policy reads (decision caches key on them)."""
        self.reads_request = any(k in REQUEST_KEYS or k.startswith(HEADER_PREFIX) for k in self.context_keys)
        """Whether a verdict may depend on more of the request than its method and path (its source, a header, the
        clock): when not, it is a function of the principal and the resource alone, which the pipeline remembers."""
        # surrogatepass: a custom authorizer's document may hold a lone surrogate (a JSON "\udcab" escape, dumped
        # with ensure_ascii=False), which plain UTF-8 cannot encode (found by the policy fuzzer)
        self.fingerprint = hashlib.sha256(document.text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        self.label = f"{self.kind} policy {self.source}"
        self._indexes: dict[str, _Index] = {}
        self._index_for(INVOKE)

    def __repr__(self) -> str:
        return f"<CompiledPolicy {self.kind} {self.source} {len(self.statements)} statements>"

    def _index_for(self, action: str) -> _Index:
        index = self._indexes.get(action)
        if index is None:
            index = _Index(s for s in self.statements if s.action_match(action))
            if len(self._indexes) < 64:  # actions come from code, not clients; bound it anyway
                self._indexes[action] = index
        return index

    def candidates(self, ctx: EvalContext) -> tuple[StatementRef, ...]:
        """The statements the index hands to `evaluate` for this request (diagnostics, tests, benchmarks)."""
        index = self._indexes.get(ctx.action) or self._index_for(ctx.action)
        return tuple(s.ref for s in index.candidates(ctx.resource))

    def evaluate(self, ctx: EvalContext) -> Evaluation:
        """This policy's verdict for one request: Deny if any Deny statement matches, else Allow, else Neither."""
        index = self._indexes.get(ctx.action) or self._index_for(ctx.action)
        deny: StatementRef | None = None
        allow: StatementRef | None = None
        matched: list[StatementRef] = []
        for statement in index.candidates(ctx.resource):
            if statement.matches(ctx):
                ref = statement.ref
                matched.append(ref)
                if statement.deny:
                    if deny is None or ref.index < deny.index:
                        deny = ref
                elif allow is None or ref.index < allow.index:
                    allow = ref
        if deny is not None:
            effect, deciding = Effect.DENY, deny
        elif allow is not None:
            effect, deciding = Effect.ALLOW, allow
        else:
            effect, deciding = Effect.NEITHER, None
        if len(matched) > 1:
            matched.sort(key=lambda r: r.index)
        return Evaluation(effect, deciding, tuple(matched), self.label, self, ctx)


def _compile_statement(spec: StatementSpec, variables: bool) -> CompiledStatement:
    checks: list[tuple[str, Check]] = []
    if spec.principal is not None:
        if spec.not_principal:
            checks.append(("NotPrincipal", _not_principal_check(spec.principal, deny=spec.effect == "Deny")))
        else:
            checks.append(("Principal", _principal_check(spec.principal)))
    if spec.resources:
        label = "NotResource" if spec.not_resource else "Resource"
        checks.append((label, _resource_check(spec.resources, spec.not_resource, variables)))
    for condition in spec.conditions:
        check = compile_condition(condition.operator, condition.key.lower(), condition.values, variables)
        checks.append((f"Condition.{condition.operator.text}.{condition.key}", check))
    literal = not spec.not_resource and all(literal_prefix(r) == r for r in spec.resources)
    implied = frozenset({"Resource"}) if spec.resources and literal else frozenset()
    return CompiledStatement(spec, _action_match(spec.actions, spec.not_action), checks, implied)


def _action_match(actions: tuple[str, ...], negated: bool) -> Callable[[str], bool]:
    regex = compile_alternatives(actions, arn=False, ignore_case=True)
    if negated:
        return lambda action: regex.fullmatch(action) is None
    return lambda action: regex.fullmatch(action) is not None


def _resource_check(resources: tuple[str, ...], negated: bool, variables: bool) -> Check:
    templates: list[Template] = []
    static: list[str] = []
    for pattern in resources:
        if variables and has_variables(pattern):
            templates.append(parse_template(pattern))
        else:
            static.append(pattern)
    if "*" in static:
        return _never if negated else _always
    match = ArnSet(static).matches if static else None

    def matches(ctx: EvalContext) -> bool:
        resource = ctx.resource
        if match is not None and match(resource):
            return True
        for template in templates:
            rendered = template.render(ctx.get)
            if rendered is not None and rendered_matches(rendered, resource, arn=True):
                return True
        return False

    if negated:
        return lambda ctx: not matches(ctx)
    return matches


def _normalize_issuer(issuer: str) -> str:
    return issuer.lower().removeprefix("https://").removeprefix("http://").rstrip("/")


def _principal_check(spec: PrincipalSpec) -> Check:
    """`Principal`: an account (12 digits or its root ARN) matches every identity in it, a role its sessions."""
    if spec.wildcard:
        return _always
    accounts = frozenset(spec.accounts)
    arns = frozenset(spec.arns)
    federated = frozenset(_normalize_issuer(f) for f in spec.federated)
    services = frozenset(spec.services)

    def matches(ctx: EvalContext) -> bool:
        principal = ctx.principal
        if principal.account and principal.account in accounts:
            return True
        arn = principal.arn
        if arn and (arn in arns or (":assumed-role/" in arn and _role_arn(arn) in arns)):
            return True
        if federated and _issuer(principal) in federated:
            return True
        return bool(services) and principal.kind == "service" and principal.id in services

    return matches


def _not_principal_check(spec: PrincipalSpec, deny: bool) -> Check:
    """`NotPrincipal`, with IAM's semantics: each listed entry names exactly one identity.

    Unlike `Principal`, an account ARN here names the account itself, not its users and roles, and a role ARN the
    role, not its sessions: an exempt session is listed by its `assumed-role` ARN. IAM may check a caller at each
    level of its chain (the account, then the role, then the session), so the statement is read at every level:
    a `Deny` applies unless every level is listed (`[user/Bob, root]` exempts Bob and the account alone), an
    `Allow` only where no level is listed. Either way, a missing entry denies more, never less.
    """
    if spec.wildcard:
        return _never
    accounts = frozenset(spec.accounts)
    arns = frozenset(spec.arns)
    federated = frozenset(_normalize_issuer(f) for f in spec.federated)
    services = frozenset(spec.services)

    def levels(ctx: EvalContext) -> tuple[bool, ...]:
        """For each identity in the caller's chain, outermost first: whether this NotPrincipal lists it."""
        principal = ctx.principal
        arn = principal.arn
        if arn:
            parts = arn.split(":", 5)
            account = parts[4] if len(parts) == 6 and parts[4] else principal.account
            if parts[-1] == "root":
                return (account in accounts,)
            if ":assumed-role/" in arn:
                return account in accounts, _role_arn(arn) in arns, arn in arns
            return account in accounts, arn in arns
        if principal.kind == "service":
            return (principal.id in services,)
        if principal.kind == "anonymous":
            return (False,)
        issuer = _issuer(principal)
        if issuer is not None:
            return (issuer in federated,)
        if principal.account:
            return principal.account in accounts, False  # someone in the account that no entry can name
        return (False,)

    if deny:
        return lambda ctx: not all(levels(ctx))
    return lambda ctx: not any(levels(ctx))


def _issuer(principal: Principal) -> str | None:
    """The web-identity provider of a token caller (normalized), None for other callers."""
    issuer = principal.context.get("aws:FederatedProvider") or principal.claims.get("iss")
    return _normalize_issuer(issuer) if isinstance(issuer, str) else None


def _role_arn(assumed: str) -> str:
    """`arn:aws:sts::1:assumed-role/R/session` -> `arn:aws:iam::1:role/R` (role principals match their sessions)."""
    head, _, rest = assumed.partition(":assumed-role/")
    role = rest.split("/", 1)[0]
    return head.replace(":sts:", ":iam:", 1) + ":role/" + role


def _context_keys(document: PolicyDocument) -> frozenset[str]:
    keys: set[str] = set()
    for statement in document.statements:
        for condition in statement.conditions:
            keys.add(condition.key.lower())
            keys |= template_keys(condition.values, condition.operator.family, document.variables)
        if document.variables:
            for resource in statement.resources:
                if has_variables(resource):
                    keys |= parse_template(resource).keys
    return frozenset(keys)


def parse_policy(
    text: str,
    source: str = "<memory>",
    *,
    kind: Kind = "resource",
    api: ApiSettings | None = None,
    max_size: int | None = RESOURCE_POLICY_MAX,
) -> CompiledPolicy:
    """Validate and compile policy text. `max_size` applies to resource policies only (None: no limit).

    `api` expands the short `execute-api:/stage/METHOD/path` form to this API's ARN and sharpens the
    never-matches warnings; without it the short form matches that path in any API.
    """
    limit = max_size if kind == "resource" else None
    document, warnings = parse_document(text, source, kind, api, limit)
    return CompiledPolicy(document, warnings)


def load_policy(
    path_or_text: str | Path,
    source: str | None = None,
    *,
    kind: Kind = "resource",
    api: ApiSettings | None = None,
    max_size: int | None = RESOURCE_POLICY_MAX,
) -> CompiledPolicy:
    """Load a policy from a file (a `Path`, or a string not starting with `{` or `[`) or from JSON text.

    Raises `sidecar.config.ConfigError` whose issues name the file, JSON path, line and column.
    """
    text: str
    if isinstance(path_or_text, Path) or not path_or_text.lstrip().startswith(("{", "[")):
        file = str(path_or_text)
        try:
            text = Path(path_or_text).read_text(encoding="utf-8-sig")  # tolerate a BOM from Windows editors
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([ConfigIssue(source or file, 0, 0, "", f"cannot read policy: {exc}")]) from None
        return parse_policy(text, source or file, kind=kind, api=api, max_size=max_size)
    return parse_policy(path_or_text, source or "<memory>", kind=kind, api=api, max_size=max_size)


def evaluate_all(policies: Iterable[Any], ctx: EvalContext, source: str = "identity policies") -> Evaluation | None:
    """Combine several policies (e.g. a principal's identity policies) by the IAM rule; None if there are none.

    Items that are not `CompiledPolicy` are ignored, so `Principal.policies` may carry other authorizer data.
    """
    allow: Evaluation | None = None
    results: list[Evaluation] = []
    for policy in policies:
        if not isinstance(policy, CompiledPolicy):
            continue
        result = policy.evaluate(ctx)
        if result.effect is Effect.DENY:
            return result
        if result.effect is Effect.ALLOW and allow is None:
            allow = result
        results.append(result)
    if not results:
        return None
    if allow is not None:
        return allow
    if len(results) == 1:
        return results[0]
    return Evaluation(Effect.NEITHER, source=source, context=ctx, parts=tuple(results))
