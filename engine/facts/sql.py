"""SQL text -> statement facts, with sqlglot in the resource's dialect.

One direction only: raw text in, a list of plain dicts out (the `statements` of the input
document). Statements hidden inside others (DML in CTEs, `EXPLAIN ANALYZE <stmt>`,
`PREPARE name AS <stmt>`, `DECLARE name CURSOR FOR <query>`, `CREATE TABLE ... AS SELECT`,
the actions of `MERGE` and of `CREATE RULE`) become entries of their own with `nested: true`,
so a policy that walks `statements` sees every statement that will run. A statement inside
another that cannot be read makes the whole text unparseable.
This module never raises on bad SQL: the fact `parse_error` carries the message instead.
"""

from __future__ import annotations

import logging
import re
import threading
from itertools import pairwise
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import SqlglotError
from sqlglot.generator import Generator
from sqlglot.helper import name_sequence
from sqlglot.tokens import TokenType

from engine.facts.pg_statements import pg_statement_count

# sqlglot warns (on the root logger of its own name) whenever it falls back to exp.Command.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

DIALECTS = {
    "postgres": "postgres",
    "postgresql": "postgres",
    "cockroachdb": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
    "snowflake": "snowflake",
    "bigquery": "bigquery",
}

STATEMENT_KINDS = (
    "select", "insert", "update", "delete", "merge", "drop", "truncate", "alter", "create",
    "grant", "revoke", "copy", "call", "do", "set", "begin", "commit", "rollback", "explain",
    "other",
)

_KIND_BY_CLASS: dict[type[exp.Expr], str] = {
    exp.Select: "select",
    exp.Union: "select",
    exp.Intersect: "select",
    exp.Except: "select",
    exp.Values: "select",
    exp.Insert: "insert",
    exp.Update: "update",
    exp.Delete: "delete",
    exp.Merge: "merge",
    exp.Drop: "drop",
    exp.TruncateTable: "truncate",
    exp.Alter: "alter",
    exp.Create: "create",
    exp.Grant: "grant",
    exp.Revoke: "revoke",
    exp.Copy: "copy",
    exp.Set: "set",
    exp.Transaction: "begin",
    exp.Commit: "commit",
    exp.Rollback: "rollback",
    exp.Describe: "explain",
}

# Leading keywords for text sqlglot cannot parse into a typed statement (exp.Command) or
# misreads as an expression (`START TRANSACTION` parses as a column with an alias).
_KIND_BY_KEYWORD = {
    "call": "call", "do": "do", "explain": "explain", "begin": "begin", "start": "begin",
    "commit": "commit", "end": "commit", "rollback": "rollback", "abort": "rollback",
    "set": "set", "reset": "set", "truncate": "truncate", "drop": "drop", "alter": "alter",
    "create": "create", "grant": "grant", "revoke": "revoke", "copy": "copy",
    "select": "select", "insert": "insert", "update": "update", "delete": "delete",
    "merge": "merge", "with": "select", "table": "select", "values": "select",
}

# Statements sqlglot has no type for; they are kind "other", not parse errors.
_OTHER_STATEMENTS = frozenset({
    "listen", "unlisten", "notify", "deallocate", "discard", "vacuum", "analyze", "analyse",
    "show", "checkpoint", "cluster", "reindex", "lock", "fetch", "move", "close", "declare",
    "load", "security", "reassign", "import", "prepare", "execute", "savepoint", "release",
    "comment", "refresh", "use", "describe", "desc", "optimize", "flush", "kill", "rename",
    "handler", "replace", "install", "uninstall", "checksum", "repair", "backup", "restore",
})


class _NotAStatement(Exception):
    """Text that parsed as an expression but is no statement (`SELEC x`), or a statement
    whose parts (the query of a PREPARE, the arguments of an EXECUTE) cannot be read."""


_DML = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_NAME = r'(?:[A-Za-z_][\w$]*|"(?:[^"]|"")*")'  # an SQL name, unquoted or quoted
_S = r"(?:\s|--[^\n]*(?:\n|$)|/\*(?:[^*]|\*(?!/))*\*/)"  # white space, or a comment
_EXPLAIN_PREFIX = re.compile(
    rf"^{_S}*explain(?:{_S}+|(?=\())(?:\((?P<opts>[^)]*)\){_S}*|(?P<words>(?:(?:analyze|"
    rf"analyse|verbose|costs|buffers|settings|wal|timing|summary|format{_S}+\w+){_S}+)*))",
    re.IGNORECASE,
)
_PREPARE_PREFIX = re.compile(
    rf"^{_S}*prepare{_S}+(?P<name>{_NAME}){_S}*(?:\((?:[^()]|\([^()]*\))*\){_S}*)?"
    rf"(?<=[\s\")/])as{_S}+", re.IGNORECASE)
