"""Key-store contract tests (SQLite and a real PostgreSQL).

A package on purpose, like tests/interop: its conftest.py is then imported as ``store.conftest`` and does not
replace the top-level ``conftest`` module other test folders import from.
"""
