"""Everything that touches torch; imports nothing from FastAPI. See docs/ARCHITECTURE.md for the map."""