_EXECUTE = re.compile(rf"^{_S}*execute{_S}+(?P<name>{_NAME}){_S}*(?P<args>\(.*\))?{_S}*;?\s*$",
                      re.IGNORECASE | re.DOTALL)
_CALL = re.compile(r"^\s*call\s+(?P<call>.*?)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
# CREATE [OR REPLACE] [modifiers] <object>; the object kinds of more than one word first
_OBJECT_KIND = re.compile(
    r"^\s*(?:create|alter|drop)\s+(?:or\s+replace\s+)?(?:definer\s*=\s*\S+\s+)?"
    r"(?:(?:temp|temporary|unlogged|trusted|"
    r"procedural|constraint|default|unique|recursive|global|local)\s+)*"
    r"(?P<kind>event\s+trigger|materialized\s+view|foreign\s+(?:table|data\s+wrapper)|"
    r"text\s+search\s+\w+|user\s+mapping|access\s+method|operator\s+(?:class|family)|[a-z_]+)",
    re.IGNORECASE)
_RULE_ACTION = re.compile(r"\bdo\s+(?:also\s+|instead\s+)?(?P<action>.*?)\s*;?\s*$",
                          re.IGNORECASE | re.DOTALL)
_SESSION_AUTHORIZATION = re.compile(
    r"^\s*set\s+(?:(?:session|local)\s+)?session\s+authorization\b", re.IGNORECASE)
_SET_NAME = re.compile(rf"^\s*set\s+(?:(?:session|local)\s+)?(?P<name>time\s+zone\b|{_NAME})",
                       re.IGNORECASE)
# In `settings`, a setting whose name the statement computes (`set_config(lower('ROLE'), ...)`,
# `UPDATE pg_settings SET setting = ...`): it could be any.
UNKNOWN_SETTING = "*"
# DECLARE name [BINARY] [ASENSITIVE | INSENSITIVE] [[NO] SCROLL] CURSOR [WITH[OUT] HOLD] FOR query
_DECLARE_PREFIX = re.compile(
    rf"^{_S}*declare{_S}+{_NAME}{_S}+(?:(?:binary|asensitive|insensitive|no|scroll){_S}+)*"
    rf"cursor{_S}+(?:with(?:out)?{_S}+hold{_S}+)?for{_S}+", re.IGNORECASE)
_FIRST_WORD = re.compile(r"^\s*([A-Za-z_]+)")
_MYSQL_NAME = r"(?:[A-Za-z0-9_$]+|`(?:[^`]|``)+`)"
_MYSQL_PREPARE = re.compile(
    rf"^\s*prepare\s+(?P<name>{_MYSQL_NAME})\s+from\s+(?P<source>.+?)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL)
_MYSQL_EXECUTE = re.compile(
    rf"^\s*execute\s+(?:immediate\s+(?P<source>.+?)|(?P<name>{_MYSQL_NAME})(?:\s+using\s+"
    r"@[A-Za-z0-9_$.]+(?:\s*,\s*@[A-Za-z0-9_$.]+)*)?)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_MYSQL_STRING = re.compile(r"'((?:[^']|'')*)'", re.DOTALL)
# MySQL's REPLACE [INTO] is an INSERT that first deletes the rows it collides with; sqlglot
# does not parse it, so its facts are an INSERT's (same length, so positions stay).
_MYSQL_REPLACE = re.compile(r"(^|;)(\s*)REPLACE\b(?=\s)", re.IGNORECASE)
_MYSQL_LOAD = re.compile(r"(?:^|;)\s*load\s+(?:data|xml)\b[^;]*?\b(?P<local>local\s+)?infile\b",
                         re.IGNORECASE)
_MYSQL_INTO_FILE = re.compile(r"\binto\s+(?:outfile|dumpfile)\b", re.IGNORECASE)
_MYSQL_SONAME = re.compile(r"\bsoname\b", re.IGNORECASE)
_MYSQL_HANDLER = re.compile(r"(?:^|;)\s*handler\b", re.IGNORECASE)
_MYSQL_EXECUTABLE = re.compile(r"/\*M?!(?:[0-9]{5,6})?(?P<body>.*?)\*/", re.DOTALL)
# PostgreSQL's U&"d\0062link" is the name dblink; sqlglot keeps the escapes as they are.
_UNICODE_NAME = re.compile(r'u&"', re.IGNORECASE)
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


def dialect_for(resource_type: str | None) -> str | None:
    """The sqlglot dialect for a resource type (`postgres` -> postgres); None for generic SQL."""
    if not resource_type:
        return None
    return DIALECTS.get(resource_type.lower())


