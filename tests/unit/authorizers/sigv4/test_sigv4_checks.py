"""Every check around the signature: malformed shapes, scope, time, credentials, payload, SigV4a regions.

Each bad input must be a `Denied` with the right AWS reason, never another exception and never an allow.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sigv4_testkit import (
    AKID,
    CRT,
    SECRET,
    VECTOR_TIME,
    credential,
    envoy_request,
    parse_http,
    self_sign,
    to_wire,
    verifier,
)

from sidecar.authorizers.sigv4.authorizer import SigV4Authorizer
from sidecar.authorizers.sigv4.errors import (
    CONTENT_SHA256_MISMATCH,
    EXPIRED_TOKEN,
    INCOMPLETE_SIGNATURE,
    INVALID_CLIENT_TOKEN_ID,
    INVALID_SIGNATURE,
    PARTIAL_BODY,
    REASONS,
    REQUEST_TIME_TOO_SKEWED,
    SIGNATURE_EXPIRED,
    UNRECOGNIZED_CLIENT,
)
from sidecar.authorizers.sigv4.verifier import SigV4Verifier
from sidecar.reasons import MISSING_AUTHENTICATION_TOKEN, Denied
from sidecar.request import Request

GOOD_AUTH = (
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
)
BASE_HEADERS = {"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"}


def req(headers: dict[str, str] | None = None, target: str = "/", at: float = VECTOR_TIME, **kw: object) -> Request:
    h = dict(BASE_HEADERS if headers is None else headers)
    return Request("GET", target, target.partition("?")[0], h, host=h.get("host", ""), time=at, **kw)  # type: ignore[arg-type]


def presigned(case: str = "get-vanilla", variant: str = "v4") -> Request:
    message = parse_http((CRT / variant / case / "query-signed-request.txt").read_text())
    path, _, query = message.target.partition("?")
    return envoy_request(message, wire_target=f"{to_wire(path)}?{query}")


def deny_reason(v: SigV4Verifier, request: Request) -> str:
    with pytest.raises(Denied) as info:
        v.verify(request)
    assert info.value.status in (400, 401, 403, 413)
    return info.value.reason


def test_vanilla_baseline_is_accepted() -> None:
    verifier().verify(req({**BASE_HEADERS, "authorization": GOOD_AUTH}))
    verifier().verify(presigned())


# -- missing / malformed shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [BASE_HEADERS, {**BASE_HEADERS, "authorization": ""}, {**BASE_HEADERS, "authorization": "   "}]
)
def test_no_signature_at_all_is_missing_authentication_token(headers: dict[str, str]) -> None:
    assert deny_reason(verifier(), req(headers)) == MISSING_AUTHENTICATION_TOKEN


MALFORMED_AUTHORIZATION = {
    "bearer": "Bearer abc.def.ghi",
    "basic": "Basic QUtJRDpzZWNyZXQ=",
    "algorithm only": "AWS4-HMAC-SHA256",
    "lower-case algorithm": GOOD_AUTH.replace("AWS4-HMAC-SHA256", "aws4-hmac-sha256"),
    "sigv2": "AWS AKIDEXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=",
    "no credential": GOOD_AUTH.split(" ", 1)[0] + " SignedHeaders=host;x-amz-date, Signature=00",
    "no signed headers": GOOD_AUTH.replace("SignedHeaders=host;x-amz-date, ", ""),
    "no signature": GOOD_AUTH.rsplit(",", 1)[0],
    "empty signature": GOOD_AUTH.rsplit("=", 1)[0] + "=",
    "empty credential": GOOD_AUTH.replace(
        "Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request", "Credential="
    ),
    "duplicate credential": GOOD_AUTH + ", Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request",
    "unknown element": GOOD_AUTH + ", Foo=bar",
    "element without =": GOOD_AUTH + ", Foo",
    "credential 4 parts": GOOD_AUTH.replace("/us-east-1/service/", "/us-east-1/"),
    "credential 6 parts": GOOD_AUTH.replace("/service/", "/service/extra/"),
    "credential empty part": GOOD_AUTH.replace("/us-east-1/", "//"),
    "credential bad date": GOOD_AUTH.replace("/20150830/", "/2015-08-30/"),
    "credential no slashes": GOOD_AUTH.replace("AKIDEXAMPLE/20150830/us-east-1/service/aws4_request", "AKIDEXAMPLE"),
    "access key with space": GOOD_AUTH.replace("AKIDEXAMPLE/", "AKID EXAMPLE/"),
    "signed headers upper-case": GOOD_AUTH.replace("host;x-amz-date", "Host;X-Amz-Date"),
    "signed headers unsorted": GOOD_AUTH.replace("host;x-amz-date", "x-amz-date;host"),
    "signed headers duplicate": GOOD_AUTH.replace("host;x-amz-date", "host;host;x-amz-date"),
    "signed headers empty item": GOOD_AUTH.replace("host;x-amz-date", "host;;x-amz-date"),
    "signed headers without host": GOOD_AUTH.replace("host;x-amz-date", "x-amz-date"),
    "signed headers without date": GOOD_AUTH.replace("host;x-amz-date", "host"),
    "signed header absent": GOOD_AUTH.replace("host;x-amz-date", "host;x-absent;x-amz-date"),
    "too long": GOOD_AUTH + ", " + "x" * 9000,
}


@pytest.mark.parametrize("value", MALFORMED_AUTHORIZATION.values(), ids=MALFORMED_AUTHORIZATION.keys())
def test_malformed_authorization_is_incomplete_signature(value: str) -> None:
    assert deny_reason(verifier(), req({**BASE_HEADERS, "authorization": value})) == INCOMPLETE_SIGNATURE


@pytest.mark.parametrize(
    "signature",
    ["5FA00FA31553B73EBF1942676E86291E8372FF2A2260956D9B8AAE1D763FBF31", "zz", "5fa0" * 32, "é" * 64, "0" * 64],
)
def test_wrong_signature_values_are_invalid_signature(signature: str) -> None:
    value = GOOD_AUTH.rsplit("=", 1)[0] + "=" + signature
    assert deny_reason(verifier(), req({**BASE_HEADERS, "authorization": value})) == INVALID_SIGNATURE


@pytest.mark.parametrize(
    "date", ["2015-08-30T12:36:00Z", "20150830T123600", "20151340T123600Z", "20150830T256000Z", "", "x" * 40]
)
def test_malformed_x_amz_date(date: str) -> None:
    headers = {**BASE_HEADERS, "x-amz-date": date, "authorization": GOOD_AUTH}
    assert deny_reason(verifier(), req(headers)) == INCOMPLETE_SIGNATURE


def test_no_date_header_at_all() -> None:
    headers = {"host": "example.amazonaws.com", "authorization": GOOD_AUTH.replace("host;x-amz-date", "host")}
    assert deny_reason(verifier(), req(headers)) == INCOMPLETE_SIGNATURE


def test_http_date_header_may_replace_x_amz_date() -> None:
    request = self_sign("GET", "/", {"Date": "Sun, 30 Aug 2015 12:36:00 GMT"})
    assert "x-amz-date" not in request.headers
    verifier().verify(request)
    unsigned = self_sign("GET", "/", {"Date": "Sun, 30 Aug 2015 12:36:00 GMT"}, signed=["host"])
    assert deny_reason(verifier(), unsigned) == INCOMPLETE_SIGNATURE
    bad = request._replace(headers={**request.headers, "date": "yesterday"})
    assert deny_reason(verifier(), bad) == INCOMPLETE_SIGNATURE


# -- scope ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("/20150830/", "/20150831/"), INVALID_SIGNATURE),
        (("/us-east-1/", "/eu-west-1/"), INVALID_SIGNATURE),
        (("/service/", "/execute-api/"), INVALID_SIGNATURE),
        (("aws4_request", "aws4_reques"), INVALID_SIGNATURE),
    ],
    ids=["date", "region", "service", "terminator"],
)
def test_scope_mismatch(change: tuple[str, str], reason: str) -> None:
    headers = {**BASE_HEADERS, "authorization": GOOD_AUTH.replace(*change)}
    assert deny_reason(verifier(), req(headers)) == reason


def test_any_configured_region_is_accepted() -> None:
    request = self_sign("GET", "/", {}, region="eu-west-1")
    verifier(regions=["us-east-1", "eu-west-1"]).verify(request)
    assert deny_reason(verifier(regions=["us-east-1"]), request) == INVALID_SIGNATURE


# -- time -------------------------------------------------------------------------------------------------------


def test_clock_skew_window() -> None:
    good = req({**BASE_HEADERS, "authorization": GOOD_AUTH})
    v = verifier()
    v.verify(good._replace(time=VECTOR_TIME + 300))
    v.verify(good._replace(time=VECTOR_TIME - 300))
    assert deny_reason(v, good._replace(time=VECTOR_TIME + 301)) == SIGNATURE_EXPIRED
    assert deny_reason(v, good._replace(time=VECTOR_TIME - 301)) == REQUEST_TIME_TOO_SKEWED
    wide = verifier(clock_skew=900)
    wide.verify(good._replace(time=VECTOR_TIME + 899))


def test_expired_message_names_the_times() -> None:
    good = req({**BASE_HEADERS, "authorization": GOOD_AUTH}, at=VECTOR_TIME + 3600)
    with pytest.raises(Denied) as info:
        verifier().verify(good)
    assert "Signature expired: 20150830T123600Z is now earlier than 20150830T133100Z" in info.value.message


def test_presigned_window() -> None:
    request = presigned()
    v = verifier()
    v.verify(request._replace(time=VECTOR_TIME + 3600))
    v.verify(request._replace(time=VECTOR_TIME - 300))
    assert deny_reason(v, request._replace(time=VECTOR_TIME + 3601)) == SIGNATURE_EXPIRED
    assert deny_reason(v, request._replace(time=VECTOR_TIME - 301)) == REQUEST_TIME_TOO_SKEWED


@pytest.mark.parametrize("expires", ["0", "604801", "-1", "abc", "1e3", "99999999"])
def test_presigned_expires_bounds(expires: str) -> None:
    request = presigned()
    bad = request._replace(raw_path=request.raw_path.replace("X-Amz-Expires=3600", f"X-Amz-Expires={expires}"))
    assert deny_reason(verifier(), bad) == INCOMPLETE_SIGNATURE


def test_presigned_max_expires_is_configurable() -> None:
    assert deny_reason(verifier(max_expires=600), presigned()) == INCOMPLETE_SIGNATURE


@pytest.mark.parametrize(
    "edit",
    [
        ("X-Amz-Expires=3600&", ""),
        ("X-Amz-SignedHeaders=host&", ""),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA1"),
        ("X-Amz-Credential=AKIDEXAMPLE%2F20150830", "X-Amz-Credential=AKIDEXAMPLE%2F2015"),
        ("X-Amz-Date=20150830T123600Z", "X-Amz-Date=20150830T123600Z&X-Amz-Date=20150830T123600Z"),
        ("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=x-amz-date"),
        ("X-Amz-Date=20150830T123600Z", "X-Amz-Date=%FF"),
    ],
    ids=["no-expires", "no-signed-headers", "bad-algorithm", "bad-credential", "repeated", "no-host", "bad-utf8"],
)
def test_malformed_presigned(edit: tuple[str, str]) -> None:
    request = presigned()
    bad = request._replace(raw_path=request.raw_path.replace(*edit))
    assert bad.raw_path != request.raw_path
    assert deny_reason(verifier(), bad) == INCOMPLETE_SIGNATURE


def test_signature_without_algorithm_and_both_mechanisms() -> None:
    request = presigned()
    no_algorithm = request._replace(raw_path=request.raw_path.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256&", ""))
    assert deny_reason(verifier(), no_algorithm) == INCOMPLETE_SIGNATURE
    both = request._replace(headers={**request.headers, "authorization": GOOD_AUTH})
    assert deny_reason(verifier(), both) == INCOMPLETE_SIGNATURE


# -- credentials ------------------------------------------------------------------------------------------------


def test_credential_states() -> None:
    good = req({**BASE_HEADERS, "authorization": GOOD_AUTH})
    assert deny_reason(verifier([credential("AKIDOTHER")]), good) == UNRECOGNIZED_CLIENT
    assert deny_reason(verifier([credential(enabled=False)]), good) == INVALID_CLIENT_TOKEN_ID
    assert deny_reason(verifier([credential(expires_at=VECTOR_TIME)]), good) == EXPIRED_TOKEN
    verifier([credential(expires_at=VECTOR_TIME + 1)]).verify(good)


def _sts_case(name: str, form: str = "header", variant: str = "v4a") -> Request:
    message = parse_http((CRT / variant / name / f"{form}-signed-request.txt").read_text())
    return envoy_request(message)


STS_TOKEN = (
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8Y"
    "UuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6"
    "fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabI"
    "Qwj2ICCR/oLxBA=="
)


def test_session_tokens() -> None:
    before = _sts_case("post-sts-header-before")
    temporary = verifier([credential(token=STS_TOKEN)])
    temporary.verify(before)
    # temporary credentials without their token, or with another one
    no_token = {k: v for k, v in before.headers.items() if k != "x-amz-security-token"}
    assert deny_reason(temporary, before._replace(headers=no_token)) in {INVALID_CLIENT_TOKEN_ID}
    wrong = {**before.headers, "x-amz-security-token": STS_TOKEN[:-3] + "xx="}
    assert deny_reason(temporary, before._replace(headers=wrong)) == INVALID_CLIENT_TOKEN_ID
    # a token presented for long-term credentials
    assert deny_reason(verifier([credential()]), before) == INVALID_CLIENT_TOKEN_ID
    # a token that was added after signing is accepted unless signed tokens are required
    after = _sts_case("post-sts-header-after")
    temporary.verify(after)
    strict = verifier([credential(token=STS_TOKEN)], require_signed_session_token=True)
    strict.verify(before)
    assert deny_reason(strict, after) == INCOMPLETE_SIGNATURE
    assert deny_reason(strict, _sts_case("post-sts-header-after", "query")) == INVALID_SIGNATURE


# -- payload ----------------------------------------------------------------------------------------------------


def test_payload_rules() -> None:
    body = b"Param1=value1"
    request = self_sign("POST", "/", {"Content-Type": "text/plain"}, body=body)
    v = verifier()
    v.verify(request)
    partial = request._replace(headers={**request.headers, "x-envoy-auth-partial-body": "true"})
    with pytest.raises(Denied) as info:
        v.verify(partial)
    assert (info.value.reason, info.value.status) == (PARTIAL_BODY, 413)
    streaming = request._replace(
        headers={**request.headers, "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}
    )
    assert deny_reason(v, streaming) == INCOMPLETE_SIGNATURE
    declared_wrong = request._replace(headers={**request.headers, "x-amz-content-sha256": "ab" * 32})
    assert deny_reason(v, declared_wrong) == CONTENT_SHA256_MISMATCH


# -- SigV4a -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region_set", "served", "ok"),
    [
        ("us-east-1", ["us-east-1"], True),
        ("*", ["ap-south-2"], True),
        ("us-*", ["us-west-2"], True),
        ("eu-*,us-east-1", ["us-east-1"], True),
        ("eu-west-1, us-east-*", ["us-east-2"], True),
        ("us-*", ["eu-west-1"], False),
        ("us-east-1", ["us-east-2"], False),
        ("u*-east-1", ["us-east-1"], True),
        ("us-east-1,", ["us-east-1"], False),
    ],
)
def test_sigv4a_region_sets(region_set: str, served: list[str], ok: bool) -> None:
    alg = "AWS4-ECDSA-P256-SHA256"
    request = self_sign("GET", "/", {"X-Amz-Region-Set": region_set}, algorithm=alg)
    v = verifier(regions=served)
    if ok:
        v.verify(request)
    else:
        assert deny_reason(v, request) in {INVALID_SIGNATURE}


def test_sigv4a_region_set_must_be_present_and_signed() -> None:
    alg = "AWS4-ECDSA-P256-SHA256"
    missing = self_sign("GET", "/", {}, algorithm=alg)
    assert deny_reason(verifier(), missing) == INCOMPLETE_SIGNATURE
    unsigned = self_sign("GET", "/", {"X-Amz-Region-Set": "*"}, algorithm=alg, signed=["host", "x-amz-date"])
    assert deny_reason(verifier(), unsigned) == INCOMPLETE_SIGNATURE
    only_hmac = verifier(algorithms=frozenset({"AWS4-HMAC-SHA256"}))
    assert deny_reason(only_hmac, self_sign("GET", "/", {"X-Amz-Region-Set": "*"}, algorithm=alg)) == (
        INCOMPLETE_SIGNATURE
    )
    # SigV4a credentials have 4 parts; a SigV4 shaped one is malformed
    bad_scope = self_sign("GET", "/", {"X-Amz-Region-Set": "*"}, algorithm=alg)
    auth = bad_scope.headers["authorization"].replace("/service/", "/us-east-1/service/")
    assert deny_reason(verifier(), bad_scope._replace(headers={**bad_scope.headers, "authorization": auth})) == (
        INCOMPLETE_SIGNATURE
    )


@pytest.mark.parametrize("signature", ["", "zz", "30" * 80, "3006020101020101", "00"])
def test_sigv4a_garbage_signatures(signature: str) -> None:
    request = self_sign("GET", "/", {"X-Amz-Region-Set": "*"}, algorithm="AWS4-ECDSA-P256-SHA256")
    auth = request.headers["authorization"].rsplit("=", 1)[0] + "=" + signature
    reason = deny_reason(verifier(), request._replace(headers={**request.headers, "authorization": auth}))
    assert reason in {INVALID_SIGNATURE, INCOMPLETE_SIGNATURE}


# -- status and challenge --------------------------------------------------------------------------------------


def test_status_is_403_by_default_and_401_with_challenge_when_configured() -> None:
    request = req()
    with pytest.raises(Denied) as info:
        verifier().verify(request)
    assert info.value.status == 403
    with pytest.raises(Denied) as info:
        verifier(deny_status=401).verify(request)
    decision = info.value.decision(challenge=SigV4Authorizer.challenge)
    assert decision.status == 401
    assert ("www-authenticate", "AWS4-HMAC-SHA256") in decision.headers
    assert decision.reason == MISSING_AUTHENTICATION_TOKEN


# -- fuzzing ----------------------------------------------------------------------------------------------------

_component = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request",
            "Credential=AKIDEXAMPLE/20150830/service/aws4_request",
            "SignedHeaders=host;x-amz-date",
            "SignedHeaders=host;x-amz-date;x-amz-region-set",
            "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            "Signature=3045022100",
            "Credential=/",
            "SignedHeaders=",
            "=",
            ",",
        ]
    ),
)
_authorization = st.one_of(
    st.text(max_size=300),
    st.builds(
        lambda alg, parts, sep: alg + " " + sep.join(parts),
        st.sampled_from(["AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256", "AWS4", ""]),
        st.lists(_component, max_size=6),
        st.sampled_from([", ", ",", " , ", ";"]),
    ),
)


# 150 examples in the suite (was 400): tests/fuzz/targets/sigv4.py drives this code at scale.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(authorization=_authorization, date=st.one_of(st.just("20150830T123600Z"), st.text(max_size=20)))
def test_fuzz_authorization_header_never_crashes(authorization: str, date: str) -> None:
    v = verifier([credential()])
    headers = {
        "host": "example.amazonaws.com",
        "x-amz-date": date,
        "x-amz-region-set": "*",
        "authorization": authorization,
    }
    with pytest.raises(Denied) as info:
        v.verify(req(headers))
    assert info.value.reason in REASONS


_query_piece = st.one_of(
    st.sampled_from(
        [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request",
            "X-Amz-Date=20150830T123600Z",
            "X-Amz-Expires=3600",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Signature=00",
            "X-Amz-Security-Token=%ZZ",
            "X-Amz-Region-Set=%2A",
        ]
    ),
    st.text(alphabet=st.characters(codec="ascii"), max_size=30),
)


# 150 examples in the suite (was 400): tests/fuzz/targets/sigv4.py drives this code at scale.
@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(_query_piece, max_size=9), path=st.text(max_size=30))
def test_fuzz_presigned_query_never_crashes(pieces: list[str], path: str) -> None:
    target = "/" + path + "?" + "&".join(pieces)
    with pytest.raises(Denied) as info:
        verifier().verify(req({"host": "example.amazonaws.com"}, target=target))
    assert info.value.reason in REASONS


def test_wrong_secret_is_invalid_signature() -> None:
    request = self_sign("GET", "/", {}, secret=SECRET + "x")
    assert deny_reason(verifier(), request) == INVALID_SIGNATURE
    assert AKID in request.headers["authorization"]


def test_encoded_lookalike_of_the_signature_parameter_is_not_dropped() -> None:
    request = presigned()
    smuggled = request._replace(raw_path=request.raw_path + "&X%2DAmz-Signature=anything")
    assert deny_reason(verifier(), smuggled) == INVALID_SIGNATURE
    extra_token = request._replace(raw_path=request.raw_path + "&X%2DAmz-Security-Token=x")
    assert deny_reason(verifier(), extra_token) == INVALID_SIGNATURE


@pytest.mark.parametrize("target", ["/\ud800", "/ok?\udfff=1", "/ok?a=\ud800"])
def test_unencodable_text_is_a_deny_not_a_crash(target: str) -> None:
    headers = {**BASE_HEADERS, "authorization": GOOD_AUTH}
    assert deny_reason(verifier(), req(headers, target=target)) in {INCOMPLETE_SIGNATURE, INVALID_SIGNATURE}
    surrogate_header = {**headers, "x-amz-date": "20150830T123600Z", "host": "\ud800"}
    assert deny_reason(verifier(), req(surrogate_header)) in {INCOMPLETE_SIGNATURE, INVALID_SIGNATURE}


# 100 examples in the suite (was 300): tests/fuzz/targets/sigv4.py drives this code at scale.
@settings(max_examples=100, deadline=None)
@given(
    date=st.text(max_size=40),
    host=st.text(max_size=40),
    extra=st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=4),
    target=st.text(max_size=40),
    body=st.binary(max_size=64),
)
def test_fuzz_whole_request_never_crashes(
    date: str, host: str, extra: dict[str, str], target: str, body: bytes
) -> None:
    headers = {k.lower(): v for k, v in extra.items()}
    headers.update({"date": date, "host": host})
    headers["authorization"] = GOOD_AUTH.replace("host;x-amz-date", ";".join(sorted({"date", "host", *headers})))
    request = Request("POST", "/" + target, "/" + target.partition("?")[0], headers, body=body, time=VECTOR_TIME)
    with pytest.raises(Denied) as info:
        verifier().verify(request)
    assert info.value.reason in REASONS


def test_replay_ttl_covers_exactly_the_validity_window() -> None:
    header = req({**BASE_HEADERS, "authorization": GOOD_AUTH}, at=VECTOR_TIME + 100)
    assert verifier().verify(header).replay_ttl == 200  # valid until X-Amz-Date + 300 s
    assert verifier().verify(presigned()._replace(time=VECTOR_TIME + 600)).replay_ttl == 3000  # + X-Amz-Expires


def test_missing_request_time_falls_back_to_the_clock() -> None:
    fresh = self_sign("GET", "/", {}, at=time.time())._replace(time=0.0)
    verifier().verify(fresh)
    stale = req({**BASE_HEADERS, "authorization": GOOD_AUTH}, at=0.0)
    assert deny_reason(verifier(), stale) == SIGNATURE_EXPIRED


def test_parsed_signature_templates_are_remembered_but_never_mix_signatures_or_hide_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sidecar.authorizers.sigv4 import canonical

    monkeypatch.setattr(canonical, "_TEMPLATES", {})
    head = (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date"
    )
    one = canonical.parse_authorization(f"{head}, Signature={'a' * 64}")
    two = canonical.parse_authorization(f"{head}, Signature={'b' * 64}")
    assert (one.signature, two.signature) == ("a" * 64, "b" * 64)
    assert one.signed_headers is two.signed_headers and one.scope == "20150830/us-east-1/service/aws4_request"
    assert len(canonical._TEMPLATES) == 1
    bad = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/2015/us-east-1/service/aws4_request, SignedHeaders=host, Signature=x"
    for _ in range(2):  # a malformed credential is refused every time; nothing is remembered for it
        with pytest.raises(canonical.MalformedSignature):
            canonical.parse_authorization(bad)
    for i in range(canonical._MAX_TEMPLATES + 3):
        canonical.parse_authorization(
            f"AWS4-HMAC-SHA256 Credential=AKID{i}/20150830/us-east-1/s/aws4_request, SignedHeaders=host, Signature=x"
        )
    assert len(canonical._TEMPLATES) <= canonical._MAX_TEMPLATES


@pytest.mark.parametrize("length", [10, 2000])
def test_remembered_path_and_query_equal_the_computed_ones(length: int) -> None:
    from sidecar.authorizers.sigv4 import canonical

    path = "/a/./b/../c%20d/" + "x" * length
    query = "b=2&a=1&c=%7e&" + "z=" + "y" * length
    for normalize, double in ((True, True), (False, False), (True, False)):
        expected = canonical.canonical_path(path, normalize=normalize, double_encode=double)
        assert canonical.remembered_path(path, normalize, double) == expected
        assert canonical.remembered_path(path, normalize, double) == expected  # the second answer is the memo's
    assert canonical.remembered_query(query) == canonical.canonical_query(query)
    assert canonical.remembered_query(query) == canonical.canonical_query(query)
