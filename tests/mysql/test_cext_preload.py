"""mysql-connector-python's C extension still loads after regopy has thrown a C++ exception.

The cause and the fix (loading `_mysql_connector` in tests/conftest.py, before any test runs)
are explained there. Each case runs in a fresh interpreter, since the state at issue (where
libstdc++'s thread-locals live) can never be undone in a process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
if sys.argv[1] == "conftest":
    import tests.conftest  # noqa: F401
import regopy
try:
    regopy.Interpreter().add_module("p", "package p\\nd := [x * 2 | some x in [1]]\\n")
except regopy.RegoError:
    pass
else:
    raise SystemExit("regopy accepted the policy: no C++ exception was thrown")
import mysql.connector
print(mysql.connector.HAVE_CEXT)
"""


def _have_cext_after_rego_error(preload: str) -> bool:
    out = subprocess.run([sys.executable, "-c", SCRIPT, preload], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    return out[-1] == "True"


def test_c_extension_loads_after_a_rego_error_with_the_test_preload() -> None:
    assert _have_cext_after_rego_error("conftest")


def test_without_the_preload_a_rego_error_makes_the_c_extension_unloadable() -> None:
    """Pins the cause: when this starts passing without the preload (a regopy or
    mysql-connector-python upgrade), the preload in tests/conftest.py can go."""
    assert not _have_cext_after_rego_error("none")


def test_the_preload_leaves_python_on_the_system_openssl() -> None:
    """`_mysql_connector` needs libssl.so.3/libcrypto.so.3 and ships copies in mysql/vendor;
    one SONAME is loaded once per process, so had it loaded first, Python's `ssl` would run on
    the vendored libssl. tests/conftest.py imports `ssl` first."""
    script = ("import tests.conftest, _mysql_connector, ssl\n"
              "print([l.split()[-1] for l in open('/proc/self/maps') if 'libssl' in l])\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "libssl" in out
    assert "mysql/vendor" not in out