# PostgreSQL reads `$` followed by an ASCII digit as a parameter (`$1`), never as the start of
# a dollar-quoted string: a tag cannot begin with a digit. sqlglot's tokenizer takes everything
# up to the next `$` as a tag unless it is all digits or holds white space, so `($1,$2)` fails
# to tokenize (the way pgjdbc, node-postgres and psycopg send `(?,?)`, `($1,$2)`, `(%s,%s)`),
# and `$1;DROP/**/TABLE/**/t;SELECT/**/$2 ... $1;DROP/**/TABLE/**/t;SELECT/**/$3` reads as one
# string where PostgreSQL runs a DROP. A space after the parameter's digits makes sqlglot read
# a parameter, and changes nothing PostgreSQL sees as structure: `$` + digit starts no
# delimiter, so when it is not a parameter it is inside a literal, a comment or a quoted
# body (`$ab$1$ab$`), where the space lands in the content.
_PG_PARAMETER = re.compile(r"\$([0-9]+)(?=[^\s])")


# Transaction modes sqlglot cannot parse after BEGIN / START TRANSACTION (`READ ONLY`, which
# pgjdbc sends for setReadOnly(true), Spring's @Transactional(readOnly = true); any mode after
# START TRANSACTION). Only a whole statement made of PostgreSQL's modes is rewritten, to a bare
# BEGIN (the facts of a BEGIN hold no modes).
_PG_BEGIN_WITH_MODES = re.compile(
    r"(^|;)(\s*)(?:BEGIN|START)(?:\s+(?:WORK|TRANSACTION))?"
    r"(?:(?:\s*,\s*|\s+)(?:ISOLATION\s+LEVEL\s+(?:SERIALIZABLE|REPEATABLE\s+READ|"
    r"READ\s+COMMITTED|READ\s+UNCOMMITTED)|READ\s+ONLY|READ\s+WRITE|(?:NOT\s+)?DEFERRABLE))+"
    r"(?=\s*(?:;|$))",
    re.IGNORECASE)
# `COPY … TO STDOUT (FORMAT csv)`: PostgreSQL's WITH before the option list is optional, sqlglot
# needs it. Only an option list that ends the statement.
_PG_COPY_OPTIONS = re.compile(
    r"^(\s*COPY\b.*\b(?:TO\s+STDOUT|FROM\s+STDIN))(\s*\((?:[^()]|\([^()]*\))*\)\s*;?\s*)$",
    re.IGNORECASE | re.DOTALL)


_GENERATORS = threading.local()  # attribute: dialect ("" for none), value: its Generator


def sql_text(tree: exp.Expr, dialect: str | None = None) -> str:
    """`tree.sql(dialect=dialect)`, through one sqlglot Generator per thread and dialect:
    the compiled sqlglot (sqlglotc 30.x) leaks 56 bytes for every Generator it builds, and
    `Expr.sql` builds one per call, which grew a long-running process by the statement."""
    key = dialect or ""
    generator: Generator | None = getattr(_GENERATORS, key, None)
    if generator is None:
        generator = Dialect.get_or_raise(dialect).generator()
        setattr(_GENERATORS, key, generator)
    generator._next_name = name_sequence("_t")  # the names a fresh Generator would make
    return generator.generate(tree, copy=True)


def sqlglot_text(raw: str, dialect: str | None) -> str:
    """`raw` as sqlglot should read it in `dialect`. For postgres: a space after each `$n`
    (_PG_PARAMETER), BEGIN without its transaction modes, WITH before a COPY's option list.
    Only for analysis: what runs is the text as sent."""
    if dialect == "mysql":
        if "/*" in raw:
            raw = _unwrap_executable_comments(raw)
        return _MYSQL_REPLACE.sub(r"\1\2INSERT ", raw) if "eplace" in raw.lower() else raw
    if dialect != "postgres":
        return raw
    if "$" in raw:
        raw = _PG_PARAMETER.sub(r"$\1 ", raw)
    head = raw.lstrip()[:5].lower()
    if head.startswith("copy"):
        raw = _PG_COPY_OPTIONS.sub(r"\1 WITH\2", raw, count=1)
    else:
        raw = _PG_BEGIN_WITH_MODES.sub(r"\1\2BEGIN", raw)
    return raw


