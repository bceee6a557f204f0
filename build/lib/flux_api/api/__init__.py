"""HTTP only: the routes (one module per feature area), their dependencies, the OpenAPI body schema,
and the one error mapping. Knows nothing of torch; talks to the engine through EngineClient."""
