"""Policy documents: JSON text in, a validated `PolicyDocument` out, every mistake located by JSON path and line.

Validation runs once, at load. It collects every problem rather than stopping at the first, so a user fixing a
pasted policy sees the whole list: `policies/resource.json:14:9: Statement[2].Condition.IpAddress.aws:SourceIp:
bad CIDR '10.0.0.300/8'`. Problems that make a policy unusable are errors (`ConfigError`); statements that are
legal but can never match this API (an `s3:` action, another API's ARN, `NotResource: "*"`) are warnings, kept
on the compiled policy for `validate` and `check --explain` to print.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..issues import ConfigError, ConfigIssue, format_loc
from .arn import SHORT_PREFIX, action_problem, arn_problem, compile_alternatives, expand_short_form, literal_prefix
from .conditions import ConditionError, Operator, parse_operator, value_problem
from .context import PROVIDED_KEYS, parse_date
from .jsonpos import JsonSyntaxError, Located, Path, parse_located
from .variables import VariableError, has_variables, parse_template

if TYPE_CHECKING:
    from ..settings import ApiSettings

Kind = Literal["resource", "identity"]
VERSION_CURRENT = "2012-10-17"
VERSION_LEGACY = "2008-10-17"
RESOURCE_POLICY_MAX = 8192
"""API Gateway's limit on a resource policy, in characters (whitespace outside strings not counted)."""

