"""Bundle the official TS 29.222 OpenAPI files into one self-contained document per CAPIF API.

The official files reference ~100 other 3GPP files; a generator or validator pointed at one of them sees every schema
of every referenced file. The bundler keeps only what the operations (``paths``, their callbacks) reach:

- each external ``$ref`` (``TS29571_CommonData.yaml#/components/schemas/Uri``) becomes an internal one
  (``#/components/schemas/Uri``) and its target is copied into the bundle's ``components``;
- internal ``$ref``s stay references, so recursive schemas stay finite (no inlining);
- a name claimed by two different files keeps its plain name for the API's own file and gets the file's spec prefix
  (``TS29571_ProblemDetails``) otherwise (:data:`NAME_CLASH_PREFIX`);
- tab-indented lines (``TS32291_Nchf_ConvergedCharging.yaml`` has one) are expanded on load (:func:`load_yaml`).

The bundles are JSON (the runtime reads them with :mod:`json`, no YAML parser) written by
``python -m m2msec.capif.openapi [SPECS_DIR [OUT_DIR]]``; ``tests/capif/test_bundle.py`` checks that regenerating gives
the same bytes. Needs PyYAML (a ``dev`` dependency), the runtime does not import this module.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

# The CAPIF APIs the CCF and the AEF serve: bundle name -> official file (specs/3gpp/SOURCE.md).
APIS: Final[dict[str, str]] = {
    "api-invoker-management": "TS29222_CAPIF_API_Invoker_Management_API.yaml",
    "api-provider-management": "TS29222_CAPIF_API_Provider_Management_API.yaml",
    "published-apis": "TS29222_CAPIF_Publish_Service_API.yaml",
    "service-apis": "TS29222_CAPIF_Discover_Service_API.yaml",
    "capif-security": "TS29222_CAPIF_Security_API.yaml",
    "capif-events": "TS29222_CAPIF_Events_API.yaml",
    "aef-security": "TS29222_AEF_Security_API.yaml",
}

# D112: a component name defined differently by two files: the one not in the API's own file is renamed
# "<spec prefix>_<name>", the prefix being the file name up to the first "_" (TS29571_ProblemDetails).
NAME_CLASH_PREFIX: Final = "{spec}_{name}"

REPO_ROOT: Final = Path(__file__).resolve().parents[3]
SPECS_DIR: Final = REPO_ROOT / "specs" / "3gpp"
BUNDLED_DIR: Final = Path(__file__).resolve().parent / "bundled"

_LEADING_TABS: Final = re.compile(r"^[ \t]*\t[ \t]*", re.MULTILINE)

Node = dict[str, Any]
# (file name, components kind, component name), e.g. ("TS29571_CommonData.yaml", "schemas", "Uri")
Target = tuple[str, str, str]


class BundleError(ValueError):
    """A ``$ref`` the bundler cannot follow (outside ``#/components/<kind>/<name>``, missing file or name)."""


def load_yaml(path: Path) -> Node:
    """Load one YAML file, expanding tabs in indentation (YAML forbids them; one official file has them)."""
    text = path.read_text(encoding="utf-8")
    text = _LEADING_TABS.sub(lambda m: m.group(0).expandtabs(2), text)
    loaded = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(loaded, dict):
        raise BundleError(f"{path.name}: not an OpenAPI document")
    return loaded


def iter_refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` value under ``node``, in document order."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from iter_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_refs(item)


@dataclass
class _Bundler:
    specs_dir: Path
    root_file: str

    def __post_init__(self) -> None:
        self._docs: dict[str, Node] = {}

    def doc(self, file: str) -> Node:
        if file not in self._docs:
            path = self.specs_dir / file
            if not path.is_file():
                raise BundleError(f"{file}: referenced but not in {self.specs_dir.name}/")
            self._docs[file] = load_yaml(path)
        return self._docs[file]

    def target(self, ref: str, base: str) -> Target:
        file, _, pointer = ref.partition("#")
        parts = pointer.split("/")
        if len(parts) != 4 or parts[:2] != ["", "components"]:
            raise BundleError(f"{base}: unsupported $ref {ref!r}")
        return (file or base, parts[2], parts[3])

    def component(self, t: Target) -> Any:
        try:
            return self.doc(t[0])["components"][t[1]][t[2]]
        except KeyError:
            raise BundleError(f"{t[0]}: no components/{t[1]}/{t[2]}") from None

    def reachable(self, start: Any) -> list[Target]:
        """The components reached from ``start`` (a node of the root file), depth-first, in document order."""
        seen: dict[Target, None] = {}
        stack: list[tuple[Any, str]] = [(start, self.root_file)]
        while stack:
            node, base = stack.pop()
            found = [self.target(ref, base) for ref in iter_refs(node)]
            for t in reversed(found):
                if t not in seen:
                    seen[t] = None
                    stack.append((self.component(t), t[0]))
        return list(seen)

    def names(self, targets: list[Target]) -> dict[Target, str]:
        by_name: dict[tuple[str, str], list[Target]] = {}
        for t in targets:
            by_name.setdefault((t[1], t[2]), []).append(t)
        names: dict[Target, str] = {}
        for (_, name), owners in by_name.items():
            # same name, same content and same (absolute) references: one component
            contents = {json.dumps(self.absolute(self.component(t), t[0]), sort_keys=True) for t in owners}
            for t in owners:
                clash = len(contents) > 1 and t[0] != self.root_file
                spec = t[0].split("_", 1)[0]
                names[t] = NAME_CLASH_PREFIX.format(spec=spec, name=name) if clash else name
        return names

    def absolute(self, node: Any, base: str) -> Any:
        """``node`` with every ``$ref`` qualified by its file, to compare components of different files."""
        if isinstance(node, dict):
            return {
                key: "{}#/components/{}/{}".format(*self.target(value, base))
                if key == "$ref" and isinstance(value, str)
                else self.absolute(value, base)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [self.absolute(item, base) for item in node]
        return node

    def rewrite(self, node: Any, base: str, names: dict[Target, str]) -> Any:
        if isinstance(node, dict):
            out: Node = {}
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str):
                    t = self.target(value, base)
                    out[key] = f"#/components/{t[1]}/{names[t]}"
                else:
                    out[key] = self.rewrite(value, base, names)
            return out
        if isinstance(node, list):
            return [self.rewrite(item, base, names) for item in node]
        return copy.deepcopy(node)


def bundle(specs_dir: Path, root_file: str) -> Node:
    """One self-contained OpenAPI document for ``root_file``: its paths and the components they reach."""
    b = _Bundler(specs_dir, root_file)
    root = b.doc(root_file)
    targets = b.reachable(root.get("paths", {}))
    names = b.names(targets)
    out: Node = {key: b.rewrite(value, root_file, names) for key, value in root.items() if key != "components"}
    components: dict[str, Node] = {}
    security_schemes = root.get("components", {}).get("securitySchemes")
    if security_schemes is not None:
        components["securitySchemes"] = copy.deepcopy(security_schemes)
    # stable order: kind, then name, whatever the traversal order
    for t in sorted(targets, key=lambda t: (t[1], names[t])):
        components.setdefault(t[1], {})[names[t]] = b.rewrite(b.component(t), t[0], names)
    out["components"] = components
    return out


def dumps(document: Node) -> str:
    """The bytes written for one bundle (stable: the regeneration test compares them)."""
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def write_bundles(specs_dir: Path = SPECS_DIR, out_dir: Path = BUNDLED_DIR) -> list[Path]:
    """Bundle every API of :data:`APIS` into ``out_dir/<name>.json``; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, file in APIS.items():
        path = out_dir / f"{name}.json"
        path.write_text(dumps(bundle(specs_dir, file)), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    specs_dir = Path(args[0]) if args else SPECS_DIR
    out_dir = Path(args[1]) if len(args) > 1 else BUNDLED_DIR
    try:
        for path in write_bundles(specs_dir, out_dir):
            print(path)
    except (BundleError, OSError, yaml.YAMLError) as exc:
        print(f"m2msec.capif.openapi: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
