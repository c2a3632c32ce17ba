"""The TranslationPipeline CustomResourceDefinition, generated from the pydantic models.

``livetranslate crd`` prints it; ``crds/`` and the chart's ``crds/`` hold the committed output and
CI fails when they drift (scripts/check_generated.py). Generating instead of hand-writing keeps the
API server's validation and the operator's parsing from ever disagreeing on a field.

Kubernetes only accepts *structural* OpenAPI v3 schemas, which pydantic's JSON Schema is not, so
the conversion here: inlines ``$ref``s, drops titles and ``$defs``, turns ``Optional`` (anyOf with
null) into ``nullable``, ``int | str`` into ``x-kubernetes-int-or-string``, JSON Schema 2020
``exclusiveMinimum: 0`` into OpenAPI 3.0's ``minimum: 0, exclusiveMinimum: true``, and gives
object fields whose models have defaults ``default: {}`` so the API server fills nested defaults
(it only defaults inside objects that exist).
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import yaml

from livetranslate.api import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    TranslationPipelineSpec,
)
from livetranslate.api_status import TranslationPipelineStatus

CRD_NAME = f"{PLURAL}.{GROUP}"
# Children are named <name>-translation (the longest suffix) and Service names are DNS-1035
# labels of at most 63 characters, so a pipeline name has at most 63 - len("-translation").
MAX_NAME_LENGTH = 63 - len("-translation")
NAME_RULES = [
    {
        "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
        "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters: "
        "children are named <name>-translation and Service names have at most 63",
    },
    {
        "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "message": "metadata.name must be a DNS-1035 label (start with a letter): "
        "it names the pipeline's Services",
    },
]

_DROP_KEYS = {"title", "$defs", "additionalProperties", "const", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every ``$ref`` (structural schemas allow no references)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any], default: Any = None, *, has_default: bool = False) -> dict[str, Any]:
    """One schema node, made structural. ``default`` is the model's default value for the node."""
    node = dict(node)
    any_of = node.pop("anyOf", None)
    nullable = False
    if any_of is not None:
        branches = [b for b in any_of if b.get("type") != "null"]
        nullable = len(branches) < len(any_of)
        types = {b.get("type") for b in branches}
        if len(branches) == 1:
            node = {**branches[0], **node}
        elif types == {"integer", "string"}:
            node = {**node, "x-kubernetes-int-or-string": True}
        else:
            raise ValueError(f"cannot express anyOf {any_of!r} in a structural schema")
    preserve = node.get("additionalProperties") is True
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "default" and value is None:
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        out[key] = value
    if nullable and not (has_default and default is None):
        # A null where the model's default is None means "unset": left non-nullable, the API server
        # prunes it before defaulting, so rules see the field absent (has() false), never null.
        out["nullable"] = True
    if out.get("type") == "object" and "properties" in node:
        defaults = default if isinstance(default, dict) else {}
        props = {}
        for name, sub in node["properties"].items():
            props[name] = _structural(sub, defaults.get(name), has_default=name in defaults)
        out["properties"] = props
        if preserve:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif out.get("type") == "array" and isinstance(out.get("items"), dict):
        out["items"] = _structural(out["items"])
    if has_default and default is not None:
        # The instance's default wins over the class's (translation.replicas.max is 8, not 4).
        # Objects get {} (the API server then fills their own defaults); others get the value.
        out["default"] = {} if isinstance(default, dict) else default
    return out


def _schema_of(
    model: type[TranslationPipelineSpec | TranslationPipelineStatus], mode: str, default: Any
) -> dict[str, Any]:
    raw = model.model_json_schema(mode=mode, by_alias=True)  # type: ignore[arg-type]
    resolved = _resolve({k: v for k, v in raw.items() if k != "$defs"}, raw.get("$defs", {}))
    return _structural(resolved, default, has_default=False)


def spec_schema() -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``spec`` (with defaults and CEL rules)."""
    defaults = TranslationPipelineSpec().model_dump(mode="json", by_alias=True)
    schema = _schema_of(TranslationPipelineSpec, "validation", defaults)
    schema.pop("description", None)
    schema["description"] = "What to run: languages, models, devices and scaling bounds (API.md section 1)."
    return schema


def status_schema() -> dict[str, Any]:
    """The structural schema of ``status``; conditions are a map keyed by type."""
    schema = _schema_of(TranslationPipelineStatus, "serialization", None)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["items"].pop("x-kubernetes-preserve-unknown-fields", None)
    schema.pop("description", None)
    schema["description"] = "Observed state, written by the operator (and the autoscaler)."
    return schema


def openapi_schema() -> dict[str, Any]:
    """The whole object's schema, as it sits under ``versions[0].schema.openAPIV3Schema``."""
    return {
        "type": "object",
        "description": "One live-translation service: its audio, translation and gateway stages.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {**spec_schema(), "default": {}},
            "status": status_schema(),
        },
        "x-kubernetes-validations": NAME_RULES,
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Device",
        "type": "string",
        "jsonPath": ".status.audio.device",
        "description": "Device the audio stage runs on",
    },
    {
        "name": "Model",
        "type": "string",
        "jsonPath": ".status.translation.model",
        "description": "Model the translation stage serves",
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": ".status.readyStages",
        "description": "Stages with all replicas ready",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    """The CRD manifest as a dict (what ``kubectl apply`` receives)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "livetranslate",
                "app.kubernetes.io/part-of": "livetranslate",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["livetranslate"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


HEADER = (
    "# Generated by `livetranslate crd` from livetranslate/api.py. Do not edit by hand:\n"
    "# change the models, regenerate, and commit both copies (crds/ and the chart's crds/).\n"
)


def render() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="livetranslate crd", description="Print the CRD YAML.")
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    text = render()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
