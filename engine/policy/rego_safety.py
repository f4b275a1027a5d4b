"""OPA's safety check for Rego bodies, and its reordering, which regopy lacks.

OPA refuses a module in which a variable could be unbound when an expression needs it
(`rego_unsafe_var_error: var x is unsafe`): `x > 1` alone, `not input.a[x]`, `p := y if
input.a`. regopy evaluates such bodies, and a negated one *holds* (`not x` is true), so a
`deny` could silently never fire or an allow could always hold. OPA also reorders a body so
that each expression runs after those binding its variables (`x > 1; x := input.a` is
accepted and true); regopy evaluates as written (undefined).

`check_module` replicates `ast/compile.go` (`reorderBodyForSafety`, `reorderBodyForClosures`,
`outputVarsForExpr`, unification) over a small parse of each rule: it returns the unsafe
variables with their lines, and the module source with every body that OPA would reorder
written in OPA's order (same lines after the body; the body itself collapses onto its first
lines). It is a safety reader, not a Rego parser: what it cannot read it leaves to regopy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""(?P<comment>\#[^\n]*)
      |(?P<string>"(?:[^"\\\n]|\\.)*")
      |(?P<raw>`[^`]*`)
      |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
      |(?P<op>:=|==|!=|<=|>=|[-+*/%&|<>=,;:.\(\)\[\]\{\}])
      |(?P<newline>\n)
      |(?P<space>[ \t\r]+)
      |(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_BINARY = frozenset({"==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "&", "|"})
_CONSTANTS = frozenset({"true", "false", "null"})
# Arity of the builtins a policy may call with an extra output argument (`count(x, n)`,
# `walk(x, [path, value])`); other calls give no output, as OPA does for an unknown arity.
_ARITY = {
    **dict.fromkeys(("count", "sum", "product", "max", "min", "sort", "upper", "lower",
                     "abs", "round", "ceil", "floor", "to_number", "json.marshal",
                     "json.unmarshal", "base64.encode", "base64.decode", "object.keys",
                     "type_name", "walk", "union", "intersection", "trim_space",
                     "strings.reverse", "is_number", "is_string", "is_boolean", "is_array",
                     "is_set", "is_object", "is_null", "yaml.unmarshal", "yaml.marshal",
                     "array.reverse", "urlquery.encode", "urlquery.decode", "hex.encode",
                     "hex.decode", "base64url.encode", "base64url.decode", "bits.negate",
                     "time.parse_rfc3339_ns", "time.date", "time.clock", "time.weekday",
                     "crypto.sha256", "crypto.md5", "crypto.sha1", "io.jwt.decode",
                     "time.format", "json.is_valid", "yaml.is_valid", "base64.is_valid",
                     "base64url.encode_no_pad", "array.flatten", "object.union_n",
                     "units.parse", "units.parse_bytes", "net.cidr_expand",
                     "net.cidr_is_valid", "net.cidr_merge", "regex.is_valid",
                     "glob.quote_meta", "semver.is_valid", "uuid.parse", "uuid.rfc4122",
                     "time.parse_duration_ns", "urlquery.encode_object",
                     "urlquery.decode_object", "json.verify_schema",
                     "crypto.x509.parse_certificates",
                     "crypto.x509.parse_and_verify_certificates",
                     "crypto.x509.parse_certificate_request", "crypto.parse_private_keys",
                     "crypto.x509.parse_rsa_private_key", "crypto.x509.parse_keypair"), 1),
    **dict.fromkeys(("concat", "split", "sprintf", "startswith", "endswith", "contains",
                     "indexof", "trim", "trim_left", "trim_right", "trim_prefix",
                     "trim_suffix", "regex.match", "array.concat", "format_int",
                     "numbers.range", "plus", "minus", "mul", "div", "rem", "and", "or",
                     "object.remove", "object.filter", "json.filter", "json.remove",
                     "bits.and", "bits.or", "bits.xor", "bits.lsh", "bits.rsh",
                     "regex.split", "strings.count", "strings.replace_n", "json.patch",
                     "net.cidr_contains", "net.cidr_intersects", "object.subset",
                     "time.parse_ns", "equal", "neq", "gt", "gte", "lt",
                     "lte", "internal.member_2", "object.union", "indexof_n",
                     "strings.any_prefix_match", "strings.any_suffix_match",
                     "strings.render_template", "net.cidr_contains_matches",
                     "net.cidr_overlap", "regex.globs_match", "semver.compare",
                     "time.diff", "graph.reachable", "graph.reachable_paths",
                     "json.match_schema", "json.marshal_with_options", "crypto.hmac.md5",
                     "crypto.hmac.sha1", "crypto.hmac.sha256", "crypto.hmac.sha512",
                     "crypto.hmac.equal", "io.jwt.decode_verify", "rand.intn"), 2),
    **dict.fromkeys(("replace", "substring", "array.slice", "object.get",
                     "regex.replace", "regex.find_n", "glob.match", "numbers.range_step",
                     "regex.find_all_string_submatch_n", "internal.member_3"), 3),
    **dict.fromkeys(("time.add_date", "regex.template_match"), 4),
}


@dataclass(frozen=True)
class Unsafe:
    """A variable OPA refuses at `line`: `message` is OPA's text without the var."""

    var: str
    line: int
    message: str = "rego_unsafe_var_error: var {} is unsafe"

    def text(self) -> str:
        return self.message.format("_" if self.var.startswith("_#") else self.var)


