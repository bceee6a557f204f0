"""The OpenAPI document: the per-service GenerateRequest schema where a route takes it as its body, and
error responses always under application/json.

The /generate body model is built from each service's settings (its defaults and limits are the
configured ones), so the module-level routes take it through a dependency (deps.generate_body) and
mark themselves with `x-body-model`; this puts the model's own schema in their request body.
"""

from fastapi import FastAPI
from pydantic import BaseModel


def _errors_as_json(op: dict) -> None:
    """An error is always the JSON error body. FastAPI files a route's error responses under the route's
    own media type (text/event-stream for the SSE route); put them under application/json."""
    for code, response in op.get("responses", {}).items():
        content = response.get("content", {})
        if code[0] in "45" and content and "application/json" not in content:
            response["content"] = {"application/json": next(iter(content.values()))}


def install_body_schema(app: FastAPI, model: type[BaseModel]) -> None:
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
            for ops in schema["paths"].values():
                for op in ops.values():
                    _errors_as_json(op)
                    if op.pop("x-body-model", None) == model.__name__:
                        op["requestBody"] = {"required": True, "content": {
                            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
