"""The run layout: one module owns URI schemes, key names and the checks on keys read back."""

from __future__ import annotations

import ast

import pytest

from job import config
from job.errors import ConfigError, DataError
from job.runstore import layout, objects
from tests.support.jobs import ROOT

KEY_NAMES = (
    "_SUCCESS", "_FAILURE", "_CANCELLED", "status.json", "run.json", "metrics.json",
    "submission.json", "latest.json", "model.keras", "model/saved_model", "checkpoints/",
)  # fmt: skip
SCHEME_CALLS = {"startswith", "removeprefix", "partition", "split", "endswith", "replace"}


def code_strings(tree: ast.AST):
    """Every string constant that is code, not a docstring."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and id(node) not in docstrings:
            yield node


# Every module of the package, subpackages included (rglob), so none drops out when it moves.
MODULES = sorted(p for p in (ROOT / "job").rglob("*.py") if p.name != "layout.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT / "job").as_posix())
def test_no_key_literal_or_scheme_check_outside_the_layout_module(path):
    tree = ast.parse(path.read_text())
    if path.name != "settings.py":  # the table's documentation text names keys and schemes
        for node in code_strings(tree):
            found = [k for k in KEY_NAMES if k in node.value]
            assert not found, f"{path.name}:{node.lineno} spells {found}: use job.runstore.layout"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in SCHEME_CALLS:
            args = [a.value for a in node.args if isinstance(a, ast.Constant)]
            assert not any(isinstance(a, str) and "://" in a for a in args), (
                f"{path.name}:{node.lineno} checks a URI scheme: use job.runstore.layout.parse"
            )
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant):
            assert "://" not in str(node.left.value), (
                f"{path.name}:{node.lineno}: job.runstore.layout"
            )


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("./runs", layout.Location("./runs")),
        ("file:///data/runs", layout.Location("/data/runs")),
        ("s3://my-bucket", layout.Location("", "my-bucket")),
        ("s3://my-bucket/a/b/", layout.Location("a/b", "my-bucket")),
    ],
)
def test_parse(uri, expected):
    assert layout.parse("OUTPUT_URI", uri) == expected


def test_run_uri_is_built_in_one_place():
    assert layout.run_uri("s3://b-1/runs/", "r1") == "s3://b-1/runs/r1"
    assert layout.run_uri("s3://b-1", "r1") == "s3://b-1/r1"
    assert layout.run_uri("./out", "r1") == "./out/r1"


@pytest.mark.parametrize(
    "key",
    ["images/../../x.txt", "/etc/passwd", "images//a.png", "./a", "a/./b", "a\\b", "", "a/\x00",
     "..", "images/\n.png", 7, None],
)  # fmt: skip
def test_unsafe_keys_read_back_are_refused(key):
    with pytest.raises(DataError, match="run-x/_SUCCESS"):
        layout.safe_key(key, "run-x/_SUCCESS")


def test_safe_keys_pass():
    for key in ("metrics.json", "images/misclassified.png", "model/saved_model/variables/v.data"):
        assert layout.safe_key(key, "here") == key


def test_corrupt_json_names_the_object():
    with pytest.raises(DataError, match=r"s3://b/r/status\.json: not valid JSON"):
        objects.decode(b"{not json", objects.STATUS, "s3://b/r/status.json")
    with pytest.raises(DataError, match="not a JSON object"):
        objects.decode(b"[1, 2]", objects.STATUS, "x")


def test_a_bucket_needs_keys_a_folder_does_not():
    layout.check(config.from_env({"OUTPUT_URI": "/tmp/x"}))
    with pytest.raises(ConfigError) as err:
        layout.check(config.from_env({"DATA_URI": "s3://bucket-1/mnist"}))
    assert err.value.variable == "COS_ACCESS_KEY_ID"
