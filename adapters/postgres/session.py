"""The statement flow of one proxied connection, as pure bookkeeping (sans-IO).

Owns: what the proxy must decide before a client message may go upstream
(`statement_text`), what it sends upstream instead (`client_message`), and how each server
message is matched to the client message it answers (`server_frame`), so that result
rewriting knows which statement a DataRow belongs to and a denial appears exactly where the
server would have put an error. Must not: do I/O, call the decide hook (the proxy loop does
and hands the verdict in), or contain policy.

How a denial works. The denied message is replaced by a *poison* message of the same kind
that fails at that exact point of the stream: `Describe` of a statement name nobody can know
for a Parse or Bind, `EXECUTE` of that name for a simple Query, a call of function OID 0 for a
FunctionCall. The server's error is then replaced by the 42501 denial. So the server itself
keeps the protocol consistent: in the extended protocol it discards everything up to Sync (a
Query or FunctionCall that arrives while it does is ignored, and gets no ReadyForQuery of its
own, as without the proxy), a transaction block becomes failed (`E`) exactly as after
PostgreSQL's own "permission denied", and pipelined responses stay in order. The proxy also
drops the client's messages after a denied Parse/Bind until Sync, so nothing of the denied
batch ever reaches the server. The denials the proxy makes itself (a FunctionCall, a Bind of a
statement it never saw prepared) are `refusal`s: the caller has them recorded like a policy's
and hands the verdict in.

Server state (prepared statements, portals) is mirrored from the *responses* (ParseComplete,
BindComplete, ...), never from what was sent, so a failed Parse or Bind cannot make the proxy
apply the wrong masks.

How a statement is ended mid-result (a row budget's hold that was not approved). `cut` drops
what the server still sends for it, and for the rest of its Query or batch, up to the next
ReadyForQuery, and puts the hold's error where its end (or the server's error after the
cancel) was. If the server had finished it inside a transaction block, the session fails the
block on the server too (a hidden poison Describe and Sync, handed out in `upstream`).

How an outcome is recorded. When the verdict of the statement a server message ends (a
CommandComplete, EmptyQueryResponse, PortalSuspended or ErrorResponse of a Query, an Execute,
or a failed Parse / Bind) has an `on_complete` hook, `server_frame` does not put that message
in `out` but returns a `Completion` holding it: the proxy relays what came before, awaits the
hook (the audit record), and only then relays the held bytes. Notices a rewriter has for the
client (a column sent as NULL, and why) are put in `out` before the row that caused them.
"""

from __future__ import annotations

import re
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from adapters.enforcement.hooks import CompletionHook, RowLimit, StatementOutcome, StatementVerdict
from adapters.postgres.codec import Frame, decode_backend
from adapters.postgres.descriptors import ColumnDescriptor
from adapters.postgres.messages import (
    Bind,
    Close,
    CopyData,
    CopyDone,
    CopyFail,
    CopyOutResponse,
    Describe,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    FrontendMessage,
    FunctionCall,
    NoticeResponse,
    ParameterStatus,
    Parse,
    Query,
    RowDescription,
    Sync,
)
from adapters.postgres.results import (
    CopyOutRewriter,
    RewriteError,
    RowRewriter,
    describe_fields,
    plan_columns,
)

SUPPORTED_CLIENT_ENCODINGS = frozenset({"UTF8", "UNICODE", "SQL_ASCII"})
_HEADER = struct.Struct("!cI")
_U32 = struct.Struct("!I")


class SessionError(Exception):
    """The conversation cannot go on safely (desynchronised server, unsupported setting); the
    proxy ends the session with this message and SQLSTATE `code`."""

    def __init__(self, message: str, code: str = "08P01") -> None:
        super().__init__(message)
        self.code = code


def denial_error(verdict: StatementVerdict) -> ErrorResponse:
    """The ErrorResponse a client gets for a denied (or held) statement: SQLSTATE 42501, or the
    verdict's own `sqlstate` and message (57014 for a cancelled hold)."""
    reasons = verdict.message or "no reason given"
    if verdict.sqlstate != "42501":
        message = reasons
    elif verdict.effect == "review":
        message = f"statement requires approval: {reasons}"
    else:
        message = f"permission denied by policy: {reasons}"
    detail = [f"decision id: {verdict.decision_id}"] if verdict.decision_id else []
    if verdict.detail:
        detail.append(verdict.detail)
    return ErrorResponse.build(verdict.sqlstate, message, detail="\n".join(detail) or None)


@dataclass(frozen=True)
class Completion:
    """The end of one statement's result, held back until `hook(outcome)` has returned;
    `frames` are then what the client gets (in order)."""

    hook: CompletionHook
    outcome: StatementOutcome
    frames: list[bytes]


_ROW_COUNT_TAGS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH",
                             "MOVE"})


def tag_rows(tag: str) -> int | None:
    """The row count of a CommandComplete tag (`INSERT 0 5` -> 5), None when it has none."""
    words = tag.split()
    if len(words) >= 2 and words[0] in _ROW_COUNT_TAGS and words[-1].isdigit():
        return int(words[-1])
    return None


