"""Registers the authorizer types that ship with the sidecar. Add a line here for each new type."""

from __future__ import annotations

from .base import register
from .custom.settings import LambdaSettings
from .jwt.settings import CognitoSettings, JwtSettings
from .mtls.settings import MtlsAuthorizerSettings
from .sigv4.settings import SigV4Settings
from .static import DenySettings, NoneSettings

register("none", NoneSettings)
register("deny", DenySettings)
register("jwt", JwtSettings)
register("cognito", CognitoSettings)
register("sigv4", SigV4Settings)
register("lambda", LambdaSettings)
register("mtls", MtlsAuthorizerSettings)
