"""Shared test set-up: fixture modules live in tests/fixtures_*.py, one per capability."""

pytest_plugins = [
    "fixtures_box",
    "fixtures_models",
    "fixtures_memory",
    "fixtures_engines",
    "fixtures_align",
]
