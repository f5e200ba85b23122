"""nightshift's test suite, one package: helpers are imported by module path (``from tests.batchfiles import ...``).

The layers and where each lives: tests/README.md.
"""
