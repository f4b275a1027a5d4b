"""A policy directory (or an OPA bundle archive) becomes a compiled `PolicySet`.

Loaded recursively: `*.rego` (Rego v1), CEL rule files (`*.yaml`/`*.yml` with `rules:`), data
documents (`data.json`/`data.yaml`, mounted under their directory path as OPA does), decision
tests (`*_test.yaml`/`*_test.yml`, kept for `ordinance test`), and OPA bundles (`*.tar.gz` with a
`.manifest`). Any problem anywhere rejects the whole set with `file:line: message` errors: a
broken policy never replaces a working one. Hidden files and directories are skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any

import yaml

from engine.policy.rego_source import RegoModule, read_module

MAX_POLICY_FILE_BYTES = 8 << 20
DATA_FILES = ("data.json", "data.yaml", "data.yml")


@dataclass
class TestFile:
    path: str
    document: Any
    lines: dict[int, int] = field(default_factory=dict)


@dataclass
class PolicySource:
    """Everything read from disk, before compilation."""

    rego: list[RegoModule] = field(default_factory=list)
    cel_files: list[tuple[str, Any, dict[int, int]]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    tests: list[TestFile] = field(default_factory=list)
    digest: Any = field(default_factory=hashlib.sha256)
    errors: list[str] = field(default_factory=list)


def mask_method_names() -> set[str]:
    from engine.masking import MASK_METHODS

    return set(MASK_METHODS)


POLICY_SUFFIXES = (".rego", ".yaml", ".yml", ".json")
BUNDLE_SUFFIXES = (".tar.gz", ".tgz")


def is_bundle(path: str) -> bool:
    return path.endswith(BUNDLE_SUFFIXES)


def policy_file_names(root: str) -> list[str]:
    """The files of a policy directory the loader reads, relative to `root`, in load order
    (which the revision depends on): hidden names and other suffixes are skipped."""
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.endswith(POLICY_SUFFIXES + BUNDLE_SUFFIXES):
                continue
            names.append(os.path.relpath(os.path.join(dirpath, name), root))
    return names


def read_policy_dir(root: str) -> PolicySource:
    """Read a policy directory or bundle from disk as it is now (see `engine.policy.snapshot`
    for reading one that may be changing)."""
    if os.path.isfile(root) and is_bundle(root):
        try:
            with open(root, "rb") as f:
                content = f.read()
        except OSError as err:
            return PolicySource(errors=[f"{root}: {err.strerror}"])
        return read_policy_files(root, [("", content)])
    if not os.path.isdir(root):
        return PolicySource(errors=[f"{root}: no such policy directory"])
    files: list[tuple[str, bytes | OSError]] = []
    for rel in policy_file_names(root):
        path = os.path.join(root, rel)
        try:
            if os.path.getsize(path) > MAX_POLICY_FILE_BYTES:
                files.append((rel, OSError(0, f"larger than {MAX_POLICY_FILE_BYTES} bytes")))
                continue
            with open(path, "rb") as f:
                files.append((rel, f.read()))
        except OSError as err:
            files.append((rel, err))
    return read_policy_files(root, files)


def read_policy_files(root: str, files: list[tuple[str, bytes | OSError]]) -> PolicySource:
    """Parse files already read: (path relative to `root`, content or the error reading it).

    A single entry with the relative path "" is `root` itself, a bundle archive."""
    source = PolicySource()
    for rel, content in files:
        path = os.path.join(root, rel) if rel else root
        if isinstance(content, OSError):
            source.errors.append(f"{path}: {content.strerror}")
            continue
        name = os.path.basename(rel or root)
        if is_bundle(name):
            _read_bundle(path, content, source)
            continue
        if len(content) > MAX_POLICY_FILE_BYTES:
            source.errors.append(f"{path}: larger than {MAX_POLICY_FILE_BYTES} bytes")
            continue
        _add_file(source, path, os.path.dirname(rel), name, content)
    return source


def _add_file(source: PolicySource, path: str, rel_dir: str, name: str, content: bytes) -> None:
    source.digest.update(f"{os.path.join(rel_dir, name)}\0{len(content)}\0".encode())
    source.digest.update(content)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as err:
        source.errors.append(f"{path}: not UTF-8 ({err.reason} at byte {err.start})")
        return
    if name.endswith(".rego"):
        source.rego.append(read_module(path, text))
        return
    if name.endswith(".json") and name != "data.json":
        return  # other JSON (package.json, fixtures) is not part of a policy set
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader) if not name.endswith(".json") else None
        document = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f"{path}:{line + 1}" if line is not None else path
        source.errors.append(f"{where}: {_first_line(str(err))}")
        return
    if name in DATA_FILES:
        if not isinstance(document, dict):
            source.errors.append(f"{path}:1: a data document must be an object")
            return
        _mount(source.data, rel_dir, document, path, source.errors)
        return
    lines = _item_lines(node)
    if name.endswith(("_test.yaml", "_test.yml")):
        source.tests.append(TestFile(path=path, document=document, lines=lines.get("cases", {})))
        return
    if isinstance(document, dict) and "rules" in document:
        source.cel_files.append((path, document, lines.get("rules", {})))
        return
    keys = ", ".join(sorted(document)) if isinstance(document, dict) else type(document).__name__
    source.errors.append(f"{path}:1: not a CEL rule file (no top-level `rules:`; found {keys})")


def _mount(data: dict[str, Any], rel_dir: str, document: dict[str, Any], path: str,
           errors: list[str]) -> None:
    target = data
    parts = [p for p in rel_dir.replace(os.sep, "/").split("/") if p and p != "."]
    for part in parts:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            errors.append(f"{path}: data path {'/'.join(parts)} conflicts with another document")
            return
        target = child
    for key, value in document.items():
        if key in target and target[key] != value:
            errors.append(f"{path}: data key {key!r} is also defined by another document")
            continue
        target[key] = value


def _item_lines(node: Any) -> dict[str, dict[int, int]]:
    """For each top-level list (`rules`, `cases`), the 1-based line of each item."""
    out: dict[str, dict[int, int]] = {}
    if not isinstance(node, yaml.MappingNode):
        return out
    for key, value in node.value:
        if isinstance(value, yaml.SequenceNode):
            out[str(key.value)] = {i: item.start_mark.line + 1
                                   for i, item in enumerate(value.value)}
    return out


def _read_bundle(path: str, content: bytes, source: PolicySource) -> None:
    """An OPA bundle: `.rego` files, `data.json`/`data.yaml` documents, a `.manifest`."""
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            names = {m.name.lstrip("./").lstrip("/") for m in members}
            if ".manifest" not in names and not any(n.endswith(".rego") for n in names):
                source.errors.append(f"{path}: not an OPA bundle (no .manifest, no .rego)")
                return
            for member in sorted(members, key=lambda m: m.name):
                name = member.name.lstrip("./").lstrip("/")
                base = os.path.basename(name)
                if name == ".manifest":
                    manifest = tar.extractfile(member)
                    if manifest is not None:
                        source.digest.update(manifest.read())
                    continue
                if not (base.endswith(".rego") or base in DATA_FILES):
                    continue
                if member.size > MAX_POLICY_FILE_BYTES:
                    source.errors.append(f"{path}!{name}: larger than {MAX_POLICY_FILE_BYTES}")
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                _add_file(source, f"{path}!{name}", os.path.dirname(name), base,
                          io.BytesIO(handle.read()).getvalue())
    except (tarfile.TarError, OSError, EOFError) as err:
        source.errors.append(f"{path}: unreadable bundle ({err})")


def _first_line(text: str) -> str:
    return " ".join(text.strip().split())[:300]
