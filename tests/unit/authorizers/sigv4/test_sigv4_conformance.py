"""Conformance: every case of the classic suite and of the CRT v4 / v4a suites, header and query forms.

Each case is turned into the Request Envoy would deliver: the vector's request target is written unencoded (a raw
space, raw UTF-8), so it is first put in its on-the-wire form (`to_wire`: encode only what may not travel raw).
The vectors' signer encodes the path it was given exactly once. When that path can travel unchanged, the
sidecar's non-S3 mode (`double_encode: true`, encode the wire path once more) sees the same bytes the signer saw;
when it cannot (`/example space/`, `/ሴ`), the wire form is the once-encoded path, so the single-encode mode
(`double_encode: false`, re-encode the decoded wire path canonically) is the one that reproduces the signer's
canonical URI. Both modes are exercised wherever both apply.

Every case must verify at its fixed time with the expected canonical request, and must be rejected after a
one-byte change to the signature, the path, a signed header, the query, the date or the body.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from sigv4_testkit import (
    Case,
    HttpMessage,
    classic_cases,
    credential,
    crt_cases,
    envoy_request,
    to_wire,
    verifier,
)

from sidecar.authorizers.sigv4.errors import CONTENT_SHA256_MISMATCH, INVALID_SIGNATURE
from sidecar.authorizers.sigv4.verifier import SigV4Verifier
from sidecar.reasons import Denied
from sidecar.request import Request

CASES = [*classic_cases(), *crt_cases("v4"), *crt_cases("v4a")]


def test_every_case_is_collected() -> None:
    by_suite: dict[str, int] = {}
    for case in CASES:
        by_suite[case.suite] = by_suite.get(case.suite, 0) + 1
    # classic: 34 header cases; CRT: every complete case directory, in both forms.
    assert by_suite == {"classic": 34, "crt-v4": 2 * 32, "crt-v4a": 2 * 31}


def _modes(case: Case) -> list[tuple[bool, str]]:
    """(double_encode, wire target) pairs that faithfully deliver this case (see the module docstring)."""
    path, sep, query = case.signed.target.partition("?")
    wire_query = f"?{to_wire(query)}" if sep else ""
    wire_path = to_wire(path)
    modes = [(False, wire_path + wire_query)]
    if wire_path == path:
        modes.append((True, path + wire_query))
    return modes


def _verifier(case: Case, double_encode: bool) -> SigV4Verifier:
    cred = credential(case.access_key_id, case.secret, token=case.token)
    return verifier(
        [cred], service=case.service, regions=[case.region], normalize_path=case.normalize, double_encode=double_encode
    )


def _mutations(request: Request) -> list[tuple[str, Request]]:
    """One-byte changes to signed parts of the request."""
    out: list[tuple[str, Request]] = []
    headers = dict(request.headers)
    path, sep, query = request.raw_path.partition("?")

    def with_target(target: str) -> Request:
        return request._replace(raw_path=target, path=target.partition("?")[0])

    def with_header(name: str, value: str) -> Request:
        return request._replace(headers={**headers, name: value})

    if "authorization" in headers:
        auth = headers["authorization"]
        last = auth[-1]
        out.append(("signature", with_header("authorization", auth[:-1] + ("0" if last != "0" else "1"))))
    else:
        flipped = re.sub(
            r"(X-Amz-Signature=[0-9a-f]*)([0-9a-f])", lambda m: m[1] + ("0" if m[2] != "0" else "1"), request.raw_path
        )
        out.append(("signature", with_target(flipped)))
    out.append(("path", with_target(path + "x" + sep + query)))
    out.append(("host", with_header("host", headers["host"].replace("example", "exbmple", 1))))
    if "x-amz-date" in headers:
        date = headers["x-amz-date"]
        out.append(("date", with_header("x-amz-date", date[:-2] + ("1" if date[-2] != "1" else "2") + "Z")))
    params = query.split("&") if query else []
    for index, param in enumerate(params):
        if not param.startswith("X-Amz-"):
            changed = [*params[:index], param + "1", *params[index + 1 :]]
            out.append(("query", with_target(path + "?" + "&".join(changed))))
            break
    if "X-Amz-Date=" in query:
        out.append(("query-date", with_target(request.raw_path.replace("T123600Z", "T123601Z"))))
    if request.body:
        out.append(("body", request._replace(body=request.body[:-1] + b"X")))
    if request.method == "GET":
        out.append(("method", request._replace(method="PUT")))
    else:
        out.append(("method", request._replace(method="PUT" if request.method != "PUT" else "GET")))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_verifies_and_one_byte_changes_are_rejected(case: Case) -> None:
    for double_encode, target in _modes(case):
        v = _verifier(case, double_encode)
        request = envoy_request(case.signed, wire_target=target, at=case.at)
        verified = v.verify(request)
        assert verified.credential.access_key_id == case.access_key_id
        if case.expected_creq is not None:
            payload_hash = case.expected_creq.rsplit("\n", 1)[1]
            built = v.canonical_request(request, verified.params, payload_hash, unsigned_token=verified.unsigned_token)
            assert built == case.expected_creq
            assert verified.unsigned_token == (case.name == "post-sts-header-after" and case.form == "query")
        for label, mutated in _mutations(request):
            with pytest.raises(Denied) as info:
                v.verify(mutated)
            assert info.value.reason in {INVALID_SIGNATURE, CONTENT_SHA256_MISMATCH}, (label, info.value.reason)


# The two v4a cases shipped with inputs only: their canonical requests follow from the specification (repeated
# keys sorted by value, byte-wise), and the signature is made here with the SigV4a key derived from the secret.
_INPUT_ONLY = {
    "get-vanilla-query-order-key": "Param1=Value1&Param1=value2",
    "get-vanilla-query-order-value": "Param1=value1&Param1=value2",
}


@pytest.mark.parametrize("name", sorted(_INPUT_ONLY))
def test_v4a_input_only_cases(name: str) -> None:
    from sigv4_testkit import CRT, parse_http

    from sidecar.authorizers.sigv4 import sigv4a

    case_dir = CRT / "v4a" / name
    message = parse_http((case_dir / "request.txt").read_text())
    expected_creq = (
        f"GET\n/\n{_INPUT_ONLY[name]}\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n"
        "x-amz-region-set:us-east-1\n\nhost;x-amz-date;x-amz-region-set\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    sts = (
        "AWS4-ECDSA-P256-SHA256\n20150830T123600Z\n20150830/service/aws4_request\n"
        + hashlib.sha256(expected_creq.encode()).hexdigest()
    )
    key = sigv4a.derive_private_key("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    signature = sigv4a.sign(key, sts.encode())
    headers = [
        *message.headers,
        ("X-Amz-Date", "20150830T123600Z"),
        ("X-Amz-Region-Set", "us-east-1"),
        (
            "Authorization",
            "AWS4-ECDSA-P256-SHA256 Credential=AKIDEXAMPLE/20150830/service/aws4_request, "
            f"SignedHeaders=host;x-amz-date;x-amz-region-set, Signature={signature}",
        ),
    ]
    signed = HttpMessage(message.method, message.target, headers, message.body)
    v = verifier()
    request = envoy_request(signed)
    verified = v.verify(request)
    assert v.canonical_request(request, verified.params, expected_creq.rsplit("\n", 1)[1]) == expected_creq
    for _label, mutated in _mutations(request):
        with pytest.raises(Denied):
            v.verify(mutated)
