"""Registers the authorizer types that ship with the sidecar. Add a line here for each new type."""

from __future__ import annotations

from .base import register
from .static import DenySettings, NoneSettings, build_deny, build_none

register("none", NoneSettings, build_none)
register("deny", DenySettings, build_deny)