# -- the tree ---------------------------------------------------------------------------------


@dataclass
class Term:
    """A term: `kind` is var, scalar, ref, call, array, object, set, compr or expr (an operator
    application, whose result is ground once its operands are safe)."""

    kind: str
    name: str = ""  # var name; call or ref head text
    items: list[Term] = field(default_factory=list)  # ref subscripts, call args, members
    head: Term | None = None  # ref head (a var, a call, a composite)
    body: Body | None = None  # comprehension body
    offset: int = 0


@dataclass
class Expr:
    start: int
    end: int
    line: int
    kind: str  # "term", "eq", "assign", "call", "some", "some_in", "every", "decl"
    terms: list[Term] = field(default_factory=list)
    negated: bool = False
    with_values: list[Term] = field(default_factory=list)
    decl: set[str] = field(default_factory=set)  # `some x` / `some x in` / every locals
    body: Body | None = None  # `every` body


@dataclass
class Body:
    exprs: list[Expr]
    start: int
    end: int
    order: list[int] | None = None  # OPA's order, when it differs from the written one
    brace: int | None = None  # offset just past a rule body's `{` (None: `if expr`)


@dataclass
class Rule:
    line: int
    end: int  # just past the rule's last token
    args: list[Term]
    head_terms: list[Term]  # key, value, `contains` term (their vars must be safe)
    bodies: list[tuple[Body | None, list[Term]]]  # else bodies with their value terms
    declared: set[str] = field(default_factory=set)


# -- tokens and parsing -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    start: int
    end: int


class ParseError(Exception):
    pass


def _tokens(source: str, start: int, end: int) -> list[_Tok]:
    out = []
    for m in _TOKEN.finditer(source, start, end):
        kind = m.lastgroup or "other"
        if kind in ("space", "comment"):
            continue
        out.append(_Tok(kind, m.group(), m.start(), m.end()))
    return out


