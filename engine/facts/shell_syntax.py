"""Shell text -> its simple commands, redirections and words, parsed with tree-sitter-bash.

tree-sitter-bash (the tree-sitter project's grammar, a C parser) reads bash's whole syntax:
lists, pipelines, subshells, `{ }`, `if`/`case`/loops, functions, command and process
substitution, arithmetic, here-documents, `[[ ]]`. It recovers from errors, so any ERROR or
MISSING node in its tree makes the text a syntax error here, as bash would refuse it.

Every `command` node anywhere in the tree is a simple command, those inside substitutions,
strings, here-documents and function bodies included. tree-sitter-bash gives the words after a
redirection (`echo a >f b`) to the redirection as further destinations; bash gives them to the
command, and so does `_redirected_statement`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

from engine.facts.shell_words import Word, literal, quoted_for_message, resolve

MAX_SHELL_BYTES = 32 * 1024
"""Longer shell text is not parsed (a `parse_error`): tree-sitter's error recovery takes
hundreds of milliseconds on 64 KiB of crafted text (`{a{a{a...`), and command lines are short."""
MAX_NODES = 20_000
"""A tree larger than this is not walked (the walk is Python: ~10 us a node)."""
_LANGUAGE = Language(tree_sitter_bash.language())
_LOCAL = threading.local()
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_JOINED_LINES = re.compile(r"(?<![\s\\])\\\n(?!\s)|(?<![\s\\])\\\n$")

WORD_NODES = frozenset({"word", "string", "raw_string", "ansi_c_string", "concatenation",
                        "number", "translated_string", "simple_expansion", "expansion"})
_SUBSTITUTIONS = frozenset({"command_substitution", "process_substitution"})
_REDIRECTS = frozenset({"file_redirect", "heredoc_redirect", "herestring_redirect"})
_ARGUMENTS = WORD_NODES | _SUBSTITUTIONS
_BODY_ALL = frozenset({"compound_statement", "subshell", "if_statement", "while_statement",
                       "for_statement", "c_style_for_statement", "case_statement"})


class ShellSyntaxError(ValueError):
    """Text bash would refuse, or that the facts cannot place with certainty."""


@dataclass(frozen=True)
class Redirect:
    op: str
    fd: int | None
    target: Word | None
    """The file (or fd) redirected to or from; None for a here-document."""


@dataclass
class SimpleCommand:
    words: list[Word]
    """argv as written: the program first. Empty for a bare assignment or redirection."""
    assignments: list[tuple[str, Word]] = field(default_factory=list)
    redirects: list[Redirect] = field(default_factory=list)
    start: int = 0


@dataclass
class Script:
    commands: list[SimpleCommand]
    words: list[Word]
    """Every word of the text (arguments, assignment values, loop lists, redirect targets)."""
    assignments: list[tuple[str, Word]]
    redirects: list[Redirect]


def _parser() -> Parser:
    parser = getattr(_LOCAL, "parser", None)
    if parser is None:
        parser = _LOCAL.parser = Parser(_LANGUAGE)
    return parser


def _text(node: Node) -> str:
    return (node.text or b"").decode("utf-8", "replace")


def _first_error(root: Node) -> Node | None:
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            return node
        stack.extend(reversed([c for c in node.children if c.has_error or c.is_missing]))
    return None


def parse_script(raw: str) -> Script:
    """The simple commands of `raw`; ShellSyntaxError for what bash would not run."""
    data = raw.encode("utf-8", "surrogatepass")
    if len(data) > MAX_SHELL_BYTES:
        raise ShellSyntaxError(f"command line too long to analyse ({len(data)} bytes, limit "
                               f"{MAX_SHELL_BYTES})")
    if b"\0" in data:
        raise ShellSyntaxError("NUL byte in the command line")
    if _ASTRAL.search(raw):
        # tree-sitter-bash 0.25.1 reads past its tables on a 4-byte UTF-8 character after a
        # `{` (upstream issue #337: SIGSEGV, depending on memory layout); it is never parsed
        raise ShellSyntaxError("characters beyond U+FFFF (emoji and the like) in the command "
                               "line are not analysed")
    if _JOINED_LINES.search(raw):
        # bash removes backslash-newline before it splits words (`r\<newline>m` is `rm`);
        # tree-sitter-bash splits the word there
        raise ShellSyntaxError("a line continuation inside a word")
    tree = _parser().parse(data)
    root = tree.root_node
    if root.has_error:
        bad = _first_error(root) or root
        snippet = data[bad.start_byte:bad.start_byte + 30].decode("utf-8", "replace")
        what = (f"missing {quoted_for_message(bad.type)}" if bad.is_missing
                else f"near {quoted_for_message(snippet)}")
        raise ShellSyntaxError(f"shell syntax error at offset {bad.start_byte}: {what}")
    if root.descendant_count > MAX_NODES:
        raise ShellSyntaxError(f"command line too complex to analyse (more than {MAX_NODES} "
                               "syntax nodes)")
    return _Walker().walk(root)


class _Walker:
    def __init__(self) -> None:
        self.commands: list[SimpleCommand] = []
        self.words: list[Word] = []
        self.assignments: list[tuple[str, Word]] = []
        self.redirects: list[Redirect] = []
        self.inherited: dict[int, list[Redirect]] = {}
        self.extra_words: dict[int, list[Word]] = {}

    def walk(self, root: Node) -> Script:
        # (node, inside a word, redirections of the enclosing redirected statements)
        stack: list[tuple[Node, bool, tuple[Redirect, ...]]] = [(root, False, ())]
        while stack:
            node, in_word, outer = stack.pop()
            kind = node.type
            if kind in WORD_NODES and not in_word:
                self.words.append(resolve(node))
                in_word = True
            elif kind in _SUBSTITUTIONS:
                in_word = False
            if kind == "redirected_statement":
                outer = outer + tuple(self._redirected_statement(node))
            elif kind == "command":
                self._command(node, outer)
            elif kind in ("declaration_command", "unset_command"):
                self._declaration(node, outer)
            elif kind == "variable_assignment":
                self._assignment(node)
            elif kind in _REDIRECTS and node.parent is not None and \
                    node.parent.type not in ("command", "redirected_statement"):
                self.redirects.append(self._redirect(node)[0])
            stack.extend((c, in_word, outer) for c in reversed(node.children))
        self.commands.sort(key=lambda c: c.start)
        return Script(self.commands, self.words, self.assignments, self.redirects)

    def _redirect(self, node: Node) -> tuple[Redirect, list[Word]]:
        """A redirection and the words tree-sitter put after its target (the command's)."""
        fd: int | None = None
        op = ""
        targets: list[Word] = []
        for name, child in _fields(node):
            if name == "descriptor" or child.type == "file_descriptor":
                text = _text(child)
                fd = int(text) if text.isdigit() and len(text) < 6 else None
            elif not child.is_named and not op:
                op = _text(child)
            elif name == "destination" or (node.type == "herestring_redirect" and child.is_named):
                targets.append(resolve(child))
        if node.type == "heredoc_redirect":
            return Redirect(op or "<<", fd, None), []
        redirect = Redirect(op, fd, targets[0] if targets else None)
        return redirect, targets[1:]

    def _redirected_statement(self, node: Node) -> list[Redirect]:
        body = node.child_by_field_name("body")
        redirects: list[Redirect] = []
        extras: list[Word] = []
        for name, child in _fields(node):
            if name == "redirect" or child.type in _REDIRECTS:
                redirect, more = self._redirect(child)
                redirects.append(redirect)
                extras += more
        self.redirects += redirects
        if extras:
            owner = _last_command(body) if body is not None else None
            if owner is not None:
                self.extra_words.setdefault(owner.id, []).extend(extras)
            elif body is None:
                self.commands.append(SimpleCommand(extras, [], list(redirects), node.start_byte))
            else:
                raise ShellSyntaxError("words after a redirection of a compound command")
        if body is not None and body.type not in _BODY_ALL and body.type != "command":
            # a pipeline: the redirection belongs to its last command (bash's grammar)
            last = _last_command(body)
            if last is not None:
                self.inherited.setdefault(last.id, []).extend(redirects)
            return []
        return redirects

    def _command(self, node: Node, outer: tuple[Redirect, ...]) -> None:
        words: list[Word] = []
        command = SimpleCommand(words, [], list(outer) + self.inherited.get(node.id, []),
                                node.start_byte)
        for name, child in _fields(node):
            if child.type == "variable_assignment":
                command.assignments.append(_assignment_of(child))
            elif child.type in _REDIRECTS:
                redirect, more = self._redirect(child)
                command.redirects.append(redirect)
                self.redirects.append(redirect)
                words += more
            elif name == "name":
                inner = child.named_children[0] if child.named_children else child
                words.append(resolve(inner))
            elif name == "argument" or (child.is_named and child.type in _ARGUMENTS):
                words.append(resolve(child))
        words += self.extra_words.get(node.id, [])
        self.commands.append(command)

    def _declaration(self, node: Node, outer: tuple[Redirect, ...]) -> None:
        """`export`/`declare`/`local`/`readonly`/`typeset`/`unset` as a simple command."""
        words: list[Word] = []
        command = SimpleCommand(words, [], list(outer), node.start_byte)
        for child in node.children:
            if not child.is_named:
                if not words:
                    words.append(literal(_text(child)))
                continue
            if child.type == "variable_assignment":
                name, value = _assignment_of(child)
                command.assignments.append((name, value))
                text = None if value.value is None else f"{name}={value.value}"
                words.append(Word(text, f"{name}={value.pattern}", _text(child), value.glob))
            else:
                words.append(resolve(child))
        self.commands.append(command)

    def _assignment(self, node: Node) -> None:
        self.assignments.append(_assignment_of(node))


def _fields(node: Node) -> list[tuple[str | None, Node]]:
    """The children with their field names, in one pass (`field_name_for_child(i)` walks the
    children up to `i` each time: quadratic over a command with many words)."""
    out: list[tuple[str | None, Node]] = []
    cursor = node.walk()
    if cursor.goto_first_child():
        while True:
            child = cursor.node
            if child is not None:
                out.append((cursor.field_name, child))
            if not cursor.goto_next_sibling():
                break
    return out


def _assignment_of(node: Node) -> tuple[str, Word]:
    name_node = node.child_by_field_name("name")
    value_node = node.child_by_field_name("value")
    name = _text(name_node) if name_node is not None else ""
    value = resolve(value_node) if value_node is not None else literal("")
    return name, value


def _last_command(node: Node | None) -> Node | None:
    """The simple command that ends `node` (itself, or the last of a pipeline or list)."""
    while node is not None:
        if node.type == "command":
            return node
        if node.type not in ("pipeline", "list", "negated_command", "redirected_statement"):
            return None
        named = [c for c in node.named_children if c.type not in _REDIRECTS]
        if node.type == "redirected_statement":
            node = node.child_by_field_name("body")
            continue
        node = named[-1] if named else None
    return None
