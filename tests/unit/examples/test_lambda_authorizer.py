"""The shipped example handler (`sidecar/examples/lambda_authorizer.py`): it answers as its docstring says through
the real pipeline, its allow covers the whole stage (so the cached policy pitfall cannot bite it), and the copy
docs/custom-authorizers.md shows is its code."""

from __future__ import annotations

import inspect
from pathlib import Path

from sidecar.examples import lambda_authorizer
from tests.conftest import REPO
from tests.unit.authorizers.custom.lambda_testkit import pipeline, request, token
from tests.unit.test_docs import split_page

SETTINGS = "handler: sidecar.examples.lambda_authorizer:handler\nevent_format: token\ncache_key: identity\n"


async def test_the_example_answers_as_api_gateways_guide(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, SETTINGS + "context_to_headers: {stringKey: x-string-key}\n")
    allowed = await pipe.check(request(headers=token("allow")))
    assert allowed.allowed and dict(allowed.all_headers())["x-string-key"] == "value"
    denied = await pipe.check(request(headers=token("deny")))
    assert (denied.status, denied.reason) == (403, "AccessDenied")
    assert (await pipe.check(request(headers=token("unauthorized")))).status == 401
    assert (await pipe.check(request(headers=token("letmein")))).status == 500


async def test_its_cached_allow_covers_every_route_of_the_stage(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, SETTINGS)
    assert (await pipe.check(request("/pets/7", headers=token("allow")))).allowed
    for method, path in (("GET", "/owners/1"), ("DELETE", "/pets/8")):  # the same identity: the cached result
        assert (await pipe.check(request(path, method=method, headers=token("allow")))).allowed


def test_the_docs_show_its_code() -> None:
    _, blocks = split_page((REPO / "docs" / "custom-authorizers.md").read_text(encoding="utf-8"))
    shown = next(block.text for block in blocks if block.language == "python")
    code = "\n\n".join(
        inspect.getsource(function) for function in (lambda_authorizer.handler, lambda_authorizer.generate_policy)
    )
    assert shown.strip() == code.strip()
