"""The bundles (src/m2msec/capif/bundled/) are what the bundler makes of the vendored files, and self-contained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from m2msec.capif.openapi import (
    APIS,
    BUNDLED_DIR,
    SPECS_DIR,
    BundleError,
    bundle,
    dumps,
    iter_refs,
    load_yaml,
    main,
    write_bundles,
)


def test_regenerating_the_bundles_gives_the_same_bytes(tmp_path: Path) -> None:
    written = write_bundles(SPECS_DIR, tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in BUNDLED_DIR.glob("*.json"))
    for path in written:
        assert path.read_bytes() == (BUNDLED_DIR / path.name).read_bytes(), path.name


@pytest.mark.parametrize("name", sorted(APIS))
def test_a_bundle_is_self_contained(name: str) -> None:
    doc = json.loads((BUNDLED_DIR / f"{name}.json").read_text(encoding="utf-8"))
    refs = set(iter_refs(doc))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/"), ref
        _, _, kind, component = ref.split("/")
        assert component in doc["components"][kind], ref
    # nothing kept that the operations do not reach
    reached = {ref.rsplit("/", 1)[1] for ref in refs}
    assert set(doc["components"]["schemas"]) <= reached
    assert doc["paths"]


def test_only_the_reachable_schemas_are_kept() -> None:
    # the issue measured ~122 schemas reachable from all CAPIF operations (vs 4,884 generated without bundling)
    names = set()
    for name in APIS:
        doc = json.loads((BUNDLED_DIR / f"{name}.json").read_text(encoding="utf-8"))
        names |= set(doc["components"]["schemas"])
    assert 100 < len(names) < 250


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML


def test_recursion_stays_a_reference_and_clashes_are_prefixed(tmp_path: Path) -> None:
    _write(
        tmp_path / "TS1_Api.yaml",
        {
            "openapi": "3.0.0",
            "paths": {"/x": {"get": {"responses": {"200": {"content": {"application/json": {"schema": {
                "$ref": "TS2_Common.yaml#/components/schemas/Tree"}}}}}}}},
            "components": {"schemas": {"Name": {"type": "string"}, "Unused": {"type": "integer"}}},
        },
    )
    _write(
        tmp_path / "TS2_Common.yaml",
        {
            "components": {"schemas": {
                "Tree": {"type": "object", "properties": {
                    "kids": {"type": "array", "items": {"$ref": "#/components/schemas/Tree"}},
                    "name": {"$ref": "#/components/schemas/Name"},
                    "own": {"$ref": "TS1_Api.yaml#/components/schemas/Name"}}},
                "Name": {"type": "integer"},
                "Unreached": {"type": "string"},
            }},
        },
    )
    doc = bundle(tmp_path, "TS1_Api.yaml")
    schemas = doc["components"]["schemas"]
    assert set(schemas) == {"Tree", "Name", "TS2_Name"}
    assert schemas["Tree"]["properties"]["kids"]["items"] == {"$ref": "#/components/schemas/Tree"}
    assert schemas["Tree"]["properties"]["name"] == {"$ref": "#/components/schemas/TS2_Name"}
    assert schemas["Tree"]["properties"]["own"] == {"$ref": "#/components/schemas/Name"}
    assert schemas["Name"] == {"type": "string"}
    assert dumps(doc) == dumps(bundle(tmp_path, "TS1_Api.yaml"))


def test_tabs_in_indentation_are_expanded(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("a:\n  b: 1\n\t# comment\n  c: 'x\ty'\n", encoding="utf-8")
    assert load_yaml(tmp_path / "t.yaml") == {"a": {"b": 1, "c": "x\ty"}}


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("Missing.yaml#/components/schemas/X", "Missing.yaml: referenced but not in"),
        ("#/components/schemas/Nope", "no components/schemas/Nope"),
        ("#/paths/x", "unsupported $ref"),
    ],
)
def test_a_dangling_ref_is_one_clear_error(tmp_path: Path, ref: str, message: str) -> None:
    _write(tmp_path / "A.yaml", {"paths": {"/x": {"$ref": ref}}})
    with pytest.raises(BundleError, match=message.replace("$", r"\$")):
        bundle(tmp_path, "A.yaml")


def test_the_command_reports_a_bad_folder_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "none"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TS29222_CAPIF_API_Invoker_Management_API.yaml" in err


def test_same_text_with_references_into_different_files_is_two_components(tmp_path: Path) -> None:
    # TS 29.122 and TS 29.571 both define a response "404" whose text is the same but whose ProblemDetails differ
    def common(kind: str) -> dict[str, Any]:
        return {"components": {
            "schemas": {"PD": {"type": kind}},
            "responses": {"404": {"content": {"a/b": {"schema": {"$ref": "#/components/schemas/PD"}}}}},
        }}

    _write(tmp_path / "TS2_A.yaml", common("string"))
    _write(tmp_path / "TS3_B.yaml", common("integer"))
    _write(tmp_path / "TS1_Api.yaml", {"paths": {"/x": {"get": {"responses": {
        "404": {"$ref": "TS2_A.yaml#/components/responses/404"},
        "405": {"$ref": "TS3_B.yaml#/components/responses/404"}}}}}})
    doc = bundle(tmp_path, "TS1_Api.yaml")
    assert set(doc["components"]["responses"]) == {"TS2_404", "TS3_404"}
    assert doc["components"]["schemas"] == {"TS2_PD": {"type": "string"}, "TS3_PD": {"type": "integer"}}