_TOP_KEYS = frozenset({"Version", "Id", "Statement"})
_STATEMENT_KEYS = frozenset(
    {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource", "NotResource", "Condition"}
)
_PRINCIPAL_TYPES = ("AWS", "Federated", "Service", "CanonicalUser")
_ACCOUNT = re.compile(r"^\d{12}$")
_IAM_ARN = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::(\d{12}):(root|user/.+|role/.+|assumed-role/.+|federated-user/.+)$")
_INVOKE_ACTIONS = ("execute-api:Invoke", "execute-api:ManageConnections")
_KNOWN_GLOBAL = PROVIDED_KEYS | {
    k.lower()
    for k in (
        "aws:PrincipalOrgID",
        "aws:PrincipalOrgPaths",
        "aws:PrincipalTag",
        "aws:PrincipalIsAWSService",
        "aws:PrincipalServiceName",
        "aws:MultiFactorAuthPresent",
        "aws:MultiFactorAuthAge",
        "aws:TokenIssueTime",
        "aws:FederatedProvider",
        "aws:SourceAccount",
        "aws:SourceArn",
        "aws:SourceOrgID",
        "aws:VpcSourceIp",
        "aws:ViaAWSService",
        "aws:CalledVia",
        "aws:RequestTag",
        "aws:ResourceTag",
        "aws:TagKeys",
        "aws:ResourceAccount",
        "aws:ResourceOrgID",
        "aws:IsMcpServiceAction",
    )
}


@dataclass(frozen=True, slots=True)
class PrincipalSpec:
    """A `Principal` / `NotPrincipal` element: `wildcard` for `"*"`, else the listed identities."""

    wildcard: bool = False
    accounts: tuple[str, ...] = ()
    arns: tuple[str, ...] = ()
    federated: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    canonical: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConditionSpec:
    """One operator/key pair with its values (ORed)."""

    operator: Operator
    key: str
    values: tuple[str, ...]
    path: str


@dataclass(frozen=True, slots=True)
class StatementSpec:
    """One validated statement. `resources` are full ARN patterns (the short form already expanded)."""

    index: int
    path: str
    sid: str | None
    effect: str
    principal: PrincipalSpec | None = None
    not_principal: bool = False
    actions: tuple[str, ...] = ()
    not_action: bool = False
    resources: tuple[str, ...] = ()
    not_resource: bool = False
    conditions: tuple[ConditionSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """A validated policy, ready to compile."""

    source: str
    kind: Kind
    version: str
    id: str | None
    statements: tuple[StatementSpec, ...]
    variables: bool
    size: int
    text: str = field(repr=False)


class _Validator:
    """Walks the parsed JSON, collecting errors and warnings with their JSON paths."""

    def __init__(self, located: Located, source: str, kind: Kind, api: ApiSettings | None) -> None:
        self.located = located
        self.source = source
        self.kind = kind
        self.api = api
        self.errors: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []
        self.variables = True

    def issue(self, path: Path, message: str) -> ConfigIssue:
        line, column = self.located.position(path)
        return ConfigIssue(self.source, line, column, format_loc(path), message)

    def error(self, path: Path, message: str) -> None:
        self.errors.append(self.issue(path, message))

    def warn(self, path: Path, message: str) -> None:
        self.warnings.append(self.issue(path, message))

    def document(self, max_size: int | None) -> PolicyDocument | None:
        data = self.located.value
        if not isinstance(data, dict):
            self.error((), "a policy must be a JSON object with Version and Statement")
            return None
        size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False))
        if max_size is not None and size > max_size:
            self.error((), f"the policy is {size} characters (without whitespace); the limit is {max_size}")
        for key in data:
            if key not in _TOP_KEYS:
                self.error((key,), f"unknown top-level key {key!r} (allowed: Version, Id, Statement)")
        version = self.version(data)
        policy_id = data.get("Id")
        if policy_id is not None and not isinstance(policy_id, str):
            self.error(("Id",), "Id must be a string")
            policy_id = None
        statements = self.statements(data)
        if self.errors:
            return None
        return PolicyDocument(
            source=self.source,
            kind=self.kind,
            version=version,
            id=policy_id,
            statements=tuple(statements),
            variables=self.variables,
            size=size,
            text=self.located.text,
        )

    def version(self, data: dict[str, Any]) -> str:
        version = data.get("Version")
        if version is None:
            self.variables = False
            if has_variables(self.located.text):
                self.warn((), 'no Version: policy variables are taken literally; add "Version": "2012-10-17"')
            return VERSION_LEGACY
        if version not in (VERSION_CURRENT, VERSION_LEGACY):
            hint = " (it must be a string)" if not isinstance(version, str) else ""
            self.error(("Version",), f'unknown Version {version!r}{hint}: use "{VERSION_CURRENT}"')
            return VERSION_CURRENT
        if version == VERSION_LEGACY:
            self.variables = False
            if has_variables(self.located.text):
                self.warn(("Version",), f"policy variables are taken literally under {VERSION_LEGACY}")
        return str(version)

    def statements(self, data: dict[str, Any]) -> list[StatementSpec]:
        raw = data.get("Statement")
        if raw is None:
            self.error((), "missing Statement")
            return []
        if isinstance(raw, dict):
            items: list[tuple[Path, Any]] = [(("Statement",), raw)]
        elif isinstance(raw, list):
            items = [(("Statement", i), s) for i, s in enumerate(raw)]
            if not items:
                self.warn(("Statement",), "Statement is empty: this policy never allows anything")
        else:
            self.error(("Statement",), "Statement must be an object or a list of objects")
            return []
        out: list[StatementSpec] = []
        sids: dict[str, str] = {}
        for index, (path, item) in enumerate(items):
            spec = self.statement(index, path, item)
            if spec is None:
                continue
            if spec.sid is not None:
                if spec.sid in sids:
                    self.error((*path, "Sid"), f"duplicate Sid {spec.sid!r} (also at {sids[spec.sid]})")
                sids[spec.sid] = spec.path
            out.append(spec)
            self.never_matches(path, spec)
        return out

    def statement(self, index: int, path: Path, raw: Any) -> StatementSpec | None:
        if not isinstance(raw, dict):
            self.error(path, "a statement must be a JSON object")
            return None
        for key in raw:
            if key not in _STATEMENT_KEYS:
                self.error((*path, key), f"unknown statement key {key!r}")
        sid = raw.get("Sid")
        if sid is not None and not isinstance(sid, str):
            self.error((*path, "Sid"), "Sid must be a string")
            sid = None
        effect = raw.get("Effect")
        if effect not in ("Allow", "Deny"):
            where = (*path, "Effect") if "Effect" in raw else path
            self.error(where, f'unknown Effect {effect!r}: use "Allow" or "Deny"' if effect else "missing Effect")
            effect = "Deny"
        principal, not_principal = self.principal_element(path, raw)
        actions, not_action = self.pair(path, raw, "Action", "NotAction", self.action)
        resources, not_resource = self.pair(path, raw, "Resource", "NotResource", self.resource)
        conditions = self.condition_block((*path, "Condition"), raw.get("Condition"))
        return StatementSpec(
            index=index,
            path=format_loc(path),
            sid=sid,
            effect=str(effect),
            principal=principal,
            not_principal=not_principal,
            actions=actions,
            not_action=not_action,
            resources=resources,
            not_resource=not_resource,
            conditions=conditions,
        )

    def pair(
        self, path: Path, raw: dict[str, Any], name: str, negated: str, check: Any
    ) -> tuple[tuple[str, ...], bool]:
        if name in raw and negated in raw:
            self.error((*path, negated), f"a statement takes {name} or {negated}, not both")
        key = name if name in raw else negated if negated in raw else None
        if key is None:
            self.error(path, f"missing {name} (or {negated})")
            return (), False
        values = self.strings((*path, key), raw[key])
        out = []
        for i, value in values:
            checked = check((*path, key, i) if i is not None else (*path, key), value)
            if checked is not None:
                out.append(checked)
        return tuple(out), key == negated

    def strings(self, path: Path, raw: Any) -> list[tuple[int | None, str]]:
        """A string or non-empty list of strings, as `(index or None, value)`; wrong types are reported."""
        if isinstance(raw, str):
            return [(None, raw)]
        if isinstance(raw, list) and raw:
            out: list[tuple[int | None, str]] = []
            for i, item in enumerate(raw):
                if isinstance(item, str):
                    out.append((i, item))
                else:
                    self.error((*path, i), f"wrong value type: expected a string, got {_type_name(item)}")
            return out
        self.error(path, f"wrong value type: expected a string or a non-empty list of strings, got {_type_name(raw)}")
        return []

    def action(self, path: Path, value: str) -> str | None:
        problem = action_problem(value)
        if problem:
            self.error(path, problem)
            return None
        return value

    def resource(self, path: Path, value: str) -> str | None:
        if value.startswith(SHORT_PREFIX):
            value = expand_short_form(value, self.api)
        problem = arn_problem(value)
        if problem is None and self.variables and has_variables(value):
            try:
                parse_template(value)
            except VariableError as exc:
                problem = str(exc)
        if problem:
            self.error(path, problem)
            return None
        return value

    def principal_element(self, path: Path, raw: dict[str, Any]) -> tuple[PrincipalSpec | None, bool]:
        if "Principal" in raw and "NotPrincipal" in raw:
            self.error((*path, "NotPrincipal"), "a statement takes Principal or NotPrincipal, not both")
        key = "Principal" if "Principal" in raw else "NotPrincipal" if "NotPrincipal" in raw else None
        if self.kind == "identity":
            if key is not None:
                self.error((*path, key), f"an identity policy must not have {key} (it applies to its principal)")
            return None, False
        if key is None:
            self.error(path, "a resource policy statement needs Principal (or NotPrincipal)")
            return None, False
        spec = self.principal((*path, key), raw[key])
        if key == "NotPrincipal" and raw.get("Effect") == "Allow":
            self.warn((*path, key), "Allow with NotPrincipal allows almost everyone; AWS advises against it")
        elif key == "NotPrincipal":
            for problem in _unexempted(spec):
                self.warn((*path, key), problem)
        return spec, key == "NotPrincipal"

    def principal(self, path: Path, raw: Any) -> PrincipalSpec:
        if raw == "*":
            return PrincipalSpec(wildcard=True)
        if not isinstance(raw, dict) or not raw:
            self.error(path, 'wrong value type: Principal is "*" or an object like {"AWS": "123456789012"}')
            return PrincipalSpec()
        fields: dict[str, list[str]] = {name: [] for name in _PRINCIPAL_TYPES}
        wildcard = False
        accounts: list[str] = []
        arns: list[str] = []
        for name, value in raw.items():
            if name not in fields:
                self.error((*path, name), f"unknown principal type {name!r} (use {', '.join(_PRINCIPAL_TYPES)})")
                continue
            for i, item in self.strings((*path, name), value):
                where = (*path, name, i) if i is not None else (*path, name)
                if name == "AWS":
                    if item == "*":
                        wildcard = True
                    elif _ACCOUNT.match(item):
                        accounts.append(item)
                    elif match := _IAM_ARN.match(item):
                        if match.group(3) == "root":
                            accounts.append(match.group(2))
                        else:
                            arns.append(item)
                    else:
                        self.error(where, _principal_problem(item))
                elif "*" in item and item != "*":
                    self.error(where, f"wildcards are not allowed in {name} principals")
                else:
                    fields[name].append(item)
        return PrincipalSpec(
            wildcard=wildcard,
            accounts=tuple(accounts),
            arns=tuple(arns),
            federated=tuple(fields["Federated"]),
            services=tuple(fields["Service"]),
            canonical=tuple(fields["CanonicalUser"]),
        )

    def condition_block(self, path: Path, raw: Any) -> tuple[ConditionSpec, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, dict):
            self.error(path, 'wrong value type: Condition is an object like {"IpAddress": {"aws:SourceIp": ...}}')
            return ()
        out: list[ConditionSpec] = []
        for op_text, body in raw.items():
            op_path = (*path, op_text)
            try:
                operator = parse_operator(op_text)
            except ConditionError as exc:
                self.error(op_path, str(exc))
                continue
            if not isinstance(body, dict) or not body:
                self.error(op_path, "wrong value type: expected an object of condition key -> value(s)")
                continue
            for key, value in body.items():
                spec = self.condition(operator, (*op_path, key), key, value)
                if spec is not None:
                    out.append(spec)
        return tuple(out)

    def condition(self, operator: Operator, path: Path, key: str, raw: Any) -> ConditionSpec | None:
        if ":" not in key or key.startswith(":") or key.endswith(":"):
            self.error(path, f"malformed condition key {key!r}: expected prefix:name, e.g. aws:SourceIp")
            return None
        lowered = key.lower()
        if lowered.startswith("aws:") and lowered not in PROVIDED_KEYS:
            known = lowered.split("/")[0] in _KNOWN_GLOBAL
            what = "is always absent here: the sidecar does not provide it" if known else "is not a key AWS defines"
            self.warn(
                path,
                f"{key} {what}, and no token claim or authorizer can supply an aws: key "
                "(a positive operator on it never matches, a negated one always does)",
            )
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            self.error(path, "a condition needs at least one value")
            return None
        values: list[str] = []
        for i, item in enumerate(items):
            where = (*path, i) if isinstance(raw, list) else path
            text = _scalar(item)
            if text is None:
                self.error(where, f"wrong value type: expected a string, number or boolean, got {_type_name(item)}")
                continue
            problem = value_problem(operator, text, self.variables)
            if problem:
                self.error(where, problem)
                continue
            values.append(text)
        if len(values) != len(items):
            return None
        return ConditionSpec(operator=operator, key=key, values=tuple(values), path=format_loc(path))

    def never_matches(self, path: Path, spec: StatementSpec) -> None:
        """Warn about statements that are valid but cannot match any request to this API."""
        if spec.actions and not _covers_invoke(spec.actions, spec.not_action):
            element = "NotAction" if spec.not_action else "Action"
            self.warn((*path, element), f"this statement never matches: {element} excludes execute-api:Invoke")
        if spec.not_resource and "*" in spec.resources:
            self.warn((*path, "NotResource"), 'this statement never matches: NotResource "*" excludes everything')
        elif spec.resources and not spec.not_resource and not any(self.could_match(r) for r in spec.resources):
            self.warn(
                (*path, "Resource"), f"this statement never matches: no Resource names this API{self._api_hint()}"
            )
        principal = spec.principal
        if principal is not None and spec.not_principal and principal.wildcard:
            self.warn((*path, "NotPrincipal"), 'this statement never matches: NotPrincipal "*" excludes everyone')
        elif principal is not None and not spec.not_principal and _only_canonical(principal):
            self.warn((*path, "Principal"), "this statement never matches: CanonicalUser principals are S3-only")
        for condition, why in _contradictions(spec.conditions):
            where = (*path, "Condition", condition.operator.text, condition.key)
            self.warn(where, f"this statement never matches: {why}")

    def _api_hint(self) -> str:
        """What this API's resources look like, so a wrong stage, region, account or id is seen at a glance."""
        api = self.api
        if api is None or self.kind == "identity":
            return ""
        return f" (its resources are arn:aws:execute-api:{api.region}:{api.account}:{api.id}/{api.stage}/METHOD/path)"

    def could_match(self, resource: str) -> bool:
        """Whether an ARN pattern can name some method/path of this API (or of any API when none is given)."""
        if resource == "*":
            return True
        if has_variables(resource):
            resource = resource[: resource.index("${")] + "*"
        parts = resource.split(":", 5)
        if len(parts) < 6:
            return True  # `arn:aws:execute-api:*`: the trailing star covers the rest
        head = compile_alternatives([":".join(parts[:5])], arn=True, ignore_case=False)
        if self.api is None or self.kind == "identity":  # one identity policy often covers several APIs
            return compile_alternatives([parts[2]], arn=False, ignore_case=False).fullmatch("execute-api") is not None
        if head.fullmatch(f"arn:aws:execute-api:{self.api.region}:{self.api.account}") is None:
            return False
        base = f"{self.api.id}/{self.api.stage}/"
        prefix = literal_prefix(parts[5])
        return prefix.startswith(base) or base.startswith(prefix)


