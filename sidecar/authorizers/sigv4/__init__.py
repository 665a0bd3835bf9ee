"""`type: sigv4`: AWS Signature Version 4 (and SigV4a) verified against a credential store, as API Gateway's
`AWS_IAM` authorization does.

One job per module, each importing only those before it:

- `errors`: the reason codes (AWS / API Gateway names);
- `canonical`: the canonical request rebuilt from what Envoy forwards, and the signature parameters parsed;
- `sigv4a`: SigV4a key derivation, ECDSA verification and region sets;
- `credentials`: who holds which access key (`CredentialStore`, the watched credentials file);
- `replay`: the replay guard (in process, or shared through Redis);
- `verifier`: one request's signature checked, pure and synchronous;
- `authorizer`: `SigV4Authorizer` and the Principal a credential becomes;
- `settings`: the config models and `build_sigv4`.
"""

from .authorizer import SigV4Authorizer
from .errors import REASONS
from .settings import SigV4Settings, build_sigv4

__all__ = ["REASONS", "SigV4Authorizer", "SigV4Settings", "build_sigv4"]
