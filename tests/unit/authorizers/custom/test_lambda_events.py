"""The events a `lambda` authorizer builds, read back with powertools' event classes field for field: what a
handler written for API Gateway reads is what API Gateway would have sent."""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerEventV2,
    APIGatewayAuthorizerRequestEvent,
    APIGatewayAuthorizerTokenEvent,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.authorizers.custom.events import EventSpec, RouteInfo, client_certificate, method_arn
from sidecar.policy import EvalContext
from sidecar.request import ANONYMOUS
from sidecar.settings import ApiSettings

from .lambda_testkit import ARN, T0, request

API = ApiSettings(id="a1b2c3d4e5", stage="prod", account="123456789012", region="us-east-1")
STAGE = {"StageVar1": "stageValue1"}
PETS = RouteInfo.of("GET /pets/{id}")


def test_a_token_event_has_the_three_fields_of_api_gateways() -> None:
    event = EventSpec("token", API).build(request(), PETS, ("Bearer abc.def",), T0)
    parsed = APIGatewayAuthorizerTokenEvent(event)
    assert set(event) == {"type", "authorizationToken", "methodArn"}
    assert parsed.get_type == "TOKEN"
    assert parsed.authorization_token == "Bearer abc.def"  # whole: the handler strips what it wants
    assert parsed.method_arn == f"{ARN}/GET/pets/7"
    arn = parsed.parsed_arn
    assert (arn.region, arn.aws_account_id, arn.api_id, arn.stage) == (
        "us-east-1",
        "123456789012",
        "a1b2c3d4e5",
        "prod",
    )
    assert (arn.http_method, arn.resource) == ("GET", "pets/7")


def test_a_request_event_reads_back_field_for_field() -> None:
    sent = request(
        headers={"headerauth1": "headerValue1", "x-api-key": "key-1"},
        query="QueryString1=queryValue1&multi=a&multi=b",
    )
    event = EventSpec("request", API, STAGE).build(sent, PETS, ("headerValue1",), T0)
    parsed = APIGatewayAuthorizerRequestEvent(event)
    assert parsed.get_type == "REQUEST"
    assert parsed.method_arn == f"{ARN}/GET/pets/7"
    assert parsed.resource == "/pets/{id}"
    assert parsed.path == "/pets/7"
    assert parsed.http_method == "GET"
    assert parsed.headers["HeaderAuth1"] == "headerValue1"  # powertools reads headers case-insensitively
    assert event["multiValueHeaders"]["headerauth1"] == ["headerValue1"]
    assert parsed.query_string_parameters == {"QueryString1": "queryValue1", "multi": "b"}  # the last, as REST
    assert event["multiValueQueryStringParameters"] == {"QueryString1": ["queryValue1"], "multi": ["a", "b"]}
    assert parsed.path_parameters == {"id": "7"}
    assert parsed.stage_variables == STAGE
    context = parsed.request_context
    assert context.account_id == "123456789012"
    assert context.api_id == "a1b2c3d4e5"
    assert context.stage == "prod"
    assert context.request_id == "req-1"
    assert context.resource_path == "/pets/{id}"
    assert context.http_method == "GET"
    assert context.path == "/pets/7"
    assert context.protocol == "HTTP/1.1"
    assert context.domain_name == "api.example.test"
    assert context.domain_prefix == "api"
    assert context.request_time_epoch == int(T0 * 1000)
    assert context.request_time == "15/Jan/2027:08:00:00 +0000"
    assert len(context.resource_id) == 6
    identity = context.identity
    assert identity.source_ip == "203.0.113.9"
    assert identity.user_agent == "curl/8.5"
    assert identity.api_key == "key-1"
    assert identity.client_cert is None
    assert identity.user_arn is None and identity.cognito_identity_id is None
    assert "version" not in event and "identitySource" not in event


def test_a_request_without_query_or_parameters_has_api_gateways_empty_values() -> None:
    event = EventSpec("request", API).build(request("/other"), RouteInfo.of("ANY /other"), (), T0)
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None
    assert event["pathParameters"] == {}
    assert event["stageVariables"] == {}


def test_an_http_api_1_0_event_adds_version_and_the_identity_source() -> None:
    sent = request(headers={"x-token": "t1"}, query="user=u1")
    event = EventSpec("http-1.0", API).build(sent, PETS, ("t1", "u1"), T0)
    parsed = APIGatewayAuthorizerRequestEvent(event)
    assert parsed.version == "1.0"
    assert parsed.get_type == "REQUEST"
    assert parsed.identity_source == "t1,u1"
    assert parsed.authorization_token == "t1,u1"
    assert parsed.method_arn == f"{ARN}/GET/pets/7"
    assert parsed.resource == "/pets/{id}"
    assert parsed.path_parameters == {"id": "7"}
    assert parsed.request_context.identity.source_ip == "203.0.113.9"


