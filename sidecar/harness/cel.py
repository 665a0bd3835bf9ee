"""CEL expressions as the parsed syntax tree Envoy's RBAC `condition` takes (`google.api.expr.v1alpha1.Expr`).

Envoy 1.40 compiles only parsed or checked expressions (its `cel_expr_string` is not wired up: "CEL expression not
set"), so `envoy-config --offload` builds the tree itself with these helpers instead of writing CEL text. Macros
(`has`, `all`, `exists`) are spelled as the parser would expand them. Ids are unique per tree, as the evaluator
expects of a parsed expression.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

Expr = dict[str, Any]
_ACCU = "__result__"


class Builder:
    """Makes nodes with fresh ids (one builder per expression)."""

    def __init__(self) -> None:
        self._ids: Iterator[int] = itertools.count(1)

    def _node(self, **kind: Any) -> Expr:
        return {"id": next(self._ids), **kind}

    def ident(self, name: str) -> Expr:
        return self._node(ident_expr={"name": name})

    def string(self, value: str) -> Expr:
        return self._node(const_expr={"string_value": value})

    def number(self, value: float) -> Expr:
        return self._node(const_expr={"double_value": float(value)})

    def integer(self, value: int) -> Expr:
        return self._node(const_expr={"int64_value": str(value)})

    def boolean(self, value: bool) -> Expr:
        return self._node(const_expr={"bool_value": value})

    def call(self, function: str, *args: Expr, target: Expr | None = None) -> Expr:
        body: dict[str, Any] = {"function": function, "args": list(args)}
        if target is not None:
            body["target"] = target
        return self._node(call_expr=body)

    def field(self, operand: Expr, name: str) -> Expr:
        return self._node(select_expr={"operand": operand, "field": name})

    def has(self, operand: Expr, name: str) -> Expr:
        """`has(operand.name)`."""
        return self._node(select_expr={"operand": operand, "field": name, "test_only": True})

    def index(self, operand: Expr, key: str) -> Expr:
        return self.call("_[_]", operand, self.string(key))

    def strings(self, values: list[str]) -> Expr:
        return self._node(list_expr={"elements": [self.string(v) for v in values]})

    def and_(self, *terms: Expr) -> Expr:
        return self._fold("_&&_", terms)

    def or_(self, *terms: Expr) -> Expr:
        return self._fold("_||_", terms)

    def _fold(self, function: str, terms: tuple[Expr, ...]) -> Expr:
        """A balanced tree of `function` calls: Envoy reads the tree as protobuf JSON, whose parser refuses
        nesting past about a hundred levels, which a left fold of a long condition exceeds."""
        if len(terms) == 1:
            return terms[0]
        middle = len(terms) // 2
        return self.call(function, self._fold(function, terms[:middle]), self._fold(function, terms[middle:]))

    def not_(self, term: Expr) -> Expr:
        return self.call("!_", term)

    def eq(self, a: Expr, b: Expr) -> Expr:
        return self.call("_==_", a, b)

    def is_type(self, value: Expr, type_name: str) -> Expr:
        """`type(value) == type_name` (`string`, `double`, `list`, ...)."""
        return self.eq(self.call("type", value), self.ident(type_name))

    def within(self, value: Expr, values: Expr) -> Expr:
        """`value in values`."""
        return self.call("@in", value, values)

    def matches(self, value: Expr, pattern: str) -> Expr:
        """`value.matches(pattern)` (RE2, unanchored)."""
        return self.call("matches", self.string(pattern), target=value)

    def all(self, items: Expr, var: str, predicate: Expr) -> Expr:
        """`items.all(var, predicate)`, expanded as the CEL parser does."""
        return self._comprehension(items, var, predicate, True)

    def exists(self, items: Expr, var: str, predicate: Expr) -> Expr:
        """`items.exists(var, predicate)`, expanded as the CEL parser does."""
        return self._comprehension(items, var, predicate, False)

    def _comprehension(self, items: Expr, var: str, predicate: Expr, every: bool) -> Expr:
        accu = self.ident(_ACCU)
        going = self.call("@not_strictly_false", accu if every else self.not_(self.ident(_ACCU)))
        step = self.call("_&&_" if every else "_||_", self.ident(_ACCU), predicate)
        return self._node(
            comprehension_expr={
                "iter_var": var,
                "iter_range": items,
                "accu_var": _ACCU,
                "accu_init": self.boolean(every),
                "loop_condition": going,
                "loop_step": step,
                "result": self.ident(_ACCU),
            }
        )


__all__ = ["Builder", "Expr"]
