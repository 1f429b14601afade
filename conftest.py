"""Markers for the one test command: every notebook cell run by nbval carries ``notebook``.

``python -m pytest`` runs everything (unit tests, then the notebooks under the smoke profile);
``python -m pytest -m "not notebook"`` runs the unit tests alone.
"""


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if str(getattr(item, "path", "")).endswith(".ipynb"):
            item.add_marker(pytest.mark.notebook)
