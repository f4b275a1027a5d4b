"""Shell command text -> facts: every command it runs, wrappers unwrapped, or why not known.

The text is parsed as bash parses it (`shell_syntax`, tree-sitter-bash): lists, pipelines,
subshells, `{ }`, substitutions, redirections, assignments. Each simple command is unwrapped
(`shell_wrappers`): `sudo bash -c "rm -rf /srv"` is the command `rm -rf /srv`, run through
`sudo` and `bash`, with `sudo: true`. The text of `bash -c`, `su -c`, `eval`, `watch` and
`trap` is parsed in turn, up to `MAX_DEPTH` levels.

Facts:
- `argv`, `program`: the first command's (after unwrapping); `programs`: every program run,
  wrappers included, in order, names without their directory (`/usr/bin/rm` -> `rm`).
- `commands`: each command run: `argv`, `program`, `sudo`, `via` (its wrappers),
  `args_may_be_options` (an argument known only at run time could start with `-`), `redirects`
  (`{op, fd, target, target_known, path}`: `path` the target normalised when known),
  `opaque` (and `opaque_reason`).
- `opaque` / `opaque_reasons`: something in the text runs what the facts cannot know: a
  program named by an expansion (`$X -rf /`, `${IFS}`), a glob as a program, code in another
  language (`python -c`, `perl -e`, awk `system`), a shell reading its input, `env -S`, an
  option of a wrapper the facts do not know, an assignment of `BASH_ENV`/`LD_PRELOAD`/....
- `paths`: every word that may name a file (normalised: `/etc//./shadow` -> `/etc/shadow`;
  also after `=`, `@` and `host:`); `path_patterns`: globs for words not known until run time
  (`*/.ssh/id_rsa` for `$HOME/.ssh/id_rsa`), for `glob.match` in policies.
- `redirects`: every redirection in the text; `parse_error`: text bash would refuse, or past
  the limits (depth, commands).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from engine.facts.shell_syntax import Redirect, ShellSyntaxError, SimpleCommand, parse_script
from engine.facts.shell_words import Word, normalise_path, path_candidates, quoted_for_message
from engine.facts.shell_wrappers import ELEVATING, Opaque, opaque_code, unwrap

MAX_DEPTH = 8
"""Nested shell texts (`bash -c "sh -c '...'"`) past this are a parse error."""
MAX_COMMANDS = 1000
MAX_PATHS = 2000
RISKY_ASSIGNMENTS = frozenset({"BASH_ENV", "ENV", "LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH",
                               "PROMPT_COMMAND", "SHELLOPTS", "BASHOPTS", "PS4", "IFS"})
"""Variables that make a shell or the loader run code the text does not show."""


class _Limit(ValueError):
    pass


@dataclass
class _Facts:
    commands: list[dict[str, Any]] = field(default_factory=list)
    programs: list[str] = field(default_factory=list)
    opaque_reasons: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    redirects: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    """`paths` and `patterns` (kept in order; this answers membership)."""
    words: set[Word] = field(default_factory=set)

    def opaque(self, reason: str) -> None:
        if reason not in self.opaque_reasons:
            self.opaque_reasons.append(reason)

    def word(self, word: Word) -> None:
        if word in self.words:
            return
        self.words.add(word)
        if word.known and word.value is not None:
            for path in path_candidates(word.value):
                if path not in self.seen:
                    self.seen.add(path)
                    self.paths.append(path)
        elif word.pattern.strip("*/") and "\0" + word.pattern not in self.seen:
            self.seen.add("\0" + word.pattern)
            self.patterns.append(word.pattern)
        if len(self.paths) + len(self.patterns) > MAX_PATHS:
            raise _Limit(f"more than {MAX_PATHS} paths in the command line")


def program_name(word: Word) -> str | None:
    """`/usr/bin/rm` -> `rm`; None when the name is not known until run time."""
    if not word.known or not word.value:
        return None
    return os.path.basename(word.value) or word.value


def args_may_be_options(words: list[Word]) -> bool:
    """An argument known only at run time could be an option: a variable (`rm $OPTS /srv`
    with OPTS=-rf) or a glob that may match a file named `-rf` (`rm *`). Not after `--`, and
    not a glob that starts with a directory (`/tmp/*.log` expands only to `/tmp/...`)."""
    for word in words[1:]:
        if word.known:
            if word.value == "--":
                return False
            continue
        if word.value is not None or word.glob:
            if word.pattern.startswith(("/", "./", "../", "~/")):
                continue
        elif word.pattern.startswith(("/", "./", "../")):
            continue  # "$HOME"-free prefix: "/srv/$X" expands under /srv
        return True
    return False


def _redirect_fact(redirect: Redirect) -> dict[str, Any]:
    target = redirect.target
    known = target is not None and target.known and target.value is not None
    return {"op": redirect.op, "fd": redirect.fd,
            "target": None if target is None else target.text, "target_known": known,
            "path": normalise_path(target.value or "") if known and target else None}


def _script(raw: str, depth: int, facts: _Facts, sudo: bool, via: list[str]) -> None:
    if depth > MAX_DEPTH:
        raise _Limit(f"shell text nested deeper than {MAX_DEPTH} levels")
    script = parse_script(raw)
    for word in script.words:
        facts.word(word)
    for name, value in script.assignments:
        if name in RISKY_ASSIGNMENTS:
            facts.opaque(f"assigning {name} makes the shell or loader run unseen code")
        facts.word(value)
    facts.redirects += [_redirect_fact(r) for r in script.redirects]
    for command in script.commands:
        _command(command, command.words, depth, facts, sudo, list(via))


def _command(command: SimpleCommand, words: list[Word], depth: int, facts: _Facts,
             sudo: bool, via: list[str]) -> None:
    """Record what `words` runs, unwrapping wrappers."""
    while True:
        if len(facts.commands) >= MAX_COMMANDS:
            raise _Limit(f"more than {MAX_COMMANDS} commands in the command line")
        if not words:
            return  # a bare assignment or redirection
        for word in words:
            facts.word(word)
        program = program_name(words[0])
        entry: dict[str, Any] = {
            "argv": [w.text for w in words], "program": program, "sudo": sudo,
            "via": list(via), "redirects": [_redirect_fact(r) for r in command.redirects],
            "args_may_be_options": args_may_be_options(words),
            "opaque": False, "opaque_reason": None}
        if program is None:
            name = quoted_for_message(words[0].source)
            _opaque(entry, facts, f"the program {name} is not known until run time")
            return
        try:
            unwrapped = unwrap(program, words)
        except Opaque as err:
            facts.programs.append(program)
            _opaque(entry, facts, str(err))
            return
        if unwrapped is None:
            facts.programs.append(program)
            reason = opaque_code(program, words)
            if reason is not None:
                _opaque(entry, facts, reason)
            else:
                facts.commands.append(entry)
            return
        if unwrapped.program is not None:
            entry["program"] = unwrapped.program
            entry["sudo"] = True
        facts.programs.append(entry["program"])
        elevates = sudo or unwrapped.elevates or program in ELEVATING
        inner_via = [*via, program]
        if unwrapped.extra:  # find -exec: find is the command, and runs these too
            facts.commands.append(entry)
            for extra in unwrapped.extra:
                _command(command, extra, depth, facts, elevates, inner_via)
            return
        if unwrapped.script is not None:
            if not unwrapped.script.known or unwrapped.script.value is None:
                _opaque(entry, facts, f"the text {program} runs is not known until run time")
                return
            _script(unwrapped.script.value, depth + 1, facts, elevates, inner_via)
            return
        if unwrapped.inner is None:
            facts.commands.append(entry)
            return
        words, sudo, via = unwrapped.inner, elevates, inner_via


def _opaque(entry: dict[str, Any], facts: _Facts, reason: str) -> None:
    entry["opaque"] = True
    entry["opaque_reason"] = reason
    facts.commands.append(entry)
    facts.opaque(reason)


def no_shell_facts(parse_error: str | None) -> dict[str, Any]:
    """The shell facts of a text that runs nothing (or could not be read: `parse_error`)."""
    return {"argv": [], "program": None, "programs": [], "commands": [], "opaque": False,
            "opaque_reasons": [], "paths": [], "path_patterns": [], "redirects": [],
            "interactive": False, "parse_error": parse_error}


def shell_facts(raw: str) -> dict[str, Any]:
    """The facts of shell text `raw`; never raises (errors are `parse_error`)."""
    facts = _Facts()
    try:
        _script(raw, 0, facts, False, [])
    except (ShellSyntaxError, _Limit) as err:
        return no_shell_facts(str(err))
    except RecursionError:
        return no_shell_facts("shell text nested too deeply to analyse")
    first = facts.commands[0] if facts.commands else None
    return {"argv": first["argv"] if first else [],
            "program": first["program"] if first else None,
            "programs": facts.programs, "commands": facts.commands,
            "opaque": bool(facts.opaque_reasons), "opaque_reasons": facts.opaque_reasons,
            "paths": facts.paths, "path_patterns": facts.patterns,
            "redirects": facts.redirects, "interactive": False, "parse_error": None}