def test_an_http_api_2_0_event_reads_back_field_for_field() -> None:
    sent = request(
        headers={"authorization": "tok", "cookie": "a=1; b=2", "x-multi": "one,two"},
        query="p1=v1&p1=v2&p2=v",
        protocol="HTTP/2",
    )
    event = EventSpec("http-2.0", API, STAGE).build(sent, PETS, ("tok",), T0)
    parsed = APIGatewayAuthorizerEventV2(event)
    assert parsed.version == "2.0"
    assert parsed.get_type == "REQUEST"
    assert parsed.route_arn == f"{ARN}/GET/pets/7"
    assert parsed.identity_source == ["tok"]
    assert parsed.route_key == "GET /pets/{id}"
    assert parsed.raw_path == "/pets/7"
    assert parsed.raw_query_string == "p1=v1&p1=v2&p2=v"
    assert parsed.cookies == ["a=1", "b=2"]
    assert "cookie" not in parsed.headers  # 2.0 moves cookies out of the headers
    assert parsed.headers["x-multi"] == "one,two"
    assert parsed.query_string_parameters == {"p1": "v1,v2", "p2": "v"}  # repeats comma-joined
    assert parsed.path_parameters == {"id": "7"}
    assert parsed.stage_variables == STAGE
    context = parsed.request_context
    assert context.account_id == "123456789012"
    assert context.api_id == "a1b2c3d4e5"
    assert context.domain_name == "api.example.test"
    assert context.domain_prefix == "api"
    assert context.request_id == "req-1"
    assert context.route_key == "GET /pets/{id}"
    assert context.stage == "prod"
    assert context.time == "15/Jan/2027:08:00:00 +0000"
    assert context.time_epoch == int(T0 * 1000)
    assert context.authentication is None
    http = context.http
    assert (http.method, http.path, http.protocol) == ("GET", "/pets/7", "HTTP/2")
    assert (http.source_ip, http.user_agent) == ("203.0.113.9", "curl/8.5")


def test_a_2_0_event_leaves_out_what_the_request_lacks() -> None:
    event = EventSpec("http-2.0", API).build(request("/x"), RouteInfo(), (), T0)
    assert event["routeKey"] == "$default"
    for absent in ("cookies", "queryStringParameters", "pathParameters", "stageVariables"):
        assert absent not in event
    parsed = APIGatewayAuthorizerEventV2(event)
    assert parsed.path_parameters == {} and parsed.stage_variables == {} and parsed.identity_source == []


def test_a_greedy_parameter_and_an_any_route() -> None:
    route = RouteInfo.of("ANY /files/{path+}")
    assert (route.key, route.resource) == ("ANY /files/{path+}", "/files/{path+}")
    event = EventSpec("request", API).build(request("/files/a/b%20c.txt", method="DELETE"), route, (), T0)
    assert event["pathParameters"] == {"path": "a/b c.txt"}  # decoded, as the router reads it
    assert event["httpMethod"] == "DELETE"
    assert event["methodArn"] == f"{ARN}/DELETE/files/a/b c.txt"


def test_the_method_arn_is_the_arn_policies_judge() -> None:
    """HEAD is judged as GET and the path canonical: a policy written for the ARN the handler was given matches
    the request it was given."""
    for sent in (request("/pets/7", method="HEAD"), request("/pets/%37"), request("/pets/7/")):
        ctx = EvalContext(sent, ANONYMOUS, API)
        assert method_arn(API, sent) == ctx.resource
    assert method_arn(API, request("/pets/7", method="HEAD")) == f"{ARN}/GET/pets/7"


def _certificate() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com")])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example issuer")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(0xA1A2)
        .not_valid_before(dt.datetime(2019, 5, 28, 12, 30, 2, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2021, 8, 5, 9, 36, 4, tzinfo=dt.UTC))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_a_client_certificate_is_described_as_api_gateway_describes_it() -> None:
    pem = _certificate()
    sent = request(peer_certificate=quote(pem))  # Envoy sends it URL-encoded
    v2 = APIGatewayAuthorizerEventV2(EventSpec("http-2.0", API).build(sent, PETS, (), T0))
    cert = v2.request_context.authentication
    assert cert is not None
    assert cert.client_cert_pem == pem
    assert cert.subject_dn == "CN=www.example.com"
    assert cert.issuer_dn == "CN=Example issuer"
    assert cert.serial_number == "a1:a2"
    assert cert.validity_not_before == "May 28 12:30:02 2019 GMT"
    assert cert.validity_not_after == "Aug  5 09:36:04 2021 GMT"
    rest = APIGatewayAuthorizerRequestEvent(EventSpec("request", API).build(sent, PETS, (), T0))
    assert rest.request_context.identity.client_cert is not None
    assert rest.request_context.identity.client_cert.subject_dn == "CN=www.example.com"
    assert client_certificate("not a certificate") is None


def test_each_event_is_a_fresh_object() -> None:
    spec = EventSpec("request", API, STAGE)
    first = spec.build(request(), PETS, (), T0)
    first["stageVariables"]["StageVar1"] = "changed by a handler"
    first["headers"]["host"] = "changed"
    second = spec.build(request(), PETS, (), T0)
    assert second["stageVariables"] == STAGE and second["headers"]["host"] == "api.example.test"
