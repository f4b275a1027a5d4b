"""Benchmarks and load drivers (see README "Performance").

`engine` is imported first because some benchmarks call regopy directly: the engine must load
the C++ runtime before regopy does (engine/native.py)."""

import engine  # noqa: F401
