"""Micro-benchmark: SigV4 verification on the hot path (header form, warm signing key), plus its parts.

Run: `python -m benchmarks.micro_sigv4`. Prints medians in microseconds (time.perf_counter_ns over batches of
calls so timer overhead does not dominate). No assertions: the figures and the target go in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from sidecar.authorizers.sigv4 import sigv4a
from sidecar.authorizers.sigv4.authorizer import SigV4Authorizer
from sidecar.authorizers.sigv4.canonical import parse_authorization
from sidecar.authorizers.sigv4.credentials import Credential, StaticCredentialStore, principal_details
from sidecar.authorizers.sigv4.verifier import SigV4Verifier, VerifierOptions
from sidecar.request import Request

BATCH = 500
ROUNDS = 30
AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HOST = "abc123.execute-api.us-east-1.amazonaws.com"


def _credential() -> Credential:
    arn = "arn:aws:iam::123456789012:user/alice"
    account, kind, user_id, username = principal_details(arn)
    return Credential(AKID, SECRET, arn, account, kind, user_id or AKID, username)


def _envoy_request(aws: AWSRequest, method: str, body: bytes) -> Request:
    from urllib.parse import urlsplit

    parts = urlsplit(aws.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in aws.headers.items()}
    headers.setdefault("host", parts.netloc)
    # What Envoy adds on the way (unsigned, so ignored by the verifier but present in the map).
    headers.update(
        {
            "x-forwarded-proto": "https",
            "x-request-id": "5b9c3a1e-8d7f-4c1b-9a2e-000000000000",
            "user-agent": "Boto3/1.35 md/Botocore#1.35",
            "accept-encoding": "identity",
        }
    )
    return Request(method, target, parts.path, headers, host=parts.netloc, body=body, time=time.time())


def header_request(method: str = "GET", body: bytes = b"") -> Request:
    url = f"https://{HOST}/prod/orders/42?expand=items&limit=10"
    aws = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(AKID, SECRET), "execute-api", "us-east-1").add_auth(aws)
    return _envoy_request(aws, method, body)


def query_request() -> Request:
    aws = AWSRequest(method="GET", url=f"https://{HOST}/prod/orders/42?expand=items")
    SigV4QueryAuth(Credentials(AKID, SECRET), "execute-api", "us-east-1", expires=3600).add_auth(aws)
    return _envoy_request(aws, "GET", b"")


def median_us(fn: Callable[[], object], batch: int = BATCH) -> float:
    """Median microseconds per call of `fn`."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter_ns() - start) / batch / 1000)
    return statistics.median(samples)


def main() -> None:
    store = StaticCredentialStore([_credential()])
    verifier = SigV4Verifier(store, VerifierOptions(service="execute-api", regions=frozenset({"us-east-1"})))
    get = header_request()
    post = header_request("POST", b'{"item": "book", "qty": 2, "note": "' + b"x" * 900 + b'"}')
    presigned = query_request()
    for request in (get, post, presigned):
        verifier.verify(request)  # warm the signing key

    authorizer = SigV4Authorizer("iam", verifier)

    def authenticate() -> None:
        coro = authorizer.authenticate(get)
        with contextlib.suppress(StopIteration):
            coro.send(None)  # the authorizer never awaits on this path: one send runs it to completion

    cold_store = StaticCredentialStore([_credential()], max_signing_keys=1)
    cold = SigV4Verifier(cold_store, verifier.options)

    def verify_cold() -> None:
        cold_store.current._signing_keys.clear()
        cold.verify(get)

    a_key = sigv4a.derive_private_key(AKID, SECRET)
    sts = b"AWS4-ECDSA-P256-SHA256\n20150830T123600Z\n20150830/service/aws4_request\n" + b"0" * 64
    a_sig = sigv4a.sign(a_key, sts)
    a_pub = a_key.public_key()

    rows = [
        ("verify header form, GET, warm key", lambda: verifier.verify(get)),
        ("verify header form, POST 1 KB body, warm key", lambda: verifier.verify(post)),
        ("verify presigned query form, warm key", lambda: verifier.verify(presigned)),
        ("authenticate() header form (-> Principal)", authenticate),
        ("verify header form, cold key (derive each time)", verify_cold),
        ("parse Authorization header", lambda: parse_authorization(get.headers["authorization"])),
        ("SigV4a ECDSA P-256 verify (signature only)", lambda: sigv4a.verify(a_pub, a_sig, sts)),
    ]
    print(f"{'what':52} median us")
    for label, fn in rows:
        batch = 50 if "SigV4a" in label else BATCH
        print(f"{label:52} {median_us(fn, batch):8.1f}")


if __name__ == "__main__":
    main()