def notice_frame(text: str) -> bytes:
    return NoticeResponse.build("01000", text).encode()


_QUOTED = re.compile(r'"(?:[^"]|"")*"')
WITHHELD_VALUE = "[REDACTED]"
WITHHELD_DETAIL = "withheld by the Ordinance proxy: it may quote values of masked columns"

FUNCTION_CALL_DENIED = "the FunctionCall protocol message is not allowed through the proxy"
UNKNOWN_STATEMENT_DENIED = "statement {name!r} was not prepared through this proxy session"


@dataclass(frozen=True)
class Refusal:
    """A client message the proxy denies itself (no policy is asked): `text` says what it was
    (for the statement record), `reason` why."""

    text: str
    reason: str


# Operation kinds: one per client message the server answers.
QUERY, FUNCTION, PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC = range(8)
_NAMES = ["Query", "FunctionCall", "Parse", "Bind", "Describe", "Execute", "Close", "Sync"]


@dataclass(eq=False, slots=True)
class _Op:
    kind: int
    seq: int = 0
    name: str = ""
    statement: str = ""
    describe_kind: str = ""
    bind: Bind | None = None
    verdict: StatementVerdict | None = None
    deny: ErrorResponse | None = None  # a poison op: the server's error becomes this
    hidden: bool = False  # injected by the proxy; its responses are not relayed
    rows: RowRewriter | None = None
    rows_planned: bool = False
    sent: float = 0.0  # clock() when it went upstream
    meter: RowLimit | None = None  # a Query's row budget


@dataclass(eq=False, slots=True)
class _Statement:
    verdict: StatementVerdict
    fields: tuple[FieldDescription, ...] | None = None  # from Describe S; () means NoData


@dataclass(eq=False, slots=True)
class _Portal:
    statement: _Statement | None
    bind: Bind
    fields: tuple[FieldDescription, ...] | None = None  # from Describe P (real formats)
    columns: tuple[ColumnDescriptor, ...] = ()  # the descriptors of `fields`
    rows: RowRewriter | None = None
    rows_planned: bool = False
    decided: StatementVerdict | None = None  # this execution's own verdict (decided at Bind)
    meter: RowLimit | None = None  # the row budget of its executions

    @property
    def verdict(self) -> StatementVerdict | None:
        if self.decided is not None:
            return self.decided
        return self.statement.verdict if self.statement is not None else None


@dataclass(eq=False, slots=True)
class _Sent:
    """What the client side knows when it sends: used to inject Describe, refuse Binds of
    statements that never went through the proxy, and have each execution of a statement
    whose verdict covers one (`single_execution`) decided again at its Bind."""

    verdict: StatementVerdict | None
    described: bool = False
    sql: str = ""
    executions: int = 0  # Binds of the statement so far


