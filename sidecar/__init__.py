"""authz-sidecar: Envoy external authorization with API Gateway's access controls.

The package layout follows the request: `transports` (adapters) -> `pipeline` (routes, authorizers, policies,
caches) -> back out through the adapter. See docs/design.md.
"""

__version__ = "0.1.0"