def parse_sql(raw: str, dialect: str | None) -> dict[str, Any]:
    """Facts for one SQL string: `statements`, `kinds`, `tables`, `parse_error`."""
    if dialect == "postgres" and _UNICODE_NAME.search(raw):
        return unparseable("names written with Unicode escapes (U&) cannot be checked")
    try:
        trees = [t for t in sqlglot.parse(sqlglot_text(raw, dialect), dialect=dialect)
                 if t is not None]
    except SqlglotError as err:
        return unparseable(_first_line(str(err)))
    except (RecursionError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        return unparseable(f"{type(err).__name__}: {err}")
    if dialect == "postgres":
        expected = pg_statement_count(raw)
        if expected is not None and expected != len(trees):
            return unparseable(f"PostgreSQL reads {expected} statement(s) in this text, "
                               f"the SQL parser {len(trees)}: it cannot be checked")
    statements: list[dict[str, Any]] = []
    try:
        for tree in trees:
            statements.extend(_statement_facts(tree, dialect, nested=False))
    except _NotAStatement as err:
        return unparseable(str(err))
    except (RecursionError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        return unparseable(f"{type(err).__name__}: {err}")  # sqlglot, on odd trees
    return _summarise(statements, parse_error=None)


def parse_mysql(raw: str) -> dict[str, Any]:
    """`parse_sql` in the mysql dialect, with what the text says of the server's files and
    code (sqlglot parses none of these statements) on its top-level statements:
    `server_file` (LOAD DATA/XML [LOCAL] INFILE, SELECT … INTO OUTFILE/DUMPFILE; `local` for
    LOCAL INFILE), `native_code` (a SONAME: UDFs and plugins), `handler` (HANDLER)."""
    facts = parse_sql(raw, "mysql")
    lowered = raw.lower()
    if not any(w in lowered for w in ("load", "outfile", "dumpfile", "soname", "handler")):
        return facts
    found: dict[str, Any] = {}
    load = _MYSQL_LOAD.search(raw)
    if load is not None or _MYSQL_INTO_FILE.search(raw):
        found["server_file"] = True
        found["local"] = load is not None and load.group("local") is not None
    if _MYSQL_SONAME.search(raw):
        found["native_code"] = True
    if _MYSQL_HANDLER.search(raw):
        found["handler"] = True
    if found:
        for statement in facts["statements"]:
            if not statement["nested"]:
                statement.update(found)
    return facts


def unparseable(message: str) -> dict[str, Any]:
    """The facts of a text that was not (or could not be) parsed: one `other` statement and
    `parse_error`."""
    return _summarise([_blank("other", nested=False)], parse_error=message or "unparseable SQL")


def _summarise(statements: list[dict[str, Any]], parse_error: str | None) -> dict[str, Any]:
    kinds: list[str] = []
    tables: list[str] = []
    for st in statements:
        if st["kind"] not in kinds:
            kinds.append(st["kind"])
        for t in st["tables"]:
            if t not in tables:
                tables.append(t)
    return {"statements": statements, "kinds": kinds, "tables": tables,
            "parse_error": parse_error}


def _first_line(message: str) -> str:
    clean = re.sub(r"\x1b\[[0-9;]*m", "", message)
    return clean.strip().splitlines()[0] if clean.strip() else "unparseable SQL"


def _blank(kind: str, nested: bool) -> dict[str, Any]:
    return {"kind": kind, "tables": [], "targets": [], "columns": [], "has_where": False,
            "has_limit": False, "limit": None, "nested": nested, "functions": [],
            "settings": []}


def _statement_facts(tree: exp.Expr, dialect: str | None,
                     nested: bool) -> list[dict[str, Any]]:
    if isinstance(tree, exp.Command):
        return _command_facts(tree, dialect, nested)
    kind = _kind_of(tree)
    if kind is None:
        # Not a statement at all: sqlglot read keywords it does not know as an expression.
        word = _FIRST_WORD.match(_COMMENT.sub(" ", sql_text(tree, dialect)))
        keyword = word.group(1).lower() if word else ""
        if keyword not in _KIND_BY_KEYWORD and keyword not in _OTHER_STATEMENTS:
            raise _NotAStatement(f"not a SQL statement: {keyword.upper() or sql_text(tree)[:40]!r}")
        return [_blank(_KIND_BY_KEYWORD.get(keyword, "other"), nested)]
    facts = _blank(kind, nested)
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    facts["tables"] = _tables(tree, ctes)
    facts["targets"] = _targets(tree, ctes)
    facts["columns"] = _columns(tree)
    facts["has_where"] = _has_where(tree)
    facts["has_limit"], facts["limit"] = _limit(tree)
    facts["functions"], facts["settings"] = _calls(tree)
    _add_kind_details(tree, facts)
    out = [facts]
    if isinstance(tree, exp.Merge):
        out.extend(_merge_actions(tree, facts))
    out.extend(_hidden_statements(tree, dialect))
    return out


def _kind_of(tree: exp.Expr) -> str | None:
    for cls in type(tree).__mro__:
        kind = _KIND_BY_CLASS.get(cls)
        if kind:
            return kind
    return None


def _add_kind_details(tree: exp.Expr, facts: dict[str, Any]) -> None:
    if isinstance(tree, exp.Copy):
        facts["direction"] = "from" if tree.args.get("kind") else "to"
        files = tree.args.get("files") or []
        target = files[0].name.lower() if files else ""
        if target in ("stdout", "stdin", "program"):
            facts["copy_target"] = target
        else:
            facts["copy_target"] = "file"
    elif isinstance(tree, exp.Create | exp.Drop | exp.Alter):
        facts["object_kind"] = str(tree.args.get("kind") or "").lower() or None
        properties = tree.args.get("properties")
        if facts["object_kind"] == "view" and properties is not None and any(
                isinstance(p, exp.MaterializedProperty) for p in properties.expressions):
            facts["object_kind"] = "materialized view"  # it stores rows, a view does not
        executed = tree.find(exp.ExecuteAsProperty)  # CREATE TABLE t AS EXECUTE name
        if isinstance(tree, exp.Create) and executed is not None:
            facts["executed_name"] = _node_name(executed.this)
    elif isinstance(tree, exp.Set):
        for item in tree.expressions:
            target = item.this.this if isinstance(item.this, exp.EQ) else None
            kind = str(item.args.get("kind") or "").upper() if target is None else ""
            if isinstance(target, exp.SessionParameter):  # MySQL @@[session.|global.]name
                target = target.this
            if kind in ("NAMES", "CHARACTER SET", "CHARSET"):  # MySQL SET NAMES x
                name = kind.lower().replace(" ", "_")
            elif isinstance(target, exp.Parameter):  # MySQL user variable @x
                name = "@" + target.name.lower()
            else:
                name = target.name.lower() if isinstance(
                    target, exp.Column | exp.Identifier | exp.Var) else UNKNOWN_SETTING
            facts["settings"].append(name)
            if name == "sql_mode" and isinstance(item.this, exp.EQ):
                _add_sql_mode(item.this.expression, facts)
    elif isinstance(tree, exp.Update) and any(
            t.rpartition(".")[2] == "pg_settings" for t in facts["targets"]):
        facts["settings"].append(UNKNOWN_SETTING)  # UPDATE pg_settings is SET
    if isinstance(tree, exp.Insert | exp.Copy):
        # the column list the statement writes, [] when it names none (all, in table order)
        facts["target_columns"] = ([ident.name.lower() for ident in tree.this.expressions]
                                   if isinstance(tree.this, exp.Schema) else [])


def _add_sql_mode(value: exp.Expr, facts: dict[str, Any]) -> None:
    """MySQL's `SET sql_mode = …`: `sql_modes`, the upper-case words of the value's string
    literals (`concat(@@sql_mode, ',STRICT_TRANS_TABLES')`, which MariaDB Connector/J sends,
    gives STRICT_TRANS_TABLES), and `sql_mode_computed` when the value is anything but string
    literals, `@@sql_mode` and CONCAT/CONCAT_WS/REPLACE of them (a variable could hold any
    mode). The fingerprint keeps no such text (its literals are facts)."""
    modes: set[str] = set(facts.get("sql_modes") or ())
    computed = bool(facts.get("sql_mode_computed"))
    for node in value.walk():
        if isinstance(node, exp.Literal) and node.is_string:
            modes.update(w.upper() for w in re.findall(r"[A-Za-z_0-9]+", node.name))
        elif isinstance(node, exp.SessionParameter):
            computed = computed or node.name.lower() != "sql_mode"
        elif isinstance(node, exp.Concat | exp.ConcatWs | exp.Replace | exp.Var | exp.Identifier
                        | exp.Literal):
            continue
        elif not isinstance(node, exp.Paren):
            computed = True
    facts["sql_modes"] = sorted(modes)
    facts["sql_mode_computed"] = computed


def _hidden_statements(tree: exp.Expr, dialect: str | None) -> list[dict[str, Any]]:
    """DML inside CTEs or subqueries, and the query of CREATE ... AS / INSERT ... SELECT."""
    hidden: list[dict[str, Any]] = []
    for node in tree.find_all(*_DML, exp.Select):
        if node is tree or isinstance(node.parent, exp.When):
            continue
        if isinstance(node, exp.Select) and not isinstance(tree, exp.Create | exp.Copy |
                                                          exp.Insert):
            continue
        if isinstance(node, exp.Select) and _has_select_ancestor(node, tree):
            continue
        hidden.extend(_statement_facts(node, dialect, nested=True)[:1])
    return hidden


def _has_select_ancestor(node: exp.Expr, root: exp.Expr) -> bool:
    parent = node.parent
    while parent is not None and parent is not root:
        if isinstance(parent, exp.Select):
            return True
        parent = parent.parent
    return False


def _command_facts(tree: exp.Command, dialect: str | None,
                   nested: bool) -> list[dict[str, Any]]:
    """Facts of a statement sqlglot has no type for, read from its text: the statement it
    holds (EXPLAIN, PREPARE, DECLARE, CREATE RULE), the name of what it prepares or executes,
    the object a CREATE / ALTER / DROP is about, the setting a SET changes, and its calls."""
    keyword = str(tree.this or "").lower()
    text = sql_text(tree, dialect)
    kind = _KIND_BY_KEYWORD.get(keyword, "other")
    facts = _blank(kind, nested)
    inner_text: str | None = None
    calls_text: str | None = None  # an expression list whose calls are the statement's
    if keyword == "explain":
        m = _EXPLAIN_PREFIX.match(text)
        opts = ((m.group("opts") or "") + " " + (m.group("words") or "")) if m else ""
        facts["analyze"] = bool(re.search(r"\banaly[sz]e\b(?!\s+(?:false|off|0)\b)",
                                          opts, re.IGNORECASE))
        inner_text = _matched_rest(_EXPLAIN_PREFIX, text, "EXPLAIN")
    elif dialect == "mysql" and keyword in ("prepare", "execute"):
        inner_text = _mysql_prepared_text(text, keyword, facts)
    elif keyword == "prepare":
        inner_text = _matched_rest(_PREPARE_PREFIX, text, "PREPARE")
        m = _PREPARE_PREFIX.match(text)
        assert m is not None
        facts["prepared_name"] = sql_name(m.group("name"))
    elif keyword == "declare":  # a cursor: its query runs when rows are FETCHed
        inner_text = _matched_rest(_DECLARE_PREFIX, text, "DECLARE ... CURSOR")
    elif keyword == "execute":
        m = _EXECUTE.match(text)
        if m is None:
            raise _NotAStatement("an EXECUTE whose name or arguments cannot be read")
        facts["executed_name"] = sql_name(m.group("name"))
        calls_text = m.group("args")
    elif keyword == "call":
        m = _CALL.match(text)
        calls_text = m.group("call") if m else text
    elif keyword in ("create", "alter", "drop"):
        m = _OBJECT_KIND.match(text)
        facts["object_kind"] = " ".join(m.group("kind").lower().split()) if m else None
        if keyword == "create" and facts["object_kind"] == "rule":
            action = _RULE_ACTION.search(text)
            if action is None:
                raise _NotAStatement("a CREATE RULE whose action cannot be read")
            if action.group("action").lower() != "nothing":
                inner_text = action.group("action")
    elif keyword == "set":
        if _SESSION_AUTHORIZATION.match(text):
            facts["settings"] = ["session_authorization"]
        else:
            m = _SET_NAME.match(text)
            name = sql_name(m.group("name")).lower() if m else UNKNOWN_SETTING
            facts["settings"] = ["timezone" if name.split() == ["time", "zone"] else name]
    out = [facts]
    if inner_text:
        inner = parse_sql(inner_text, dialect)
        if inner["parse_error"] is not None:
            raise _NotAStatement(f"the statement inside {keyword.upper()} cannot be read: "
                                 f"{inner['parse_error']}")
        for st in inner["statements"]:
            st["nested"] = True
            out.append(st)
        facts["tables"] = list(inner["tables"])
        facts["columns"] = sorted({c for st in inner["statements"] for c in st["columns"]})
        facts["functions"] = sorted({f for st in inner["statements"] for f in st["functions"]})
        facts["settings"] = sorted({n for st in inner["statements"] for n in st["settings"]})
    elif calls_text is not None:
        facts["functions"], facts["settings"] = _expression_calls(calls_text, dialect)
    elif keyword not in ("set", "reset"):
        facts["functions"] = _called_words(text, dialect)
    return out


def _mysql_prepared_text(text: str, keyword: str, facts: dict[str, Any]) -> str | None:
    """MySQL's `PREPARE name FROM 'text'` and MariaDB's `EXECUTE IMMEDIATE 'text'`: the quoted
    statement (its facts are the statement's); from a variable or an expression the text is
    known only when it runs: `prepared_from: "variable"`. `EXECUTE name [USING @v, …]`:
    `executed_name`."""
    m = _MYSQL_PREPARE.match(text) if keyword == "prepare" else _MYSQL_EXECUTE.match(text)
    if m is None:
        raise _NotAStatement(f"a {keyword.upper()} whose parts cannot be read")
    if m.group("name") is not None:
        facts["prepared_name" if keyword == "prepare" else "executed_name"] = m.group(
            "name").strip("`").lower()
    if keyword == "execute" and m.group("source") is None:
        return None
    literal = _MYSQL_STRING.fullmatch(m.group("source").strip())
    if literal is None:
        facts["prepared_from"] = "variable"
        return None
    body = literal.group(1)
    if "\\" in body:
        raise _NotAStatement(f"a {keyword.upper()} whose quoted statement has a backslash "
                             "(read by the session's sql_mode) cannot be checked")
    return body.replace("''", "'")


def _unwrap_executable_comments(raw: str) -> str:
    """MySQL's `/*! … */`, `/*!50700 … */` and MariaDB's `/*M! … */` as the SQL they hold: the
    server runs it (when its version is at least the number), sqlglot would skip a comment."""
    return _MYSQL_EXECUTABLE.sub(lambda m: " " + m.group("body") + " ", raw)


def _matched_rest(prefix: re.Pattern[str], text: str, what: str) -> str:
    m = prefix.match(text)
    if m is None:
        raise _NotAStatement(f"a {what} whose statement cannot be read")
    return text[m.end():]


def sql_name(text: str) -> str:
    """An SQL name as PostgreSQL reads it: unquoted folds to lower case, quoted is exact."""
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return text[1:-1].replace('""', '"')
    return text.lower()


def _node_name(node: exp.Expr | None) -> str:
    if isinstance(node, exp.Anonymous):
        node = node.this if isinstance(node.this, exp.Identifier) else exp.to_identifier(
            str(node.this))
    if isinstance(node, exp.Identifier):
        return node.name if node.quoted else node.name.lower()
    return str(node.name if node is not None else "").lower()


def _calls(tree: exp.Expr) -> tuple[list[str], list[str]]:
    """The lower-case names of the functions `tree` calls anywhere (subqueries, CTEs, DEFAULTs
    and table functions included; a function sqlglot knows under its sqlglot name, such as
    `substring` for `substr`; `ARRAY(SELECT …)` as `array_subquery`), and the settings its
    `set_config` calls change; both sorted."""
    functions: list[str] = []
    settings: list[str] = []
    for node in tree.find_all(exp.Func):
        name = node.name.lower() if isinstance(node, exp.Anonymous) else node.sql_name().lower()
        if isinstance(node, exp.Array) and any(
                isinstance(e, exp.Query | exp.Subquery) for e in node.expressions):
            name = "array_subquery"  # ARRAY(SELECT …) folds a query's rows into one value
        if name and name not in functions:
            functions.append(name)
        if name == "set_config" and isinstance(node, exp.Anonymous):
            first = node.expressions[0] if node.expressions else None
            setting = (first.this.lower() if isinstance(first, exp.Literal) and first.is_string
                       else UNKNOWN_SETTING)
            if setting not in settings:
                settings.append(setting)
    return sorted(functions), sorted(settings)


def _expression_calls(text: str, dialect: str | None) -> tuple[list[str], list[str]]:
    """`_calls` of an expression list written in a statement sqlglot does not parse (the
    arguments of EXECUTE, a CALL)."""
    try:
        tree = sqlglot.parse_one(f"SELECT {text}", dialect=dialect)
    except SqlglotError as err:
        raise _NotAStatement(f"arguments that cannot be read: {_first_line(str(err))}") \
            from err
    return _calls(tree)


def called_names(text: str, dialect: str | None = "postgres") -> frozenset[str] | None:
    """Every name followed by `(` in `text`, lower case (a superset of the functions it calls,
    whatever sqlglot would name them), or None when the text cannot be tokenized."""
    try:
        return frozenset(_called_words(text, dialect))
    except _NotAStatement:
        return None


def _called_words(text: str, dialect: str | None) -> list[str]:
    """Every name followed by `(` in a statement sqlglot does not parse: all it may call (and
    some names that are no function, such as a table before its column list)."""
    try:
        tokens = sqlglot.Dialect.get_or_raise(dialect).tokenize(text)
    except SqlglotError as err:
        raise _NotAStatement(f"text that cannot be read: {_first_line(str(err))}") from err
    names: list[str] = []
    for before, token in pairwise(tokens):
        if token.token_type != TokenType.L_PAREN:
            continue
        if before.token_type == TokenType.IDENTIFIER or before.text[:1].isalpha():
            name = before.text.lower()
            if name not in names:
                names.append(name)
    return sorted(names)


def _merge_actions(tree: exp.Merge, merge: dict[str, Any]) -> list[dict[str, Any]]:
    """Each WHEN action of a MERGE as the statement it is (`delete`, `update`, `insert`, on the
    MERGE's target): its WHERE is the ON condition and the WHEN's own one."""
    actions: list[dict[str, Any]] = []
    whens = tree.args.get("whens")
    for when in (whens.expressions if whens is not None else ()):
        then = when.args.get("then")
        if isinstance(then, exp.Var) and then.name.upper() == "DELETE":
            action = _blank("delete", nested=True)
        elif isinstance(then, exp.Update):
            action = _blank("update", nested=True)
        elif isinstance(then, exp.Insert):
            action = _blank("insert", nested=True)
            action["target_columns"] = ([c.name.lower() for c in then.this.expressions]
                                        if isinstance(then.this, exp.Tuple) else [])
        else:
            continue  # DO NOTHING
        action["tables"] = list(merge["targets"])
        action["targets"] = list(merge["targets"])
        if isinstance(then, exp.Expression) and not isinstance(then, exp.Var):
            action["columns"] = _columns(then)
            action["functions"], action["settings"] = _calls(then)
        action["has_where"] = action["kind"] != "insert" and (
            merge["has_where"] or _filters_target(tree, when.args.get("condition")))
        actions.append(action)
    return actions


def _filters_target(tree: exp.Merge, condition: exp.Expr | None) -> bool:
    """Whether a MERGE condition reads a column of the target, qualified by its name or alias
    (an unqualified column may be the source's, which filters no target row)."""
    if condition is None:
        return False
    target = tree.this
    names = {target.name.lower(), target.alias_or_name.lower()} if isinstance(
        target, exp.Table) else set()
    return any(column.table.lower() in names for column in condition.find_all(exp.Column))


def _table_name(table: exp.Table) -> str:
    parts = [p for p in (table.catalog, table.db, table.name) if p]
    return ".".join(parts).lower()


def _tables(tree: exp.Expr, ctes: set[str]) -> list[str]:
    names: list[str] = []
    for table in tree.find_all(exp.Table):
        if not table.name:
            continue
        name = _table_name(table)
        if name in ctes and not table.db:
            continue
        if name not in names:
            names.append(name)
    return names


def _targets(tree: exp.Expr, ctes: set[str]) -> list[str]:
    """Tables the statement writes or changes (the object of DML and DDL)."""
    into = tree.args.get("into") if isinstance(tree, exp.Select) else None
    if isinstance(into, exp.Into) and isinstance(into.this, exp.Table) and into.this.name:
        return [_table_name(into.this)]  # SELECT ... INTO t creates and fills t
    target = tree.this if isinstance(tree, exp.Expression) else None
    if isinstance(tree, exp.Insert | exp.Create | exp.Copy) and isinstance(target, exp.Schema):
        target = target.this
    if isinstance(tree, exp.TruncateTable | exp.Grant | exp.Revoke | exp.Drop):
        return [_table_name(t) for t in tree.find_all(exp.Table) if t.name]
    if isinstance(tree, exp.Copy) and not tree.args.get("kind"):
        return []
    if isinstance(target, exp.Index):
        target = target.args.get("table")
    if isinstance(target, exp.Table) and target.name:
        name = _table_name(target)
        return [] if name in ctes else [name]
    return []


def _columns(tree: exp.Expr) -> list[str]:
    names: list[str] = []
    for node in tree.find_all(exp.Column, exp.Star):
        name = "*" if isinstance(node, exp.Star) else node.name.lower()
        if isinstance(node, exp.Column) and isinstance(node.this, exp.Star):
            name = "*"
        if name and name not in names:
            names.append(name)
    if isinstance(tree, exp.Insert | exp.Copy) and isinstance(tree.this, exp.Schema):
        for ident in tree.this.expressions:
            name = ident.name.lower()
            if name and name not in names:
                names.append(name)
    return names


def _has_where(tree: exp.Expr) -> bool:
    if isinstance(tree, exp.SetOperation):
        return _has_where(tree.left) and _has_where(tree.right)
    if isinstance(tree, exp.Copy):
        inner = tree.this.this if isinstance(tree.this, exp.Subquery) else None
        return bool(inner is not None and _has_where(inner))
    if isinstance(tree, exp.Merge):
        return _filters_target(tree, tree.args.get("on"))
    # A WHERE that reads no column (`WHERE true`, `WHERE 1 = 1`, `WHERE $1`) keeps every row
    # or none: it filters nothing, and is no WHERE for the rules that ask for one.
    where = tree.args.get("where")
    return where is not None and where.find(exp.Column) is not None


def _limit(tree: exp.Expr) -> tuple[bool, int | None]:
    if isinstance(tree, exp.Copy):
        inner = tree.this.this if isinstance(tree.this, exp.Subquery) else None
        return _limit(inner) if inner is not None else (False, None)
    node = tree.args.get("limit")
    if node is None and isinstance(tree, exp.SetOperation):
        left, right = _limit(tree.left), _limit(tree.right)
        if left[0] and right[0]:
            both = [v for v in (left[1], right[1]) if v is not None]
            total = sum(both) if len(both) == 2 else None
            return True, total
        return False, None
    if node is None:
        return False, None
    value = node.args.get("count") if isinstance(node, exp.Fetch) else node.expression
    if isinstance(value, exp.Var) and value.name.lower() == "all":
        return False, None
    if isinstance(value, exp.Literal) and not value.is_string:
        try:
            return True, int(value.this)
        except ValueError:
            return True, None
    return True, None