_TIME_KEYS = frozenset({"aws:currenttime", "aws:epochtime"})
_LOWER_BOUNDS = frozenset({"date_gt", "date_ge", "num_gt", "num_ge"})
_UPPER_BOUNDS = frozenset({"date_lt", "date_le", "num_lt", "num_le"})


def _contradictions(conditions: tuple[ConditionSpec, ...]) -> list[tuple[ConditionSpec, str]]:
    """Condition pairs that cannot both hold: `Null: true` with an operator that needs the key, and empty time
    windows (`DateGreaterThan` after `DateLessThan` on the request time, which is single-valued)."""
    out: list[tuple[ConditionSpec, str]] = []
    absent = {
        c.key.lower() for c in conditions if c.operator.family == "null" and {v.lower() for v in c.values} == {"true"}
    }
    lower: dict[str, tuple[float, bool, ConditionSpec]] = {}
    upper: dict[str, tuple[float, bool, ConditionSpec]] = {}
    for condition in conditions:
        op, key = condition.operator, condition.key.lower()
        demanding = not (op.negated or op.if_exists or op.qualifier == "ForAllValues" or op.family == "null")
        if key in absent and demanding:
            out.append((condition, f"Null requires {condition.key} to be absent, but {op.text} requires it present"))
        if key not in _TIME_KEYS or op.if_exists or op.qualifier or not op.family.startswith(("date_", "num_")):
            continue
        bounds = [b for b in (parse_date(v) for v in condition.values) if b is not None]
        if not bounds:
            continue
        strict = op.family.endswith(("_gt", "_lt"))
        if op.family in _LOWER_BOUNDS:
            lower[key] = (min(bounds), strict, condition)
        elif op.family in _UPPER_BOUNDS:
            upper[key] = (max(bounds), strict, condition)
    for key, (low, low_strict, _) in lower.items():
        if key in upper:
            high, high_strict, condition = upper[key]
            if low > high or (low == high and (low_strict or high_strict)):
                out.append((condition, f"the window on {condition.key} is empty (it ends before it starts)"))
    return out


