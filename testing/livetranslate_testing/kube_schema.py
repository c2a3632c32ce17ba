"""Admission of custom resources the way kube-apiserver does it, without an API server.

Used by the CRD tests and by the Kubernetes emulator (which answers 422 like a real server):

1. ``check_structural``: the schema is one the API server accepts (types everywhere, no refs,
   no anyOf-with-types, no additionalProperties next to properties, list-type set on scalars).
2. ``apply_defaults``: drop nulls the schema does not allow (nullable false), then fill
   ``default`` values top-down, only inside objects that exist.
3. ``prune``: drop fields the schema does not know (unless preserve-unknown-fields).
4. ``validate``: the OpenAPI v3 rules with a JSON Schema validator (nullable and
   int-or-string translated), then every ``x-kubernetes-validations`` CEL rule with cel-python,
   ``self`` bound to the node the rule sits on -- the order the API server uses.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema

_STRUCTURAL_FORBIDDEN = {"$ref", "$defs", "definitions", "allOf", "oneOf", "const", "title"}


def check_structural(schema: dict[str, Any], path: str = "") -> list[str]:
    """Problems that would make kube-apiserver reject the CRD as non-structural (empty = fine)."""
    problems: list[str] = []
    int_or_string = schema.get("x-kubernetes-int-or-string") is True
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "type" not in schema and not int_or_string and not (preserve and "properties" not in schema):
        problems.append(f"{path or '<root>'}: no type")
    for key in _STRUCTURAL_FORBIDDEN & schema.keys():
        problems.append(f"{path or '<root>'}: forbidden key {key}")
    if "anyOf" in schema and any("type" in b for b in schema["anyOf"]):
        problems.append(f"{path}: anyOf branches must not carry types")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{path}: additionalProperties next to properties")
    if schema.get("x-kubernetes-list-type") == "set":
        item_type = (schema.get("items") or {}).get("type")
        if item_type not in ("string", "integer", "number", "boolean"):
            problems.append(f"{path}: list-type set needs scalar items")
    if schema.get("x-kubernetes-list-type") == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        required = set((schema.get("items") or {}).get("required") or [])
        if not keys or not set(keys) <= required:
            problems.append(f"{path}: list-type map keys must be required item fields")
    for name, sub in (schema.get("properties") or {}).items():
        problems += check_structural(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        problems += check_structural(schema["items"], f"{path}[]")
    return problems


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """A copy of ``value`` with defaults filled where the API server would fill them."""
    value = copy.deepcopy(value)
    _default_into(value, schema)
    return value


def _default_into(value: Any, schema: dict[str, Any]) -> None:
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name in value and value[name] is None and not sub.get("nullable"):
                # A null where the schema does not allow one is pruned before defaulting
                # (the API server's "Defaulting and Nullable" rule): the field is then unset.
                del value[name]
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default_into(value[name], sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default_into(item, schema["items"])


def prune(value: Any, schema: dict[str, Any]) -> Any:
    """Drop unknown fields, as the API server does for structural schemas."""
    if isinstance(value, dict) and schema.get("type") == "object" and "properties" in schema:
        props = schema["properties"]
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") is True
        return {
            k: prune(v, props[k]) if k in props else v for k, v in value.items() if k in props or keep_unknown
        }
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(v, schema["items"]) for v in value]
    return value


def to_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3 (Kubernetes dialect) -> JSON Schema draft 4 (which has boolean exclusive bounds)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "description"):
            continue
        if key == "properties":
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if schema.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if schema.get("nullable") and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False  # pruning happened before; anything left is unknown
    return out


def _rule_sites(value: Any, schema: dict[str, Any], path: str) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    if value is None:
        return
    if schema.get("x-kubernetes-validations"):
        yield path, value, schema
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                yield from _rule_sites(value[name], sub, f"{path}.{name}" if path else name)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _rule_sites(item, schema["items"], f"{path}[{i}]")


_CEL = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def cel_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """Messages of every failing ``x-kubernetes-validations`` rule (path: message)."""
    errors = []
    for path, node, site in _rule_sites(value, schema, ""):
        for rule in site["x-kubernetes-validations"]:
            program = _PROGRAMS.get(rule["rule"])
            if program is None:
                program = _PROGRAMS[rule["rule"]] = _CEL.program(_CEL.compile(rule["rule"]))
            try:
                result = program.evaluate({"self": celpy.json_to_cel(node)})
            except (celpy.CELEvalError, TypeError) as exc:
                result = exc
            if isinstance(result, (celpy.CELEvalError, TypeError)):
                # A rule that cannot be evaluated on the object rejects it, naming the path, as the
                # API server does ("...: rule evaluation error"): it does not pass it.
                errors.append(
                    f"{path or '<root>'}: {rule['rule']}: rule evaluation error: {str(result)[:200]}"
                )
            elif result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
                errors.append(f"{path or '<root>'}: {rule.get('message') or rule['rule']}")
    return errors


def admit(obj: dict[str, Any], schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Default, prune and validate ``obj`` against a CRD version's openAPIV3Schema.

    Returns the object as it would be stored and the list of errors (non-empty = HTTP 422).
    """
    stored = prune(apply_defaults(obj, schema), schema)
    validator = jsonschema.Draft4Validator(to_json_schema(schema))
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(stored), key=lambda e: list(e.absolute_path))
    ]
    if not errors:
        errors = cel_errors(stored, schema)
    return stored, errors
