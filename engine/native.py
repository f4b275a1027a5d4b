"""One C++ allocator for the whole process, whatever imports regopy.

regopy's `librego_shared.so` links snmalloc and exports its `operator new` / `operator delete`.
When that library is the first to bring libstdc++ into a process, the dynamic linker resolves
libstdc++'s own calls to `operator new` (made inside `std::string`, `std::locale`, `std::regex`,
...) to snmalloc's, while every C++ extension loaded later (cel-expr-python, grpc, protobuf's
upb) resolves its calls to libstdc++'s, which use glibc's malloc. Memory then crosses from one
allocator to the other: glibc aborts the process (`free(): invalid pointer`, exit 134) on a
block snmalloc made, and snmalloc drops the blocks glibc made (the 22-28 KB leaked per CEL
evaluation). Ordinary CEL expressions (a missing map key, non-ASCII text, timestamps) hit it.

`load_cxx_runtime()` loads libstdc++ with RTLD_GLOBAL before regopy: libstdc++ then binds to its
own operator new/delete, and those sit in the global scope, where every library loaded after
(librego_shared.so included) finds them first. snmalloc's exports are never used; the process
has one allocator. `engine/__init__.py` calls it, so every entry point (CLI, `serve` and its
worker processes, `envoy`, the proxies, tests) that imports any part of `engine` is covered.

`allocator_problem()` tells whether this process is nevertheless split (regopy was imported
before `engine`, e.g. by a plugin or script): it reads libstdc++'s GOT slot for `operator new`
and asks the dynamic linker which object the slot points into. CEL refuses to load in such a
process (a policy error, so the set fails closed) rather than abort later.

Must not: import regopy or cel-expr-python itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys
from functools import cache
from pathlib import Path

CXX_RUNTIME = "libstdc++.so.6"
_ALLOCATOR_SYMBOLS = (b"_Znwm", b"_ZdlPv")  # operator new(size_t), operator delete(void*)
_R_X86_64_GLOB_DAT, _R_X86_64_JUMP_SLOT = 6, 7
_R_AARCH64_GLOB_DAT, _R_AARCH64_JUMP_SLOT = 1025, 1026
_SLOT_RELOCATIONS = {_R_X86_64_GLOB_DAT, _R_X86_64_JUMP_SLOT,
                     _R_AARCH64_GLOB_DAT, _R_AARCH64_JUMP_SLOT}

_handle: ctypes.CDLL | None = None


def load_cxx_runtime() -> None:
    """Load libstdc++ into the global symbol scope (idempotent; a no-op off Linux)."""
    global _handle
    if _handle is not None or not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("stdc++") or CXX_RUNTIME
    try:
        _handle = ctypes.CDLL(name, mode=os.RTLD_GLOBAL)
    except OSError:
        # No shared libstdc++ (a static build): nothing can bind to snmalloc through it.
        _handle = None


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _object_of(address: int) -> str | None:
    """The path of the loaded object containing `address` (dladdr), or None."""
    libc = ctypes.CDLL(None)
    libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    info = _DlInfo()
    if not libc.dladdr(ctypes.c_void_p(address), ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(info.dli_fname.decode(errors="replace"))


def _mapped_object(fragment: str) -> tuple[str, int] | None:
    """(real path, load base) of the mapped object whose file name contains `fragment`."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and fragment in os.path.basename(parts[5]) and int(parts[2], 16) == 0:
            return os.path.realpath(parts[5]), int(parts[0].split("-")[0], 16)
    return None


@cache
def _allocator_slots(path: str) -> tuple[int, ...]:
    """Offsets (from the load base) of the GOT slots through which `path` calls operator
    new/delete: the GLOB_DAT / JUMP_SLOT relocations of those symbols in its ELF file."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # 64-bit little-endian only
        return ()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    slots: list[int] = []
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != 4 or not entsize:  # SHT_RELA
            continue
        _n, _k, _f, _a, sym_off, _s, str_index, _i, _al, sym_size = sections[link]
        str_off = sections[str_index][4]
        for entry in range(offset, offset + size, entsize):
            r_offset, r_info, _addend = struct.unpack_from("<QQq", data, entry)
            if r_info & 0xFFFFFFFF not in _SLOT_RELOCATIONS:
                continue
            name_off, = struct.unpack_from("<I", data, sym_off + (r_info >> 32) * sym_size)
            end = data.index(b"\0", str_off + name_off)
            if data[str_off + name_off:end] in _ALLOCATOR_SYMBOLS:
                slots.append(r_offset)
    return tuple(slots)


def allocator_problem() -> str | None:
    """Why C++ code in this process would mix two allocators, or None when it cannot.

    None also when the check does not apply (not Linux, regopy not loaded, no shared
    libstdc++)."""
    if not sys.platform.startswith("linux"):
        return None
    cxx = _mapped_object("libstdc++.so")
    if cxx is None:
        return None
    path, base = cxx
    for slot in _allocator_slots(path):
        target = ctypes.c_uint64.from_address(base + slot).value
        owner = _object_of(target)
        if owner is not None and owner != path and "librego" in os.path.basename(owner):
            return (f"libstdc++ calls operator new/delete in {os.path.basename(owner)} "
                    "(regopy was loaded before the engine could load the C++ runtime: import "
                    "`engine` before `regopy`); C++ extensions would mix two allocators")
    return None
