"""The OpenRPC document that `rpc.discover` answers, built from signatures, hints and docs."""

from __future__ import annotations

import inspect

from ._protocol import dumps
from ._service import Method, Service
from ._types import JSON

OPENRPC_VERSION = "1.3.2"


def openrpc_document(service: Service) -> dict[str, JSON]:
    """Describe every method of `service` as an OpenRPC document."""
    return {
        "openrpc": OPENRPC_VERSION,
        "info": {"title": service.name, "version": service.version},
        "methods": [_describe(method) for method in service],
    }


def _describe(method: Method) -> dict[str, JSON]:
    described: dict[str, JSON] = {"name": method.name}
    if method.doc:
        described["summary"] = method.doc.splitlines()[0]
        described["description"] = method.doc
    params = []
    kinds = set()
    for parameter in method.parameters:
        kinds.add(parameter.kind)
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        entry: dict[str, JSON] = {
            "name": parameter.name,
            "required": parameter.default is parameter.empty,
            "schema": method.schemas.get(parameter.name, {}),
        }
        if parameter.default is not parameter.empty:
            try:
                dumps(parameter.default)
                entry["schema"] = {**entry["schema"], "default": parameter.default}
            except TypeError:
                pass
        params.append(entry)
    described["params"] = params
    described["result"] = {"name": "result", "schema": method.result_schema}
    if inspect.Parameter.POSITIONAL_ONLY in kinds:
        described["paramStructure"] = "by-position"
    elif inspect.Parameter.KEYWORD_ONLY in kinds:
        described["paramStructure"] = "by-name"
    else:
        described["paramStructure"] = "either"
    return described


def signature_line(method: JSON) -> str:
    """One line like ``add(a: number, b: number) -> number`` from a described method."""
    params = []
    for param in method.get("params", []):
        text = param["name"]
        kind = _schema_text(param.get("schema", {}))
        if kind:
            text += f": {kind}"
        if not param.get("required", True):
            text += " = " + repr(param.get("schema", {}).get("default", "..."))
        params.append(text)
    line = f"{method['name']}({', '.join(params)})"
    result = _schema_text(method.get("result", {}).get("schema", {}))
    return f"{line} -> {result}" if result else line


def _schema_text(schema: JSON) -> str:
    if not isinstance(schema, dict):
        return ""
    if "type" in schema:
        kind = str(schema["type"])
        if kind == "array" and isinstance(schema.get("items"), dict) and schema["items"]:
            return f"array[{_schema_text(schema['items'])}]"
        return kind
    if "anyOf" in schema:
        return " | ".join(_schema_text(option) or "any" for option in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(repr(value) for value in schema["enum"])
    return ""
