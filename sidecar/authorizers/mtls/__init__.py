"""The `mtls` authorizer and the client-certificate engine every `require_client_cert` route shares.

One job per module, each importing only those before it:

- `cert`: `ClientCert`, a certificate and its presented chain parsed once (API Gateway's `clientCert` object);
- `xfcc`, `rfc9440`: the header formats (Envoy's `x-forwarded-client-cert`, RFC 9440 `Client-Cert`);
- `sources`: where a request's certificate is read, and which headers are believed (trusted peers);
- `truststore`: the CA bundle and CRLs as one snapshot, reloaded when the files change;
- `verify`: the verdict on a certificate at a time (`cryptography`'s client verifier, key strength, CRLs);
- `cache`: verdicts remembered while they hold, so a warm Check does no cryptography;
- `engine`: `ClientCertVerifier.verify_request(request) -> ClientCert`, or `Denied`;
- `principal`: the principal field and the `mtls:*` policy keys;
- `authorizer`: `MtlsAuthorizer`;
- `settings`: `type: mtls` and `build_engine`;
- `gate`: `ClientCertGate`, what `require_client_cert: true` puts first on a route.
"""

from .authorizer import MtlsAuthorizer
from .cert import CertificateError, ClientCert
from .engine import ClientCertVerifier
from .gate import ClientCertGate
from .settings import MtlsAuthorizerSettings, build_engine

__all__ = [
    "CertificateError",
    "ClientCert",
    "ClientCertGate",
    "ClientCertVerifier",
    "MtlsAuthorizer",
    "MtlsAuthorizerSettings",
    "build_engine",
]
