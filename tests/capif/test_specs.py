"""The vendored official files (specs/3gpp/) are self-contained: every external ``$ref`` resolves inside the folder."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from m2msec.capif.openapi import APIS, SPECS_DIR, iter_refs, load_yaml

# Internal references broken upstream, in files only reached through unrelated schemas (not CAPIF's): kept as is.
_KNOWN_UPSTREAM_BROKEN = {
    ("TS28541_5GcNrm.yaml", "#/components/schemas/ManagedElement-Multiple"),
    ("TS28541_SliceNrm.yaml", "#/components/schemas/ManagedElement-Multiple"),
    ("TS29520_Nnwdaf_DataManagement.yaml", "#/components/schemas/NwdafDataManagementNotif"),
}


@cache
def _doc(name: str) -> dict[str, Any]:
    return load_yaml(SPECS_DIR / name)


def _files() -> list[str]:
    return sorted(p.name for p in SPECS_DIR.glob("*.yaml"))


def test_every_capif_api_is_vendored() -> None:
    for file in APIS.values():
        assert (SPECS_DIR / file).is_file(), file
    assert (SPECS_DIR / "SOURCE.md").is_file()


@pytest.mark.parametrize("name", _files())
def test_every_external_ref_resolves_inside_specs(name: str) -> None:
    missing = []
    for ref in sorted(set(iter_refs(_doc(name)))):
        file, _, pointer = ref.partition("#")
        if (name, ref) in _KNOWN_UPSTREAM_BROKEN:
            continue
        target = file or name
        if not (SPECS_DIR / target).is_file():
            missing.append(f"{file}#{pointer}: no such file")
            continue
        node: Any = _doc(target)
        for part in pointer.strip("/").split("/"):
            if not isinstance(node, dict) or part not in node:
                missing.append(f"{file}#{pointer}: no such node in {target}")
                break
            node = node[part]
    assert not missing, missing


def test_the_tabbed_file_loads() -> None:
    # TS32291 has a tab-indented comment line (an upstream defect kept as is): plain YAML rejects it
    import yaml

    text = (SPECS_DIR / "TS32291_Nchf_ConvergedCharging.yaml").read_text(encoding="utf-8")
    assert "\t" in text
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)
    assert "paths" in _doc("TS32291_Nchf_ConvergedCharging.yaml")