def _covers_invoke(actions: tuple[str, ...], negated: bool) -> bool:
    regex = compile_alternatives(actions, arn=False, ignore_case=True)
    hit = any(regex.fullmatch(a) for a in _INVOKE_ACTIONS)
    return not hit if negated else hit


def _only_canonical(principal: PrincipalSpec) -> bool:
    return bool(principal.canonical) and not (
        principal.wildcard or principal.accounts or principal.arns or principal.federated or principal.services
    )


def _unexempted(spec: PrincipalSpec) -> list[str]:
    """Entries of a Deny's NotPrincipal that exempt less than they seem to: an identity is exempt only when every
    level of its chain is listed (its account, and for a session its role too), and a role ARN never covers its
    sessions."""
    out: list[str] = []
    arns = set(spec.arns)
    for arn in spec.arns:
        _, partition, _, _, account, _ = arn.split(":", 5)
        if account not in spec.accounts:
            out.append(
                f"{arn} is still denied: NotPrincipal must also list its account arn:{partition}:iam::{account}:root"
            )
        head, assumed, rest = arn.partition(":assumed-role/")
        if assumed:
            role = head.replace(":sts:", ":iam:", 1) + ":role/" + rest.split("/", 1)[0]
            if role not in arns:
                out.append(f"{arn} is still denied: NotPrincipal must also list its role {role}")
        elif ":role/" in arn and not any(
            a.startswith(f"arn:{partition}:sts::{account}:assumed-role/{arn.rpartition('/')[2]}/") for a in arns
        ):
            out.append(
                f"{arn} exempts the role alone, not its sessions: list each session as "
                f"arn:{partition}:sts::{account}:assumed-role/{arn.rpartition('/')[2]}/SESSION"
            )
    return out


