"""The OpenAPI document: the per-service GenerateRequest schema where a route takes it as its body, and
error responses always under application/json.

The /generate body model is built from each service's settings (its defaults and limits are the
configured ones), so the module-level routes take it through a dependency (deps.generate_body) and
mark themselves with `x-body-model`; this puts the model's own schema in their request body.
"""

import copy

from fastapi import FastAPI
from pydantic import BaseModel

from .errors import OPENAI_PREFIX


def _errors_as_json(op: dict) -> None:
    """An error is always the JSON error body. FastAPI files a route's error responses under the route's
    own media type (text/event-stream for the SSE route); put them under application/json."""
    for code, response in op.get("responses", {}).items():
        content = response.get("content", {})
        if code[0] in "45" and content and "application/json" not in content:
            response["content"] = {"application/json": next(iter(content.values()))}


def install_body_schema(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Put each of `models`' schema on the routes marked `x-body-model: <its name>` (multipart where the
    route also says `x-body-multipart: [file fields]`)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            for path, ops in schema["paths"].items():
                for op in ops.values():
                    _errors_as_json(op)
                    if path.startswith(OPENAI_PREFIX):  # FastAPI's own 422 is a 400 there (api/errors.py)
                        op.get("responses", {}).pop("422", None)
                    name = op.pop("x-body-model", None)
                    files = op.pop("x-body-multipart", None)
                    if name is None:
                        continue
                    if files:  # the same fields as a form, plus the file fields (the first one required)
                        form = copy.deepcopy(components[name])
                        for prop in form["properties"].values():  # a form has no null: leaving a field out is none
                            branches = [b for b in prop.get("anyOf", []) if b != {"type": "null"}]
                            if len(branches) == 1 and len(prop["anyOf"]) == 2:
                                prop.pop("anyOf")
                                prop.update(branches[0])
                            if prop.get("default", 0) is None:
                                prop.pop("default")
                        form["properties"].update(
                            {f: {"type": "string", "contentMediaType": "application/octet-stream", "minLength": 1}
                             for f in files})
                        form["required"] = sorted({*form.get("required", []), files[0]})
                        components[f"{name}Form"] = form
                        content = {"multipart/form-data": {"schema": {"$ref": f"#/components/schemas/{name}Form"}}}
                    else:
                        content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}
                    op["requestBody"] = {"required": True, "content": content}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