@dataclass
class Session:
    """Bookkeeping of one client session. `max_copy_record` bounds a buffered COPY record."""

    max_copy_record: int = 64 * 1024 * 1024
    clock: Callable[[], float] = time.monotonic
    # The text backstop for what the server says outside result rows: every field of an
    # ErrorResponse or NoticeResponse and a NotificationResponse's channel and payload (a
    # cast error quotes the value, `RAISE NOTICE` and `pg_notify` print anything).
    scrub_text: Callable[[bytes], bytes] | None = None
    poison_name: str = field(
        default_factory=lambda: f"ordinance.denied.{secrets.token_hex(16)}")
    transaction_status: str = "I"
    _ops: deque[_Op] = field(default_factory=deque)
    _discarding: bool = False
    _skip_until_sync: bool = False
    _statements: dict[str, _Statement] = field(default_factory=dict)
    _portals: dict[str, _Portal] = field(default_factory=dict)
    _sent_statements: dict[str, _Sent] = field(default_factory=dict)
    _sent_portals: dict[str, _Sent] = field(default_factory=dict)
    _query_rows: RowRewriter | None = None
    _copy: CopyOutRewriter | None = None
    _seq: int = 0
    _copy_end_seqs: deque[int] = field(default_factory=lambda: deque(maxlen=1024))
    _copy_in_open: bool = False
    _cutting: bool = False  # a statement ended by the proxy: drop what the server still sends
    _cut_error: bytes | None = None  # its error, sent in place of its end
    upstream: list[bytes] = field(default_factory=list)  # for the server, from server_frame

    @property
    def in_flight(self) -> bool:
        """Whether the server still owes answers (a query may be running)."""
        return bool(self._ops)

    def _push(self, op: _Op) -> None:
        self._seq += 1
        op.seq = self._seq
        if op.kind in (QUERY, EXECUTE, PARSE):
            op.sent = self.clock()
        self._ops.append(op)

    # ----------------------------------------------------------------------------------------
    # Client -> server

    def statement_text(self, message: FrontendMessage) -> str | None:
        """The SQL the decide hook must judge before `message` may go upstream, else None: a
        Query's, a Parse's, and the statement's for a Bind that executes again a statement
        whose verdict covered one execution (an approval is for one execution)."""
        if self._discarding:
            return None
        if isinstance(message, Query):
            return message.sql
        if isinstance(message, Parse):
            return message.query
        if isinstance(message, Bind):
            sent = self._sent_statements.get(message.statement)
            if (sent is not None and sent.executions and sent.verdict is not None
                    and sent.verdict.single_execution):
                return sent.sql
        return None

    def refusal(self, message: FrontendMessage, *,
                allow_function_call: bool = False) -> Refusal | None:
        """The proxy's own denial of `message`, if it has one: the caller records it and hands
        the denial's verdict to `client_message`."""
        if self._discarding:
            return None
        if isinstance(message, FunctionCall) and not allow_function_call:
            return Refusal(f"FunctionCall of function OID {message.function_oid}",
                           FUNCTION_CALL_DENIED)
        if isinstance(message, Bind) and message.statement not in self._sent_statements:
            return Refusal(f"Bind of prepared statement {message.statement!r}",
                           UNKNOWN_STATEMENT_DENIED.format(name=message.statement))
        return None

    def client_message(self, frame: Frame, message: FrontendMessage,
                       verdict: StatementVerdict | None = None, *,
                       allow_function_call: bool = False) -> list[bytes]:
        """What to send upstream for one client message (possibly nothing). `verdict` is the
        decide hook's answer when `statement_text` asked for one."""
        if self._discarding:
            if isinstance(message, Sync):
                self._discarding = False
                self._sync()
                return [frame.raw]
            return []
        if isinstance(message, Query):
            return self._query(frame, message, _need(verdict))
        if isinstance(message, Parse):
            return self._parse(frame, message, _need(verdict))
        if isinstance(message, Bind):
            return self._bind(frame, message, verdict)
        if isinstance(message, Execute):
            return self._execute(frame, message)
        if isinstance(message, Describe):
            self._push(_Op(DESCRIBE, name=message.name, describe_kind=message.kind))
            sent = (self._sent_statements if message.kind == "S"
                    else self._sent_portals).get(message.name)
            if sent is not None:
                sent.described = True
            return [frame.raw]
        if isinstance(message, Close):
            self._push(_Op(CLOSE, name=message.name, describe_kind=message.kind))
            (self._sent_statements if message.kind == "S" else self._sent_portals).pop(
                message.name, None)
            return [frame.raw]
        if isinstance(message, Sync):
            self._sync()
            return [frame.raw]
        if isinstance(message, FunctionCall):
            if not allow_function_call:
                return self._deny_as_query(verdict or StatementVerdict.deny(
                    FUNCTION_CALL_DENIED), function_call=True)
            self._push(_Op(FUNCTION))
            return [frame.raw]
        if isinstance(message, CopyDone | CopyFail):
            self._seq += 1
            if self._copy_in_open:
                self._copy_in_open = False
            else:
                self._copy_end_seqs.append(self._seq)
            return [frame.raw]
        if isinstance(message, Flush | CopyData):
            return [frame.raw]  # no answer of their own
        raise SessionError(f"unexpected {type(message).__name__} message from the client")

    def _sync(self) -> None:
        # A server in COPY FROM STDIN mode ignores Sync (libpq sends another after CopyDone).
        if not self._copy_in_open:
            self._push(_Op(SYNC))

    def _poison(self) -> bytes:
        return Describe("S", self.poison_name).encode()

    def _deny_as_query(self, verdict: StatementVerdict, *,
                       function_call: bool = False) -> list[bytes]:
        """A denied simple Query or FunctionCall: a poison one of the same kind, which the
        server answers with an error and ReadyForQuery (or ignores, with the rest of a failed
        extended-protocol batch)."""
        error = denial_error(verdict)
        if function_call:
            self._push(_Op(FUNCTION, deny=error))
            return [FunctionCall(0).encode()]  # "function with OID 0 does not exist"
        self._push(_Op(QUERY, deny=error))
        return [Query(f'EXECUTE "{self.poison_name}"').encode()]

    def _deny_in_batch(self, error: ErrorResponse) -> list[bytes]:
        """A denied Parse/Bind: error at this point of the batch, then discard until Sync."""
        self._push(_Op(DESCRIBE, describe_kind="S", deny=error))
        self._discarding = True
        return [self._poison()]

    def _query(self, frame: Frame, message: Query, verdict: StatementVerdict) -> list[bytes]:
        # A simple query destroys the unnamed statement and portal, whatever it does.
        self._sent_statements.pop("", None)
        self._sent_portals.pop("", None)
        if verdict.effect != "allow":
            return self._deny_as_query(verdict)
        self._push(_Op(QUERY, verdict=verdict,
                       meter=verdict.rows() if verdict.rows is not None else None))
        if verdict.rewritten is not None:
            return [Query(verdict.rewritten).encode()]
        return [frame.raw]

    def _parse(self, frame: Frame, message: Parse, verdict: StatementVerdict) -> list[bytes]:
        if verdict.effect != "allow":
            if message.name == "":
                self._sent_statements.pop("", None)
            return self._deny_in_batch(denial_error(verdict))
        self._sent_statements[message.name] = _Sent(verdict, sql=message.query)
        self._push(_Op(PARSE, name=message.name, verdict=verdict))
        if verdict.rewritten is not None:
            return [Parse(message.name, verdict.rewritten, message.param_types).encode()]
        return [frame.raw]

    def _bind(self, frame: Frame, message: Bind,
              verdict: StatementVerdict | None) -> list[bytes]:
        sent = self._sent_statements.get(message.statement)
        if sent is None:
            return self._deny_in_batch(denial_error(verdict or StatementVerdict.deny(
                UNKNOWN_STATEMENT_DENIED.format(name=message.statement))))
        if verdict is not None and verdict.effect != "allow":  # decided again, and denied
            return self._deny_in_batch(denial_error(verdict))
        sent.executions += 1
        self._sent_portals[message.portal] = _Sent(verdict or sent.verdict,
                                                   described=sent.described)
        self._push(_Op(BIND, name=message.portal, statement=message.statement,
                       bind=message, verdict=verdict))
        return [frame.raw]

    def _execute(self, frame: Frame, message: Execute) -> list[bytes]:
        out: list[bytes] = []
        sent = self._sent_portals.get(message.portal)
        if (sent is not None and not sent.described and sent.verdict is not None
                and sent.verdict.masker is not None):
            # A masked result whose columns the client never asked about: ask ourselves.
            self._push(_Op(DESCRIBE, name=message.portal, describe_kind="P", hidden=True))
            out.append(Describe("P", message.portal).encode())
            sent.described = True
        self._push(_Op(EXECUTE, name=message.portal))
        out.append(frame.raw)
        return out

    # ----------------------------------------------------------------------------------------
    # Server -> client

    def row_limit(self) -> RowLimit | None:
        """The row budget of the DataRows arriving now while it limits them (not released),
        else None. The caller then relays at most `room()` of them with `relay_run`."""
        if self._skip_until_sync or self._cutting or not self._ops:
            return None
        op = self._ops[0]
        meter = op.meter
        if op.kind == EXECUTE:
            portal = self._portals.get(op.name)
            meter = portal.meter if portal is not None else None
        return meter if meter is not None and not meter.released else None

    def relay_run(self, run: bytes, out: list[bytes]) -> None:
        """Relay a run of DataRows (`BackendDecoder.next_counted_run`) as `server_frame` would
        relay each of them: raw, or rewritten by the planned rewriter."""
        rows = self._rows_for_data(out)
        if rows is None or (rows.precheck is not None and not rows.precheck(run)):
            out.append(run)
        else:
            self.rewrite_run(run, out)

    def cut(self, error: ErrorResponse) -> None:
        """End the statement whose results arrive now with `error`: what the server still
        sends for it (and for the rest of its Query, or up to Sync) is dropped, its end
        (CommandComplete, PortalSuspended, the server's error after a cancel) becomes `error`,
        and the next ReadyForQuery goes to the client as usual."""
        self._cutting = True
        self._cut_error = error.encode()
        self._query_rows = None
        self._copy = None

    @property
    def cutting(self) -> bool:
        return self._cutting

    def _cut_frame(self, frame: Frame, out: list[bytes]) -> bool:
        """During a cut: whether `frame` was consumed here (dropped, or its end replaced)."""
        kind = frame.type
        if kind in (b"N", b"A", b"S"):
            return False
        if kind in (b"Z", b"C", b"E", b"s", b"I") and self._cut_error is not None:
            out.append(self._cut_error)
            self._cut_error = None
        if kind == b"Z":
            if frame.raw[5:6] == b"T" and self._fail_block(frame):
                return True
            self._cutting = False
            return False
        if kind == b"E":
            error = decode_backend(frame)
            if isinstance(error, ErrorResponse) and error.severity in ("FATAL", "PANIC"):
                return False
        return True

    def _fail_block(self, ready: Frame) -> bool:
        """A cut statement had finished on the server inside a transaction block, which the
        client now believes failed: fail it on the server too (the poison and a Sync, sent
        through `upstream`), and let that ReadyForQuery (`E`) be the client's. Only when
        nothing else is pending upstream (else the client's later messages would run first)."""
        ends = [i for i, op in enumerate(self._ops) if op.kind in (QUERY, FUNCTION, SYNC)]
        if not ends or ends[0] != len(self._ops) - 1:
            return False
        self._on_ready(ready, [])
        self._push(_Op(DESCRIBE, describe_kind="S", hidden=True))
        self._push(_Op(SYNC))
        self.upstream.extend((self._poison(), Sync().encode()))
        return True

    def rows_pass_through(self) -> bool:
        """Whether DataRows arriving now go to the client unchanged, so the caller may relay a
        whole run of them raw (`BackendDecoder.next_run`) without calling `server_frame`."""
        if self._skip_until_sync or self._cutting or not self._ops:
            return False
        op = self._ops[0]
        if op.kind == QUERY:
            return self._query_rows is None
        return op.kind == EXECUTE and op.rows_planned and op.rows is None

    def rows_rewriter(self) -> RowRewriter | None:
        """The rewriter of the DataRows arriving now, when they are rewritten and it is planned
        (then the caller may hand whole runs of them to `rewrite_run`); else None."""
        if self._skip_until_sync or self._cutting or not self._ops:
            return None
        op = self._ops[0]
        if op.kind == QUERY:
            return self._query_rows
        if op.kind == EXECUTE and op.rows_planned:
            return op.rows
        return None

    def rewrite_run(self, run: bytes, out: list[bytes]) -> None:
        """Rewrite a run of DataRow messages (`BackendDecoder.next_run`) with the planned
        `rows_rewriter()`: unchanged rows are relayed as slices of the run."""
        rows = self.rows_rewriter()
        if rows is None:
            raise SessionError("a run of DataRows arrived without a planned rewriter")
        fast = rows.rewrite_run(run)
        if fast is not None:
            if rows.notices:
                out.extend(notice_frame(n) for n in rows.take_notices())
            out.append(fast)
            return
        clean = pos = 0
        size = len(run)
        unpack = _U32.unpack_from
        while pos < size:
            (length,) = unpack(run, pos + 1)
            stop = pos + 1 + length
            body = run[pos + 5:stop]
            new = rows.rewrite(body)
            if new is not body:
                if clean < pos:
                    out.append(run[clean:pos])
                if rows.notices:
                    out.extend(notice_frame(n) for n in rows.take_notices())
                out.append(_frame(b"D", new))
                clean = stop
            pos = stop
        if clean == 0:
            out.append(run)
        elif clean < size:
            out.append(run[clean:])

    def relay_copy_run(self, run: bytes, out: list[bytes]) -> None:
        """Relay a run of CopyData messages (`BackendDecoder.next_run`) as `server_frame`
        would relay each of them: the run whole when nothing in it is rewritten (no COPY
        rewriter, or a scan that finds nothing: `CopyOutRewriter.run_clean`), else message by
        message through the rewriter."""
        copy = self._copy
        if self._cutting:
            raise SessionError("a run of CopyData arrived during a cut")
        if copy is None or copy.run_clean(run):
            out.append(run)
            return
        pos, size = 0, len(run)
        unpack = _U32.unpack_from
        while pos < size:
            (length,) = unpack(run, pos + 1)
            stop = pos + 1 + length
            self._copy_data(run[pos + 5:stop], run[pos:stop], out)
            pos = stop

    def _copy_data(self, body: bytes, raw: bytes, out: list[bytes]) -> None:
        """One CopyData from the server (`raw`, its data `body`), rewritten if a COPY
        rewriter is set."""
        copy = self._copy
        if copy is None:
            out.append(raw)
            return
        data = copy.feed(body)
        if copy.notices:
            out.extend(notice_frame(n) for n in copy.take_notices())
        if data is body:
            out.append(raw)
        elif data:
            out.append(_frame(b"d", data))

    def description_verdict(self) -> StatementVerdict | None:
        """The verdict whose masker will see the RowDescription arriving now, if any (so the
        caller can await its `resolve_columns` first)."""
        if self._skip_until_sync or not self._ops:
            return None
        op = self._ops[0]
        if op.deny is not None:
            return None
        if op.kind == QUERY:
            return op.verdict
        if op.kind != DESCRIBE:
            return None
        return self._described_verdict(op)

    def server_frame(self, frame: Frame, out: list[bytes]) -> Completion | None:
        """Append to `out` what the client gets for one server message (maybe nothing), or,
        when the message ends a statement whose verdict wants to record the outcome, return
        it held in a `Completion` (see the module docstring)."""
        kind = frame.type
        if self._cutting and self._cut_frame(frame, out):
            return None
        if kind == b"D":
            rows = self._rows_for_data(out)
            if rows is None:
                out.append(frame.raw)
                return None
            body = frame.body
            new = rows.rewrite(body)
            if rows.notices:
                out.extend(notice_frame(n) for n in rows.take_notices())
            out.append(frame.raw if new is body else _frame(b"D", new))
            return None
        if kind == b"d":
            self._copy_data(frame.body, frame.raw, out)
            return None
        if kind in (b"N", b"A"):
            out.append(self._scrubbed(frame.raw))
            return None
        if kind == b"S":
            message = decode_backend(frame)
            assert isinstance(message, ParameterStatus)
            if (message.name == "client_encoding"
                    and message.value.upper() not in SUPPORTED_CLIENT_ENCODINGS):
                raise SessionError(f"client_encoding {message.value} is not supported by the "
                                   "proxy (use UTF8)", "0A000")
            out.append(frame.raw)
            return None
        if self._skip_until_sync:
            while self._ops and self._ops[0].kind != SYNC:
                self._ops.popleft()
        handler = _HANDLERS.get(kind)
        if handler is None:
            if kind in (b"K", b"v"):
                return None  # start-up messages have no business here; never leak upstream keys
            if kind == b"R":
                raise SessionError("server asked for authentication in the middle of a session")
            out.append(frame.raw)  # a message type from the future: relay
            return None
        verdict = self._ending_verdict(kind) if kind in _ENDINGS else None
        if kind == b"E" and verdict is not None and verdict.withhold_error_values:
            frame = _error_values_withheld(frame)
        hook = verdict.on_complete if verdict is not None else None
        if hook is None:
            handler(self, frame, out)
            return None
        outcome = self._outcome(frame)
        held: list[bytes] = []
        handler(self, frame, held)
        return Completion(hook, outcome, held)

    def _ending_verdict(self, kind: bytes) -> StatementVerdict | None:
        """The verdict of the allowed statement that a CommandComplete / EmptyQueryResponse /
        PortalSuspended / ErrorResponse arriving now ends (`_ENDINGS`), if any."""
        if not self._ops:
            return None
        op = self._ops[0]
        if op.deny is not None or op.hidden:
            return None
        verdict: StatementVerdict | None = None
        if op.kind == QUERY:
            verdict = op.verdict
        elif op.kind == EXECUTE:
            portal = self._portals.get(op.name)
            if portal is not None:
                verdict = portal.verdict
        elif op.kind == PARSE and kind == b"E":
            verdict = op.verdict
        elif op.kind == BIND and kind == b"E":
            statement = self._statements.get(op.statement)
            verdict = op.verdict or (statement.verdict if statement is not None else None)
        return verdict

    def _outcome(self, frame: Frame) -> StatementOutcome:
        op = self._ops[0]
        duration = max(0.0, self.clock() - op.sent) if op.sent else 0.0
        if frame.type == b"C":
            tag = frame.body.rstrip(b"\x00").decode("utf-8", "replace")
            return StatementOutcome(tag, tag_rows(tag), duration)
        if frame.type == b"E":
            error = decode_backend(frame)
            assert isinstance(error, ErrorResponse)
            return StatementOutcome("", None, duration, error_code=error.code,
                                    error_message=error.message)
        return StatementOutcome("", None, duration, suspended=frame.type == b"s")

    def _head(self, what: str, *kinds: int) -> _Op:
        if not self._ops:
            raise SessionError(f"server sent {what} but no answer was pending")
        op = self._ops[0]
        if op.kind not in kinds:
            raise SessionError(f"server sent {what} while {_NAMES[op.kind]} was pending")
        return op

    def _on_error(self, frame: Frame, out: list[bytes]) -> None:
        self._copy = None
        self._query_rows = None
        self._copy_in_open = False  # an error ends COPY FROM STDIN on the server
        if not self._ops:
            out.append(self._scrubbed(frame.raw))  # e.g. FATAL on shutdown
            return
        op = self._ops[0]
        replace = op.deny is not None
        if replace:
            error = decode_backend(frame)
            replace = isinstance(error, ErrorResponse) and error.severity == "ERROR"
        if replace and op.deny is not None:
            out.append(op.deny.encode())
        else:
            out.append(self._scrubbed(frame.raw))
        if op.kind in (QUERY, FUNCTION, SYNC):
            return  # simple query: ReadyForQuery follows
        self._ops.popleft()
        self._skip_until_sync = True

    def _scrubbed(self, raw: bytes) -> bytes:
        """An ErrorResponse / NoticeResponse / NotificationResponse with `scrub_text` applied
        to each of its strings."""
        if self.scrub_text is None:
            return raw
        kind, body = raw[:1], raw[5:]
        if kind == b"A":
            head, strings = body[:4], body[4:]
        else:
            head, strings = b"", body
        parts = strings.split(b"\x00")
        if kind == b"A":
            new = [self.scrub_text(p) for p in parts]
        else:  # each field is its one-byte code, then the text
            new = [p[:1] + self.scrub_text(p[1:]) if len(p) > 1 else p for p in parts]
        if new == parts:
            return raw
        return _frame(kind, head + b"\x00".join(new))

    def _on_ready(self, frame: Frame, out: list[bytes]) -> None:
        self._skip_until_sync = False
        self._copy_in_open = False
        self._copy = None
        self._query_rows = None
        while self._ops:
            op = self._ops.popleft()
            if op.kind == QUERY:
                self._statements.pop("", None)
                self._portals.pop("", None)
            if op.kind in (QUERY, FUNCTION, SYNC):
                break
        status = frame.raw[5:6].decode("latin-1")
        self.transaction_status = status
        if status == "I":
            self._portals.clear()  # portals do not outlive their transaction
        out.append(frame.raw)

    def _on_parse_complete(self, frame: Frame, out: list[bytes]) -> None:
        op = self._head("ParseComplete", PARSE)
        self._ops.popleft()
        assert op.verdict is not None
        self._statements[op.name] = _Statement(op.verdict)
        out.append(frame.raw)

    def _on_bind_complete(self, frame: Frame, out: list[bytes]) -> None:
        op = self._head("BindComplete", BIND)
        self._ops.popleft()
        assert op.bind is not None
        portal = _Portal(self._statements.get(op.statement), op.bind, decided=op.verdict)
        verdict = portal.verdict
        portal.meter = verdict.rows() if verdict is not None and verdict.rows is not None \
            else None
        self._portals[op.name] = portal
        out.append(frame.raw)

    def _on_close_complete(self, frame: Frame, out: list[bytes]) -> None:
        op = self._head("CloseComplete", CLOSE)
        self._ops.popleft()
        (self._statements if op.describe_kind == "S" else self._portals).pop(op.name, None)
        out.append(frame.raw)

    def _on_parameter_description(self, frame: Frame, out: list[bytes]) -> None:
        op = self._head("ParameterDescription", DESCRIBE)
        if not op.hidden and op.deny is None:
            out.append(frame.raw)

    def _on_description(self, frame: Frame, out: list[bytes]) -> None:
        kind = "RowDescription" if frame.type == b"T" else "NoData"
        op = self._head(kind, DESCRIBE, QUERY)
        if op.kind == QUERY:
            assert op.verdict is not None
            masker = op.verdict.masker
            self._query_rows = None
            if masker is not None:
                described = self.describe(frame) if frame.type == b"T" else ()
                plan = plan_columns(described, masker)
                if plan is not None:
                    self._query_rows = RowRewriter(plan, [c.format for c in described],
                                                   [c.name for c in described])
                    if self._query_rows.notices:
                        out.extend(notice_frame(n) for n in self._query_rows.take_notices())
            out.append(frame.raw)
            return
        fields: tuple[FieldDescription, ...] = ()
        columns: tuple[ColumnDescriptor, ...] = ()
        if frame.type == b"T":
            fields, columns = _description(frame)
        self._ops.popleft()
        if op.deny is not None:  # the poison was answered: deny here all the same
            out.append(op.deny.encode())
            return
        if op.describe_kind == "S":
            statement = self._statements.get(op.name)
            if statement is not None:
                statement.fields = fields
        else:
            portal = self._portals.get(op.name)
            if portal is not None:
                portal.fields = fields
                portal.columns = columns
                portal.rows_planned = False
        if not op.hidden:
            out.append(frame.raw)

    def _described_verdict(self, op: _Op) -> StatementVerdict | None:
        """The verdict of the statement or portal a Describe `op` asked about."""
        if op.describe_kind == "S":
            statement = self._statements.get(op.name)
            return statement.verdict if statement is not None else None
        portal = self._portals.get(op.name)
        return portal.verdict if portal is not None and portal.statement else None

    @staticmethod
    def describe(frame: Frame) -> tuple[ColumnDescriptor, ...]:
        """The column descriptors of a RowDescription frame (decoded once per distinct
        message: a statement run again describes its result with the same bytes)."""
        return _description(frame)[1]

    def _on_command_complete(self, frame: Frame, out: list[bytes]) -> None:
        op = self._head("CommandComplete", QUERY, EXECUTE)
        self._copy = None
        self._query_rows = None
        if op.kind == EXECUTE:
            self._ops.popleft()
        out.append(frame.raw)

    def _on_execute_end(self, frame: Frame, out: list[bytes]) -> None:
        name = "EmptyQueryResponse" if frame.type == b"I" else "PortalSuspended"
        op = self._head(name, QUERY, EXECUTE) if frame.type == b"I" else self._head(
            name, EXECUTE)
        if op.kind == EXECUTE:
            self._ops.popleft()
        out.append(frame.raw)

    def _on_copy_out(self, frame: Frame, out: list[bytes]) -> None:
        op = self._head("CopyOutResponse", QUERY, EXECUTE)
        message = decode_backend(frame)
        assert isinstance(message, CopyOutResponse)
        verdict = op.verdict if op.kind == QUERY else self._portal_verdict(op.name)
        self._copy = None
        if verdict is not None and verdict.masker is not None:
            columns = [ColumnDescriptor(i, "", 0, 0, 0, -1, fmt, copy=True)
                       for i, fmt in enumerate(message.column_formats)]
            plan = plan_columns(columns, verdict.masker)
            if plan is not None:
                self._copy = CopyOutRewriter(plan, message.format == 1, verdict.copy_layout,
                                             self.max_copy_record)
        out.append(frame.raw)
        if self._copy is not None and self._copy.notices:
            out.extend(notice_frame(n) for n in self._copy.take_notices())

    def _on_copy_in(self, frame: Frame, out: list[bytes]) -> None:
        """The server now ignores Sync until the client's next CopyDone / CopyFail, so the
        Syncs the client sent between the COPY and that message get no answer."""
        op = self._head("CopyInResponse", QUERY, EXECUTE)
        ends = self._copy_end_seqs
        while ends and ends[0] < op.seq:
            ends.popleft()  # CopyDone / CopyFail outside COPY: the server ignored them too
        end = ends.popleft() if ends else None
        self._copy_in_open = end is None
        self._ops = deque(o for o in self._ops if not (
            o.kind == SYNC and o.seq > op.seq and (end is None or o.seq < end)))
        out.append(frame.raw)

    def _on_copy_done(self, frame: Frame, out: list[bytes]) -> None:
        if self._copy is not None:
            self._copy.finish()
            self._copy = None
        out.append(frame.raw)

    def _on_relay(self, frame: Frame, out: list[bytes]) -> None:
        out.append(frame.raw)

    # ----------------------------------------------------------------------------------------
    # Which rewriter applies to a DataRow

    def _rows_for_data(self, out: list[bytes]) -> RowRewriter | None:
        if self._skip_until_sync or not self._ops:
            raise SessionError("server sent DataRow but no query was pending")
        op = self._ops[0]
        if op.kind == QUERY:
            return self._query_rows
        if op.kind != EXECUTE:
            raise SessionError(f"server sent DataRow while {_NAMES[op.kind]} was pending")
        if not op.rows_planned:
            op.rows = self._portal_rows(op.name)
            op.rows_planned = True
            if op.rows is not None and op.rows.notices:
                out.extend(notice_frame(n) for n in op.rows.take_notices())
        return op.rows

    def _portal_verdict(self, name: str) -> StatementVerdict | None:
        portal = self._portals.get(name)
        if portal is None:
            raise SessionError(f"server returned rows for portal {name!r}, which the proxy "
                               "does not know")
        if portal.statement is None:
            raise SessionError(f"portal {name!r} was bound to a statement the proxy does not "
                               "know; its results cannot be checked for masking")
        return portal.verdict

    def _portal_rows(self, name: str) -> RowRewriter | None:
        verdict = self._portal_verdict(name)
        portal = self._portals[name]
        if portal.rows_planned:
            return portal.rows
        rows = None
        if verdict is not None and verdict.masker is not None:
            columns: Sequence[ColumnDescriptor]
            if portal.fields is not None:
                columns = portal.columns
            elif portal.statement is not None and portal.statement.fields is not None:
                fields = portal.statement.fields
                columns = describe_fields(
                    fields, [portal.bind.result_format(i) for i in range(len(fields))])
            else:
                raise RewriteError(f"the columns of masked portal {name!r} are unknown")
            plan = plan_columns(columns, verdict.masker)
            if plan is not None:
                rows = RowRewriter(plan, [c.format for c in columns], [c.name for c in columns])
        portal.rows, portal.rows_planned = rows, True
        return rows