def _principal_problem(item: str) -> str:
    if "*" in item:
        return f'wildcards are not allowed in AWS principals ({item!r}); use "*" or a condition on aws:PrincipalArn'
    return f'malformed principal {item!r}: expected "*", a 12-digit account id or an IAM user/role/root ARN'


def _scalar(item: Any) -> str | None:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, str):
        return item
    if isinstance(item, int | float):
        return str(item)
    return None


def _type_name(item: Any) -> str:
    return {dict: "an object", list: "a list", type(None): "null", bool: "a boolean"}.get(
        type(item), "a number" if isinstance(item, int | float) else type(item).__name__
    )


def parse_document(
    text: str,
    source: str = "<memory>",
    kind: Kind = "resource",
    api: ApiSettings | None = None,
    max_size: int | None = None,
) -> tuple[PolicyDocument, tuple[ConfigIssue, ...]]:
    """Validate policy text; return the document and its warnings, or raise `ConfigError` listing every error."""
    try:
        located = parse_located(text)
    except JsonSyntaxError as exc:
        line, column = Located(text, None, {}).line_col(exc.offset)
        raise ConfigError([ConfigIssue(source, line, column, "", f"invalid JSON: {exc}")]) from None
    validator = _Validator(located, source, kind, api)
    document = validator.document(max_size)
    if document is None:
        raise ConfigError(validator.errors)
    return document, tuple(validator.warnings)
