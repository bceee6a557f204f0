"""The engine: everything that touches torch and diffusers. It imports nothing from FastAPI."""
