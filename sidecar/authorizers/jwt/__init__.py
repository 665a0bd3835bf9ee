"""The `jwt` and `cognito` authorizers: bearer tokens verified against an issuer's published keys.

One job per module, each importing only those before it:

- `errors`: the reason codes (docs/jwt.md) and `JwtError`;
- `keys`: JWKs parsed into verification keys bound to their algorithms (`KeySet`);
- `jwks`: where keys come from, off the hot path: a JWKS file, or a `jwks_uri` fetched and cached;
- `token`: a compact JWS checked structurally and its signature verified;
- `claims`: claim rules and types, header-safe values, policy condition keys;
- `authorizer`: `JwtAuthorizer` / `CognitoAuthorizer`, the verified-token cache and the Principal;
- `settings`: the config models and the `build` functions the registry names.
"""

from .authorizer import CognitoAuthorizer, JwtAuthorizer
from .errors import REASONS, JwtError
from .settings import CognitoSettings, JwtSettings, build_cognito, build_jwt

__all__ = [
    "REASONS",
    "CognitoAuthorizer",
    "CognitoSettings",
    "JwtAuthorizer",
    "JwtError",
    "JwtSettings",
    "build_cognito",
    "build_jwt",
]
