"""The config YAML loader: `parse_config` (YAML with its node tree, duplicate keys, merge keys, aliases, timestamps,
escapes, then the settings models and the cross-checks), and `compile_runtime` on what it accepts.

Seeds: the embedded default config, the shipped container config, the fuzz world's own config (files that exist)
and small broken ones (tabs, duplicate keys, impossible dates, surrogate escapes, aliases, unknown keys).
`plugins:` imports are replaced, for the run, by a stand-in that refuses every module (the fuzzer must not import
whatever module name it spells). Oracle: a bad file is a `ConfigError` whose every issue names the file and a line
or a field (never another exception, and in bounded time: libFuzzer's per-input timeout); a good one compiles into
a runtime or is refused with a `ConfigError` the same way.
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from types import ModuleType
from unittest import mock

from sidecar import config as config_module
from sidecar.config import ConfigError, default_config_text, parse_config
from sidecar.runtime import compile_runtime
from tests.unit.authorizers.jwt.jwt_testkit import Issuer

from ..harness import OneInput, Target, text
from ..world import config_text

REPO = Path(__file__).resolve().parents[3]
FILE = "fuzz.yaml"


def _refuse(name: str) -> ModuleType:
    raise ModuleNotFoundError(f"no module named {name!r} (the fuzzer imports nothing)")


def _located(exc: ConfigError) -> None:
    assert exc.issues, exc
    for issue in exc.issues:
        assert issue.file.startswith(FILE) or issue.file.startswith("/"), issue
        assert issue.line >= 0 and issue.column >= 0, issue
        assert issue.line or issue.field or issue.file != FILE, issue
        assert issue.message, issue


def one_input(data: bytes) -> None:
    with mock.patch.object(config_module, "importlib", mock.Mock(import_module=_refuse)):
        try:
            config = parse_config(text(data), FILE)
        except ConfigError as exc:
            _located(exc)
            return
    try:
        compile_runtime(config)
    except ConfigError as exc:
        _located(exc)


def seeds() -> list[bytes]:
    folder = Path(tempfile.mkdtemp(prefix="authz-fuzz-config-"))
    world = config_text(folder, Issuer.default())
    found = [
        default_config_text().encode(),
        world.encode(),
        (REPO / "deploy" / "config" / "container.yaml").read_bytes(),
    ]
    found += [
        b"api: {id: a, stage: b}\napi: {id: c}\n",
        b"routes:\n\t- {match: 'GET /'}\n",
        b"a: &x {b: 1}\nc:\n  <<: *x\n  b: 2\n",
        b'authorizers:\n  j: {type: jwt, issuer: "\\ud800"}\n',
        b"listen: {grpc: 2027-02-30}\n",
        b"plugins: [os]\n",
        b"routes: [{match: 'ANY /{proxy+}', authorizer: nope}]\n",
        b"- 1\n- [2, {3: 4}]\n",
        b"cache: {redis: {url: 'redis://127.0.0.1:1/0', timeout_ms: -1}}\n",
    ]
    return found


def prepare() -> OneInput:
    importlib.import_module("sidecar.runtime")
    return one_input


TARGET = Target(
    name="config_yaml",
    summary=(
        "the config YAML loader (parse_config: YAML node tree, duplicate and merge keys, aliases, timestamps, "
        "escapes, settings models, cross-checks) and compile_runtime on what it accepts; oracle: a bad file is a "
        "ConfigError whose every issue names the file and a line or field, never another exception, in bounded time"
    ),
    prepare=prepare,
    seeds=seeds,
)