class _Parser:
    def __init__(self, source: str, toks: list[_Tok], is_function: Callable[[str], bool]):
        self.source = source
        self.toks = toks
        self.i = 0
        self.newlines = [True]  # stack: True where newlines are plain whitespace
        self.wildcards = 0
        self.is_function = is_function

    # token access
    def _skip(self) -> None:
        if self.newlines[-1]:
            while self.i < len(self.toks) and self.toks[self.i].kind == "newline":
                self.i += 1

    def peek(self, ahead: int = 0) -> _Tok | None:
        self._skip()
        j = self.i
        seen = 0
        while j < len(self.toks):
            if self.newlines[-1] and self.toks[j].kind == "newline":
                j += 1
                continue
            if seen == ahead:
                return self.toks[j]
            seen += 1
            j += 1
        return None

    def next(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end")
        self.i = self.toks.index(tok, self.i) + 1
        return tok

    def at(self, *texts: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind != "string" and tok.text in texts

    def expect(self, text: str) -> _Tok:
        tok = self.next()
        if tok.text != text:
            raise ParseError(f"expected {text!r} at {tok.start}, got {tok.text!r}")
        return tok

    def line(self, offset: int) -> int:
        return self.source.count("\n", 0, offset) + 1

    # bodies
    def body(self, closer: str | None) -> Body:
        """Literals up to `closer` (not consumed), split at `;` and newlines."""
        self.newlines.append(False)
        try:
            exprs: list[Expr] = []
            first = self.peek()
            start = first.start if first is not None else 0
            while True:
                while self.at(";") or (self.peek() is not None
                                       and self.peek().kind == "newline"):  # type: ignore[union-attr]
                    self.next()
                tok = self.peek()
                if tok is None or (closer is not None and tok.text == closer):
                    break
                exprs.append(self.literal())
                tok = self.peek()
                if tok is None or tok.kind == "newline" or tok.text == ";" \
                        or (closer is not None and tok.text == closer):
                    continue
                raise ParseError(f"unexpected {tok.text!r} at {tok.start}")
            end = exprs[-1].end if exprs else start
            return Body(exprs, exprs[0].start if exprs else start, end)
        finally:
            self.newlines.pop()

    def literal(self) -> Expr:
        first = self.peek()
        assert first is not None
        start = first.start
        if first.text == "every" and first.kind == "name":
            return self._every(start)
        if first.text == "some" and first.kind == "name":
            expr = self._some(start)
        else:
            negated = False
            if first.text == "not" and first.kind == "name":
                self.next()
                negated = True
            expr = self._expression(start)
            expr.negated = negated
        while self.at("with"):
            self.next()
            self.term()  # the target: a ref, never a variable needing a value
            self.expect("as")
            value = self.infix()
            if value.kind in ("var", "ref") and self.is_function(value.name):
                value = Term("scalar", offset=value.offset)  # `with f as g`, g a function
            expr.with_values.append(value)
            expr.end = self.toks[self.i - 1].end
        return expr

    def _some(self, start: int) -> Expr:
        self.next()
        names: list[Term] = [self.infix_no_in()]
        while self.at(","):
            self.next()
            names.append(self.infix_no_in())
        if self.at("in"):
            self.next()
            domain = self.infix()
            decl = set().union(*(_vars(t, closures=False) for t in names))
            return Expr(start, self.toks[self.i - 1].end, self.line(start), "some_in",
                        [*names, domain], decl=decl)
        decl = {t.name for t in names if t.kind == "var"}
        return Expr(start, self.toks[self.i - 1].end, self.line(start), "decl", decl=decl)

    def _every(self, start: int) -> Expr:
        self.next()
        names = [self.infix_no_in()]
        while self.at(","):
            self.next()
            names.append(self.infix_no_in())
        self.expect("in")
        domain = self.infix()
        self.expect("{")
        body = self.body("}")
        self.expect("}")
        decl = set().union(*(_vars(t, closures=False) for t in names))
        return Expr(start, self.toks[self.i - 1].end, self.line(start), "every", [domain],
                    decl=decl, body=body)

    def _expression(self, start: int) -> Expr:
        left = self.infix()
        if self.at(":=", "="):
            op = self.next().text
            right = self.infix()
            return Expr(start, self.toks[self.i - 1].end, self.line(start),
                        "assign" if op == ":=" else "eq", [left, right])
        if self.at(","):  # `k, v in xs` as an expression
            self.next()
            rest = self.infix()
            return Expr(start, self.toks[self.i - 1].end, self.line(start), "term",
                        [Term("expr", items=[left, rest])])
        kind = "call" if left.kind == "call" else "term"
        return Expr(start, self.toks[self.i - 1].end, self.line(start), kind, [left])

    # terms
    def infix(self) -> Term:
        return self._infix(allow_in=True)

    def infix_no_in(self) -> Term:
        return self._infix(allow_in=False)

    def _infix(self, allow_in: bool) -> Term:
        operands = [self.unary()]
        while True:
            tok = self.peek()
            if tok is None or tok.kind in ("string", "raw", "number"):
                break
            if tok.text in _BINARY or (allow_in and tok.text == "in" and tok.kind == "name"):
                self.next()
                operands.append(self.unary())
                continue
            break
        if len(operands) == 1:
            return operands[0]
        return Term("expr", items=operands, offset=operands[0].offset)

    def unary(self) -> Term:
        if self.at("-"):
            tok = self.next()
            return Term("expr", items=[self.unary()], offset=tok.start)
        return self.term()

    def term(self) -> Term:
        tok = self.next()
        if tok.kind in ("string", "raw", "number"):
            base = Term("scalar", name=tok.text, offset=tok.start)
        elif tok.kind == "name":
            base = Term("scalar", offset=tok.start) if tok.text in _CONSTANTS \
                else self._named(tok)
        elif tok.text == "(":
            self.newlines.append(True)
            try:
                base = self.infix()
                if self.at(","):  # `(k, v in xs)`
                    self.next()
                    base = Term("expr", items=[base, self.infix()], offset=tok.start)
                self.expect(")")
            finally:
                self.newlines.pop()
        elif tok.text == "[":
            base = self._array(tok)
        elif tok.text == "{":
            base = self._braces(tok)
        else:
            raise ParseError(f"unexpected {tok.text!r} at {tok.start}")
        return self._postfix(base)

    def _named(self, tok: _Tok) -> Term:
        name = tok.text
        if name == "_":
            self.wildcards += 1
            name = f"_#{self.wildcards}"
        return Term("var", name=name, offset=tok.start)

    def _adjacent(self) -> _Tok | None:
        """The next token when it touches the previous one (`a.b`, `a[0]`, `f(x)`)."""
        if self.i >= len(self.toks) or self.i == 0:
            return None
        tok = self.toks[self.i]
        return tok if tok.start == self.toks[self.i - 1].end else None

    def _postfix(self, base: Term) -> Term:
        while True:
            tok = self._adjacent()
            if tok is None:
                return base
            if tok.text == "." and tok.kind == "op":
                self.i += 1
                part = self.toks[self.i]
                if part.kind != "name":
                    raise ParseError(f"bad ref at {part.start}")
                self.i += 1
                base = self._extend(base, Term("scalar", offset=part.start), "." + part.text)
            elif tok.text == "[":
                self.i += 1
                self.newlines.append(True)
                try:
                    index = self.infix()
                    self.expect("]")
                finally:
                    self.newlines.pop()
                base = self._extend(base, index, "[]")
            elif tok.text == "(":
                self.i += 1
                base = self._call(base)
            else:
                return base

    @staticmethod
    def _extend(base: Term, part: Term, text: str) -> Term:
        if base.kind == "ref":
            base.items.append(part)
            base.name += text
            return base
        name = (base.name if base.kind == "var" else "") + text
        return Term("ref", name=name, head=base, items=[part], offset=base.offset)

    def _call(self, callee: Term) -> Term:
        self.newlines.append(True)
        try:
            args: list[Term] = []
            while not self.at(")"):
                args.append(self.infix())
                if not self.at(")"):
                    self.expect(",")
            self.expect(")")
        finally:
            self.newlines.pop()
        name = callee.name if callee.kind in ("var", "ref") else ""
        name = name.replace("[]", "")
        return Term("call", name=name, items=args, offset=callee.offset, head=callee)

    def _array(self, tok: _Tok) -> Term:
        self.newlines.append(True)
        try:
            items: list[Term] = []
            while not self.at("]"):
                items.append(self._infix_no_union())
                if self.at("|") and len(items) == 1:
                    return self._comprehension(items, "]", tok)
                if not self.at("]"):
                    self.expect(",")
            self.expect("]")
            return Term("array", items=items, offset=tok.start)
        finally:
            self.newlines.pop()

    def _braces(self, tok: _Tok) -> Term:
        self.newlines.append(True)
        try:
            items: list[Term] = []
            kind = "set"
            while not self.at("}"):
                item = self._infix_no_union()
                if self.at(":"):
                    self.next()
                    kind = "object"
                    items.extend([item, self._infix_no_union()])
                else:
                    items.append(item)
                if self.at("|"):
                    return self._comprehension(items, "}", tok)
                if not self.at("}"):
                    self.expect(",")
            self.expect("}")
            return Term(kind if items else "object", items=items, offset=tok.start)
        finally:
            self.newlines.pop()

    def _infix_no_union(self) -> Term:
        """An infix term that stops at `|` (a comprehension's bar inside braces)."""
        operands = [self.unary()]
        while self.at(*(_BINARY - {"|"})) or self.at("in"):
            self.next()
            operands.append(self.unary())
        if len(operands) == 1:
            return operands[0]
        return Term("expr", items=operands, offset=operands[0].offset)

    def _comprehension(self, head: list[Term], closer: str, tok: _Tok) -> Term:
        self.expect("|")
        body = self.body(closer)
        self.expect(closer)
        return Term("compr", items=head, body=body, offset=tok.start)


# -- variables --------------------------------------------------------------------------------


def _vars(term: Term, closures: bool = True, skip_sets: bool = False,
          skip_object_keys: bool = False) -> set[str]:
    """Variables in a term; ref heads that are variables count, call heads do not."""
    out: set[str] = set()
    for t in _walk(term, closures=closures, skip_sets=skip_sets,
                   skip_object_keys=skip_object_keys):
        if t.kind == "var":
            out.add(t.name)
    return out


def _walk(term: Term, closures: bool = False, skip_sets: bool = False,
          skip_object_keys: bool = False) -> Iterator[Term]:
    yield term
    if term.kind == "compr":
        if closures:
            for item in term.items:
                yield from _walk(item, closures)
        return
    if term.kind == "set" and skip_sets:
        return
    if term.kind == "call":
        pass  # the call head is a function name, not a variable
    elif term.head is not None:
        yield from _walk(term.head, closures, skip_sets, skip_object_keys)
    for i, item in enumerate(term.items):
        if term.kind == "object" and skip_object_keys and i % 2 == 0:
            continue
        yield from _walk(item, closures, skip_sets, skip_object_keys)


def _expr_terms(expr: Expr) -> list[Term]:
    return list(expr.terms) + list(expr.with_values)


def _expr_vars(expr: Expr, outer: set[str] | None = None) -> set[str]:
    """OPA's `e.Vars(SafetyCheckVisitorParams)`: closures skipped; for `every`, its domain's
    variables and those of `outer` (the enclosing body's) that its body uses."""
    out: set[str] = set()
    for term in _expr_terms(expr):
        out |= _vars(term, closures=False)
    if expr.kind == "some_in":
        out -= expr.decl  # declared by the `some`; the domain's vars remain
    if expr.kind == "every":
        out = _vars(expr.terms[0], closures=False)
        if outer:
            out |= (_closure_vars(expr) - expr.decl) & outer
    return out


def _closures(expr: Expr) -> Iterator[Term | Expr]:
    """Comprehensions (outermost) and `every` expressions inside an expression."""
    if expr.kind == "every":
        yield expr
        return
    for term in _expr_terms(expr):
        for t in _walk(term, closures=False):
            if t.kind == "compr":
                yield t


def _closure_vars(node: Term | Expr) -> set[str]:
    """Every variable mentioned inside a closure, nested closures included."""
    out: set[str] = set()
    body = node.body
    if isinstance(node, Term):
        for item in node.items:
            out |= _vars(item, closures=True)
    else:
        out |= _vars(node.terms[0], closures=True)
    if body is not None:
        for e in body.exprs:
            for term in _expr_terms(e):
                out |= _vars(term, closures=True)
            for closure in _closures(e):
                out |= _closure_vars(closure)
    return out


# -- output variables (OPA's outputVarsForExpr) -----------------------------------------------


def _ref_safe(term: Term, safe: set[str]) -> bool:
    head = term.head
    if head is None:
        return False
    if head.kind == "var":
        return head.name in safe
    return True  # a call or composite head: its own inputs are checked where it is evaluated


def _term_outputs(term: Term, safe: set[str]) -> set[str]:
    """Variables bound by iterating refs with a safe head (`xs[i]`, `input.a[k].b`): OPA's
    `Ref.OutputVars`, which skips the head of every ref, nested ones too (`a[b[i]]` binds i,
    not b)."""
    out: set[str] = set()

    def visit(t: Term) -> None:
        if t.kind == "compr":
            return
        if t.kind == "ref" and _ref_safe(t, safe):
            for part in t.items:
                out.update(_vars_skip_ref_heads(part))
        if t.kind != "call" and t.head is not None:
            visit(t.head)
        for item in t.items:
            visit(item)

    visit(term)
    return out


def _vars_skip_ref_heads(term: Term, skip_sets: bool = False) -> set[str]:
    """Variables of a term but not the heads of its refs (OPA's SkipRefHead), nor object keys
    and, with `skip_sets`, set members."""
    out: set[str] = set()

    def visit(t: Term) -> None:
        if t.kind == "compr" or (skip_sets and t.kind == "set"):
            return
        if t.kind == "object":
            for value in t.items[1::2]:
                visit(value)
            return
        if t.kind == "var":
            out.add(t.name)
        if t.kind == "call" or t.kind == "ref":
            pass  # a call's name, a ref's head: not bound here
        elif t.head is not None:
            visit(t.head)
        for item in t.items:
            visit(item)

    visit(term)
    return out


def _outputs(expr: Expr, safe: set[str], arity: Callable[[str], int]) -> set[str]:
    if expr.negated or expr.kind in ("decl",):
        return set()
    for value in expr.with_values:
        if _vars(value, closures=False) - safe:
            return set()
    if expr.kind == "every":
        return _term_outputs(expr.terms[0], safe)
    out: set[str] = set()
    for term in expr.terms:
        out |= _term_outputs(term, safe)
    if expr.kind in ("eq", "assign"):
        known = safe | out
        _unify(expr.terms[0], expr.terms[1], known)
        return known - safe
    if expr.kind == "some_in":
        *names, domain = expr.terms
        if _vars(domain, closures=False) - safe - out:
            return out
        for name in names:
            out |= _vars(name, closures=False, skip_sets=True, skip_object_keys=True)
        return out
    if expr.kind == "call":
        call = expr.terms[0]
        n = arity(call.name)
        if n < 0 or len(call.items) <= n:
            return out
        inputs: set[str] = set()
        for arg in call.items[:n]:
            inputs |= _vars_skip_ref_heads(arg, skip_sets=True)
        if inputs - out - safe:
            return set()
        for arg in call.items[n:]:
            out |= _vars_skip_ref_heads(arg, skip_sets=True)
    return out


def _literal_keys(obj: Term) -> dict[str, Term] | None:
    """`{key text: value}` of an object literal whose keys are all scalars, else None (OPA
    unifies two objects only when their keys are ground and equal)."""
    keys = obj.items[0::2]
    if any(k.kind != "scalar" or not k.name for k in keys):
        return None
    return {k.name: v for k, v in zip(keys, obj.items[1::2], strict=True)}


def _ground(term: Term, safe: set[str]) -> bool:
    return not (_vars(term, closures=False) - safe)


def _unify(a: Term, b: Term, safe: set[str]) -> None:
    """Grow `safe` with what `a = b` binds (OPA's unifier, to a fixpoint)."""
    unknown: list[tuple[str, set[str]]] = []

    def mark(name: str) -> None:
        if name in safe:
            return
        safe.add(name)

    def unify(x: Term, y: Term) -> None:
        if x.kind == "var":
            if y.kind == "var":
                if y.name in safe:
                    mark(x.name)
                elif x.name in safe:
                    mark(y.name)
                else:
                    unknown.append((x.name, {y.name}))
                    unknown.append((y.name, {x.name}))
            elif y.kind in ("array", "object"):
                rest = _vars(y, closures=False, skip_object_keys=True) - safe
                if x.name in safe:
                    safe.update(rest)  # `[a, b] = val`, val bound: a and b are
                elif rest:
                    unknown.append((x.name, rest))
                else:
                    mark(x.name)
            elif y.kind == "ref":
                if _ref_safe(y, safe):
                    mark(x.name)
            elif y.kind in ("call", "expr"):
                if _ground(y, safe):
                    mark(x.name)
                else:
                    unknown.append((x.name, _vars(y, closures=False) - safe))
            else:
                mark(x.name)  # scalar, set, comprehension
        elif x.kind == "ref":
            if _ref_safe(x, safe):
                if y.kind == "var":
                    mark(y.name)
                elif y.kind in ("array", "object"):
                    safe.update(_vars(y, closures=False, skip_object_keys=True))
        elif x.kind in ("call", "expr"):
            if _ground(x, safe):
                if y.kind == "var":
                    mark(y.name)
                elif y.kind in ("array", "object"):
                    safe.update(_vars(y, closures=False, skip_object_keys=True))
            elif y.kind == "var":
                unknown.append((y.name, _vars(x, closures=False) - safe))
        elif x.kind == "compr":
            if y.kind == "var":
                mark(y.name)
            elif y.kind == "array":
                safe.update(_vars(y, closures=False))
        elif x.kind == "array":
            if y.kind in ("var", "ref", "compr", "call", "expr"):
                unify(y, x)
            elif y.kind == "array" and len(x.items) == len(y.items):
                for p, q in zip(x.items, y.items, strict=True):
                    unify(p, q)
        elif x.kind == "object":
            if y.kind in ("var", "ref", "call", "expr"):
                unify(y, x)
            elif y.kind == "object":
                xs, ys = _literal_keys(x), _literal_keys(y)
                if xs is not None and ys is not None and xs.keys() == ys.keys():
                    for key, value in xs.items():
                        unify(value, ys[key])
        else:  # scalar or set
            if y.kind == "var":
                mark(y.name)
            elif y.kind in ("array", "object"):
                unify(y, x)

    unify(a, b)
    changed = True
    while changed:
        changed = False
        for name, needs in unknown:
            if name not in safe and needs <= safe:
                safe.add(name)
                changed = True


# -- reordering (OPA's reorderBodyForSafety) --------------------------------------------------


@dataclass
class _Checker:
    arity: Callable[[str], int]
    unsafe: list[Unsafe] = field(default_factory=list)
    reordered: list[Body] = field(default_factory=list)

    def body(self, body: Body, globals_: set[str]) -> set[str]:
        """Check `body` (recording unsafe vars and reorders); the vars it makes safe."""
        exprs = body.exprs
        body_vars: set[str] = set()
        for e in exprs:
            body_vars |= _expr_vars(e)
        globals_ = globals_ - _declared(body)
        declared_at = self._declarations(exprs)
        order = self._closure_order(exprs, globals_, body_vars, declared_at)
        if order is None:
            return set()
        safe: set[str] = set()
        unsafe: dict[int, set[str]] = {}
        for i in order:
            for v in _expr_vars(exprs[i], body_vars):
                if v in globals_:
                    safe.add(v)
                else:
                    unsafe.setdefault(i, set()).add(v)
        def still_unsafe(i: int, _: list[int]) -> set[str]:
            safe.update(_outputs(exprs[i], safe, self.arity))  # even when i stays unsafe
            return unsafe.get(i, set()) - safe

        done, unsafe = _order_until_stable(order, still_unsafe)
        if unsafe:
            self._report(exprs, unsafe)
            return safe
        if done != list(range(len(exprs))):
            body.order = done
            self.reordered.append(body)
        # closures, each with the variables of the expressions before it
        seen = set(globals_)
        for i in done:
            e = exprs[i]
            for closure in _closures(e):
                self._closure(closure, seen, e)
            seen |= _expr_vars(e) | e.decl
        return safe

    def _declarations(self, exprs: list[Expr]) -> dict[str, int]:
        """Where each variable of `:=` or `some` is declared. As OPA, a variable named before
        its declaration (outside closures) is refused: `rego_compile_error: var x
        referenced above`; declared twice, `var x assigned above` / `declared above`."""
        declared_at: dict[str, int] = {}
        seen: set[str] = set()
        for i, e in enumerate(exprs):
            names = set() if e.kind == "every" else set(e.decl)
            if e.kind == "assign":
                names |= _vars(e.terms[0], closures=False)
            for name in sorted(names):
                if name.startswith("_#"):
                    continue
                if name in declared_at:
                    how = "assigned" if e.kind == "assign" else "declared"
                    self.unsafe.append(Unsafe(name, e.line, "rego_compile_error: var {} "
                                              f"{how} above"))
                elif name in seen:
                    self.unsafe.append(Unsafe(name, e.line, "rego_compile_error: var {} "
                                              "referenced above"))
                declared_at.setdefault(name, i)
            seen |= _expr_vars(e) | names
        return declared_at

    def _closure_order(self, exprs: list[Expr], globals_: set[str], body_vars: set[str],
                       declared_at: dict[str, int]) -> list[int] | None:
        """OPA's reorderBodyForClosures: an expression whose closures use a variable of this
        body goes after the expressions that bind it. A variable declared (`:=`, `some`)
        only after the closure is not that variable: the closure's own, as OPA scopes it."""
        def closed_unbound(i: int, reordered: list[int]) -> set[str]:
            inner: set[str] = set()
            for closure in _closures(exprs[i]):
                inner |= _closure_vars(closure)
            closed = {v for v in (inner & body_vars) - globals_
                      if declared_at.get(v, -1) < i}
            return closed - self._outputs_of(exprs, reordered, globals_)

        reordered, unsafe = _order_until_stable(list(range(len(exprs))), closed_unbound)
        if unsafe:
            self._report(exprs, unsafe)
            return None
        return reordered

    def _outputs_of(self, exprs: list[Expr], indices: list[int], globals_: set[str]
                    ) -> set[str]:
        out = set(globals_)
        while True:
            before = len(out)
            for i in indices:
                out |= _outputs(exprs[i], out, self.arity)
            if len(out) == before:
                return out - globals_

    def _closure(self, node: Term | Expr, globals_: set[str], owner: Expr) -> None:
        assert node.body is not None
        if isinstance(node, Expr):  # every: key/value are locals bound by the domain
            self.body(node.body, globals_ | node.decl)
            return
        head_vars: set[str] = set()
        for item in node.items:
            head_vars |= _vars(item, closures=False)
        body_vars: set[str] = set()
        for e in node.body.exprs:
            body_vars |= _expr_vars(e) | e.decl
        for v in sorted(head_vars - body_vars - globals_):
            self.unsafe.append(Unsafe(v, owner.line))
        self.body(node.body, globals_)

    def _report(self, exprs: list[Expr], unsafe: dict[int, set[str]]) -> None:
        first: dict[str, int] = {}
        for i in sorted(unsafe):
            for v in unsafe[i]:
                first.setdefault(v, exprs[i].line)
        for v, line in sorted(first.items(), key=lambda kv: (kv[1], kv[0])):
            self.unsafe.append(Unsafe(v, line))


def _order_until_stable(candidates: list[int], unsafe_of: Callable[[int, list[int]], set[str]]
                        ) -> tuple[list[int], dict[int, set[str]]]:
    """OPA's reordering loop: pass over the candidates in written order, taking each whose
    `unsafe_of(i, taken so far)` is empty, until a pass takes none. (order, what stays
    unsafe)."""
    done: list[int] = []
    unsafe: dict[int, set[str]] = {}
    while True:
        n = len(done)
        for i in candidates:
            if i in done:
                continue
            remaining = unsafe_of(i, done)
            if remaining:
                unsafe[i] = remaining
            else:
                unsafe.pop(i, None)
                done.append(i)
        if len(done) == n:
            return done, unsafe


# -- rules ------------------------------------------------------------------------------------


def parse_rule(source: str, start: int, end: int,
               is_function: Callable[[str], bool] = lambda _: False) -> Rule | None:
    """The head and bodies of the rule at `source[start:end]`; None for a `default` rule or
    one this reader cannot follow (regopy still compiles and rejects what is malformed)."""
    toks = _tokens(source, start, end)
    while toks and toks[-1].kind == "newline":
        toks.pop()
    if toks and toks[-1].text == "default":
        toks.pop()  # a span runs to the next rule's name, past its `default`
    if not toks or toks[0].text == "default":
        return None
    p = _Parser(source, toks, is_function)
    line = p.line(start)
    try:
        head = p.term()
        args: list[Term] = []
        head_terms: list[Term] = []
        if head.kind == "call":
            args = head.items
        elif head.kind == "ref":
            head_terms.extend(t for t in head.items if t.kind != "scalar")
        if p.at("contains"):
            p.next()
            head_terms.append(p.infix())
        value: list[Term] = []
        if p.at(":=", "="):
            p.next()
            value = [p.infix()]
        bodies: list[tuple[Body | None, list[Term]]] = []
        body = _rule_body(p)
        bodies.append((body, head_terms + value))
        while p.at("else"):
            p.next()
            else_value: list[Term] = []
            if p.at(":=", "="):
                p.next()
                else_value = [p.infix()]
            bodies.append((_rule_body(p), else_value))
        if p.peek() is not None:
            return None
    except (ParseError, IndexError, ValueError):
        return None
    declared: set[str] = set()
    for arg in args:
        declared |= _vars(arg, closures=False, skip_sets=True, skip_object_keys=True)
    return Rule(line, toks[-1].end, args, head_terms, bodies, declared)


def _rule_body(p: _Parser) -> Body | None:
    if p.at("if"):
        p.next()
        if p.at("{"):
            brace = p.next().end
            body = p.body("}")
            p.expect("}")
            body.brace = brace
            return body
        tok = p.peek()
        if tok is None:
            raise ParseError("missing body")
        expr = p.literal()
        return Body([expr], expr.start, expr.end)
    if p.at("{"):
        brace = p.next().end
        body = p.body("}")
        p.expect("}")
        body.brace = brace
        return body
    return None


def check_rule(rule: Rule, globals_: set[str], arity: Callable[[str], int]) -> _Checker:
    checker = _Checker(arity)
    for body, head_terms in rule.bodies:
        scope = globals_ | rule.declared
        safe = set(scope)
        if body is not None:
            safe = checker.body(body, scope) | (scope - _declared(body))
        for term in head_terms:
            for v in sorted(_vars(term, closures=False) - safe):
                checker.unsafe.append(Unsafe(v, rule.line))
            for t in _walk(term):
                if t.kind == "compr":
                    checker._closure(t, safe, Expr(0, 0, rule.line, "term"))
    return checker


def _declared(body: Body) -> set[str]:
    """Variables a body declares (`:=`, `some`): they shadow rules of the same name."""
    out: set[str] = set()
    for e in body.exprs:
        if e.kind == "assign":
            out |= _vars(e.terms[0], closures=False)
        out |= e.decl
    return out


def render(source: str, bodies: list[Body]) -> str:
    """`source` with each body in OPA's order; the text after each body keeps its lines."""
    if not bodies:
        return source
    by_start = sorted(bodies, key=lambda b: b.start)

    def text(start: int, end: int) -> str:
        out: list[str] = []
        cursor = start
        for body in by_start:
            if body.start < cursor or body.end > end or body.start < start:
                continue
            out.append(source[cursor:body.start])
            out.append(body_text(body))
            cursor = body.end
        out.append(source[cursor:end])
        return "".join(out)

    def body_text(body: Body) -> str:
        assert body.order is not None
        parts = [text(body.exprs[i].start, body.exprs[i].end) for i in body.order]
        joined = "; ".join(parts)
        missing = source.count("\n", body.start, body.end) - joined.count("\n")
        return joined + "\n" * max(0, missing)

    return text(0, len(source))


def arity_table(functions: dict[str, int]) -> Callable[[str], int]:
    """Arity of a called name: a policy function (by its last segment) or a known builtin."""
    def arity(name: str) -> int:
        if name in _ARITY:
            return _ARITY[name]
        last = name.rsplit(".", 1)[-1]
        return functions.get(last, functions.get(name, -1))
    return arity


def function_arities(source: str, spans: list[tuple[str, int, int]]) -> dict[str, int]:
    """`{name: arity}` for the functions a module defines."""
    out: dict[str, int] = {}
    for _, start, end in spans:
        rule = parse_rule(source, start, end)
        if rule is None or not rule.args:
            continue
        head = source[start:end].split("(", 1)[0].strip().rsplit(".", 1)[-1]
        out[head] = len(rule.args)
    return out


def check_module(source: str, spans: list[tuple[str, int, int]], globals_: set[str],
                 arity: Callable[[str], int], is_function: Callable[[str], bool],
                 generated: Callable[[str], bool] = lambda _: False
                 ) -> tuple[str, list[Unsafe]]:
    """(source with bodies in OPA's order, unsafe variables) for one module. A `generated`
    rule (a coverage marker: a prefix of a real body) that is unsafe is blanked instead of
    reported, so that it never holds."""
    unsafe: list[Unsafe] = []
    reordered: list[Body] = []
    blanked: list[tuple[int, int]] = []
    for name, start, end in spans:
        rule = parse_rule(source, start, end, is_function)
        if rule is None:
            continue
        checker = check_rule(rule, globals_, arity)
        if generated(name) and checker.unsafe:
            blanked.append((start, end))
            continue
        unsafe.extend(checker.unsafe)
        reordered.extend(checker.reordered)
    unique = list(dict.fromkeys(unsafe))
    if unique:
        return source, unique
    for start, end in blanked:
        source = source[:start] + re.sub(r"[^\n]", " ", source[start:end]) + source[end:]
    return render(source, reordered), []


# -- regopy: function parameters inside comprehensions ---------------------------------------

_PARAM = "__ordinance_arg_"


def bind_parameters(source: str, spans: list[tuple[str, int, int]]
                    ) -> tuple[str, list[tuple[int, str]]]:
    """Work around a regopy defect: in a function, a parameter used in a ref inside a
    comprehension (`f(o, k) := [v | v := o[k]]`) is taken as a fresh variable, so the ref
    iterates every key (`[1, 2]` for `{"a": 1, "b": 2}`, "a"). Each such parameter is renamed
    in the head and bound again in the body (`f(o, __ordinance_arg_k) := [v | v := o[k]] if
    { k := __ordinance_arg_k }`), which regopy gets right; lines do not move. Returns the
    source and `(line, message)` for a function with `else` that needs it (refused)."""
    edits: list[tuple[int, int, str]] = []
    problems: list[tuple[int, str]] = []
    for _, start, end in spans:
        rule = parse_rule(source, start, end)
        if rule is None or not rule.args:
            continue
        params = {a.name: a for a in rule.args if a.kind == "var" and not a.name.startswith("_#")}
        used = _comprehension_ref_vars(rule) & set(params)
        if not used:
            continue
        if len(rule.bodies) > 1:
            problems.append((rule.line, "a function with else whose comprehension uses a "
                             f"parameter ({', '.join(sorted(used))}) in a ref: regopy takes it "
                             "as unbound there; assign it to a local variable first"))
            continue
        names = sorted(used)
        for name in names:
            arg = params[name]
            edits.append((arg.offset, arg.offset + len(name), _PARAM + name))
        binding = "; ".join(f"{n} := {_PARAM}{n}" for n in names)
        body = rule.bodies[0][0]
        if body is None:
            edits.append((rule.end, rule.end, f" if {{ {binding} }}"))
        elif body.brace is not None:
            edits.append((body.brace, body.brace, f" {binding};"))
        else:
            edits.append((body.start, body.start, f"{{ {binding}; "))
            edits.append((body.end, body.end, " }"))
    out: list[str] = []
    cursor = 0
    for a, b, text in sorted(edits):
        out.append(source[cursor:a])
        out.append(text)
        cursor = b
    out.append(source[cursor:])
    return "".join(out), problems


def _comprehension_ref_vars(rule: Rule) -> set[str]:
    """Variables used in ref subscripts inside the rule's comprehensions."""
    out: set[str] = set()
    terms: list[Term] = list(rule.head_terms)
    for body, values in rule.bodies:
        terms.extend(values)
        if body is not None:
            terms.extend(_body_terms(body))
    for term in terms:
        for t in _walk(term, closures=True):
            if t.kind == "compr":
                out |= _ref_part_vars(t)
    return out


def _body_terms(body: Body) -> list[Term]:
    terms: list[Term] = []
    for e in body.exprs:
        terms.extend(_expr_terms(e))
        if e.body is not None:
            terms.extend(_body_terms(e.body))
    return terms


def _ref_part_vars(compr: Term) -> set[str]:
    out: set[str] = set()
    terms = list(compr.items) + (_body_terms(compr.body) if compr.body else [])
    for term in terms:
        for t in _walk(term, closures=True):
            if t.kind == "ref":
                for part in t.items:
                    out |= _vars(part, closures=True)
            if t.kind == "compr" and t is not compr:
                out |= _ref_part_vars(t)
    return out
