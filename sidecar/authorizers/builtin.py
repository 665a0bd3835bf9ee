"""Registers the authorizer types that ship with the sidecar. Add a line here for each new type."""

from __future__ import annotations

from .base import register
from .jwt.settings import CognitoSettings, JwtSettings, build_cognito, build_jwt
from .sigv4.settings import SigV4Settings, build_sigv4
from .static import DenySettings, NoneSettings, build_deny, build_none

register("none", NoneSettings, build_none)
register("deny", DenySettings, build_deny)
register("jwt", JwtSettings, build_jwt)
register("cognito", CognitoSettings, build_cognito)
register("sigv4", SigV4Settings, build_sigv4)
