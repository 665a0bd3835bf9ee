"""Authorizers: one module per way of identifying a caller, all behind `base.Authorizer`."""

from .base import Authorizer, AuthorizerSettings, BuildContext, register, registry

__all__ = ["Authorizer", "AuthorizerSettings", "BuildContext", "register", "registry"]
