"""Builds the optional C accelerator of the PostgreSQL proxy (adapters/postgres/_rowscan.c).

Everything else is declared in pyproject.toml. Without a C compiler the build of the
extension fails softly (`optional=True`) and the proxy runs its pure-Python paths.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("adapters.postgres._rowscan", ["adapters/postgres/_rowscan.c"],
                             optional=True)])