_Description = tuple[tuple[FieldDescription, ...], tuple[ColumnDescriptor, ...]]
_DESCRIPTIONS: dict[bytes, _Description] = {}
MAX_CACHED_DESCRIPTIONS = 512
MAX_CACHED_DESCRIPTION_SIZE = 8192


def _description(frame: Frame) -> _Description:
    """A RowDescription's fields and column descriptors, from a small process-wide cache
    keyed by the message's bytes (values are immutable)."""
    raw = frame.raw
    cached = _DESCRIPTIONS.get(raw)
    if cached is not None:
        return cached
    message = decode_backend(frame)
    if not isinstance(message, RowDescription):
        raise SessionError(f"expected RowDescription, got {type(message).__name__}")
    found = (message.fields, tuple(describe_fields(message.fields)))
    if len(raw) <= MAX_CACHED_DESCRIPTION_SIZE:
        if len(_DESCRIPTIONS) >= MAX_CACHED_DESCRIPTIONS:
            _DESCRIPTIONS.clear()
        _DESCRIPTIONS[raw] = found
    return found


def _need(verdict: StatementVerdict | None) -> StatementVerdict:
    if verdict is None:
        raise SessionError("statement sent without a decision")  # a bug in the caller
    return verdict


def _frame(kind: bytes, body: bytes) -> bytes:
    return _HEADER.pack(kind, len(body) + 4) + body


def _error_values_withheld(frame: Frame) -> Frame:
    """The server's error with the values it quotes withheld (for a statement that reads
    or writes masked columns: `StatementVerdict.withhold_error_values`): the DETAIL, and the
    quoted text of the message and of the CONTEXT, except in the message of an integrity
    violation (class 23), which names only constraints, columns and tables."""
    error = decode_backend(frame)
    if not isinstance(error, ErrorResponse):
        return frame
    fields = []
    for code, value in error.fields:
        if code == "W" or (code == "M" and not error.code.startswith("23")):
            value = _QUOTED.sub(f'"{WITHHELD_VALUE}"', value)
        elif code == "D":
            value = WITHHELD_DETAIL
        fields.append((code, value))
    return Frame(b"E", ErrorResponse(tuple(fields)).encode())


_ENDINGS = frozenset({b"C", b"I", b"s", b"E"})

_HANDLERS = {
    b"E": Session._on_error,
    b"Z": Session._on_ready,
    b"1": Session._on_parse_complete,
    b"2": Session._on_bind_complete,
    b"3": Session._on_close_complete,
    b"t": Session._on_parameter_description,
    b"T": Session._on_description,
    b"n": Session._on_description,
    b"C": Session._on_command_complete,
    b"I": Session._on_execute_end,
    b"s": Session._on_execute_end,
    b"H": Session._on_copy_out,
    b"c": Session._on_copy_done,
    b"G": Session._on_copy_in,
    b"W": Session._on_relay,
    b"V": Session._on_relay,
}
