"""The MySQL command phase as a sans-IO state machine: what each client command means for
enforcement, and where each server response ends.

Owns: `plan_command` (which commands carry statement text to decide and what text: COM_QUERY
its text, multi-statement strings whole; COM_STMT_PREPARE its text; COM_INIT_DB as
`USE db`; COM_FIELD_LIST as `SHOW COLUMNS FROM t`; which are relayed without a decision
(PING, STATISTICS, SET_OPTION, STMT_CLOSE/RESET/SEND_LONG_DATA, RESET_CONNECTION), answered
by the proxy (QUIT) or refused (replication, shutdown, process kill/info, debug, cursors,
COM_CHANGE_USER, anything unknown); the session's prepared statements (an EXECUTE runs the
verdict of its PREPARE, or asks again when that verdict covered one execution);
`ResponseReader`, which follows one command's response packet by packet (OK, ERR, result
sets with or without EOF packets, multi-results, PREPARE_OK with its definitions, LOCAL
INFILE requests) so the loop knows what each packet is and when the response is over.
Must not: do I/O or decide anything (the loop asks the decide hook with the text planned
here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.mysql.codec import ProtocolError
from adapters.mysql.messages import (
    CLIENT_DEPRECATE_EOF,
    COM_CHANGE_USER,
    COM_FIELD_LIST,
    COM_INIT_DB,
    COM_PING,
    COM_QUERY,
    COM_QUIT,
    COM_RESET_CONNECTION,
    COM_SET_OPTION,
    COM_STATISTICS,
    COM_STMT_CLOSE,
    COM_STMT_EXECUTE,
    COM_STMT_FETCH,
    COM_STMT_PREPARE,
    COM_STMT_RESET,
    COM_STMT_SEND_LONG_DATA,
    SERVER_MORE_RESULTS_EXISTS,
    ColumnDefinition,
    Command,
    decode_column_count,
    decode_column_definition,
    decode_field_list,
    decode_prepare_ok,
    decode_stmt_execute,
    end_status,
    is_eof,
)

ResponseKind = Literal["result", "prepare", "ok", "field_list", "single", "none"]
"""What a command's response looks like: `result` a result set or OK/ERR (possibly several,
SERVER_MORE_RESULTS_EXISTS), `prepare` PREPARE_OK and definitions or ERR, `ok` OK or ERR,
`field_list` column definitions up to EOF or ERR, `single` one packet of any kind
(COM_STATISTICS, COM_SET_OPTION's EOF), `none` no response."""


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True)
class Plan:
    """What to do with one client command.

    - `decide`: the text to decide before the command goes upstream (None: no decision);
    - `refuse`: the proxy refuses the command itself (the reason, recorded as a denial);
    - `response`: what the server answers, for the ResponseReader;
    - `binary`: its result rows are binary-protocol rows (COM_STMT_EXECUTE);
    - `statement`: the prepared statement an EXECUTE runs;
    - `quit`: the client ends the session (COM_QUIT: nothing is sent back).
    """

    command: Command
    response: ResponseKind
    decide: str | None = None
    refuse: str | None = None
    binary: bool = False
    statement: Prepared | None = None
    quit: bool = False
    resets: bool = False  # COM_RESET_CONNECTION: the server forgets prepared statements


@dataclass
class Prepared:
    """A statement prepared in this session: its text, the verdict its PREPARE got (reused by
    each EXECUTE unless `single_execution`), and its result columns' types (binary rows)."""

    statement_id: int
    text: str
    verdict: Any
    params: int = 0
    columns: list[ColumnDefinition] = field(default_factory=list)
    executions: int = 0


_RELAYED: dict[int, ResponseKind] = {
    COM_PING: "ok", COM_STATISTICS: "single", COM_SET_OPTION: "single",
    COM_STMT_RESET: "ok", COM_STMT_CLOSE: "none", COM_STMT_SEND_LONG_DATA: "none",
    COM_RESET_CONNECTION: "ok",
}


class CommandPlanner:
    """Plans each client command of one session and keeps its prepared statements."""

    MAX_PREPARED = 4096

    def __init__(self) -> None:
        self.prepared: dict[int, Prepared] = {}

    def plan(self, command: Command) -> Plan:
        code = command.code
        if code == COM_QUIT:
            return Plan(command, "none", quit=True)
        if code == COM_QUERY:
            return Plan(command, "result", decide=command.text())
        if code == COM_STMT_PREPARE:
            if len(self.prepared) >= self.MAX_PREPARED:
                return Plan(command, "prepare", refuse=f"more than {self.MAX_PREPARED} "
                                                       "prepared statements in one session")
            return Plan(command, "prepare", decide=command.text())
        if code == COM_INIT_DB:
            return Plan(command, "ok", decide="USE " + quote_identifier(command.text()))
        if code == COM_FIELD_LIST:
            fields = decode_field_list(command)
            return Plan(command, "field_list",
                        decide="SHOW COLUMNS FROM " + quote_identifier(fields.table))
        if code == COM_STMT_EXECUTE:
            execute = decode_stmt_execute(command)
            prepared = self.prepared.get(execute.statement_id)
            if prepared is None:
                return Plan(command, "result", refuse=f"COM_STMT_EXECUTE of statement "
                            f"{execute.statement_id}, which was not prepared through this "
                            "proxy session")
            if execute.flags & 0x0F:
                return Plan(command, "result", statement=prepared,
                            refuse="COM_STMT_EXECUTE with a cursor (flags "
                                   f"0x{execute.flags:02x}) is not supported by the proxy")
            return Plan(command, "result", binary=True, statement=prepared)
        if code in (COM_STMT_CLOSE, COM_STMT_RESET, COM_STMT_SEND_LONG_DATA):
            prepared = self.prepared.get(command.statement_id())
            if code == COM_STMT_CLOSE and prepared is not None:
                del self.prepared[prepared.statement_id]
            return Plan(command, _RELAYED[code], statement=prepared)
        if code == COM_STMT_FETCH:
            return Plan(command, "result", refuse="COM_STMT_FETCH (cursors) is not supported "
                                                  "by the proxy")
        if code == COM_RESET_CONNECTION:
            return Plan(command, "ok", resets=True)
        if code in _RELAYED:
            return Plan(command, _RELAYED[code])
        if code == COM_CHANGE_USER:
            return Plan(command, "ok", refuse="COM_CHANGE_USER is refused by the proxy: "
                                              "reconnect to log in as another user")
        return Plan(command, "ok", refuse=f"{command.name} is not allowed through the proxy")

    def reset(self) -> None:
        self.prepared.clear()


Packet = Literal["ok", "err", "column_count", "column", "eof", "row", "local_infile",
                 "prepare_ok", "param", "other"]


class ResponseReader:
    """Follows one command's response: `read(payload)` says what the packet is; `done` once
    the response is complete. For result sets `columns` holds the current result's column
    definitions; for PREPARE `prepare` the PREPARE_OK. `results` counts the results ended so
    far (each OK, ERR or end of rows)."""

    def __init__(self, kind: ResponseKind, capabilities: int) -> None:
        self.kind = kind
        self.deprecate_eof = bool(capabilities & CLIENT_DEPRECATE_EOF)
        self.capabilities = capabilities
        self.done = kind == "none"
        self.columns: list[ColumnDefinition] = []
        self.prepare: Any = None
        self._state = "first"
        self._expect = 0
        self._params = 0
        self.results = 0

    def _end_result(self, payload: bytes) -> None:
        self.results += 1
        more = payload[:1] != b"\xff" and self.kind == "result" and bool(
            end_status(payload, self.capabilities) & SERVER_MORE_RESULTS_EXISTS)
        if more:
            self._state = "first"
            self.columns = []
        else:
            self.done = True

    def read(self, payload: bytes) -> Packet:
        if self.done:
            raise ProtocolError("server: a packet after the end of the response")
        if not payload:
            raise ProtocolError("server: empty packet")
        head = payload[0]
        kind, state = self.kind, self._state
        if kind == "single":
            self.done = True
            return "other"
        if head == 0xFF and state != "definitions":
            self._end_result(payload)
            self.done = True
            return "err"
        if kind == "ok":
            if head != 0x00:
                raise ProtocolError(f"server: expected OK or ERR, got header 0x{head:02x}")
            self.done = True
            self.results += 1
            return "ok"
        if kind == "field_list":
            if is_eof(payload):
                self.done = True
                self.results += 1
                return "eof"
            self.columns.append(decode_column_definition(payload))
            return "column"
        if kind == "prepare":
            return self._prepare_packet(payload)
        # a result
        if state == "first":
            if head == 0x00:
                self._end_result(payload)
                return "ok"
            if head == 0xFB:
                self._state = "infile"
                return "local_infile"
            self._expect = decode_column_count(payload)
            self._state = "columns"
            return "column_count"
        if state == "infile":  # the server's answer once the file was sent
            if head != 0x00:
                raise ProtocolError(f"server: expected OK after LOCAL INFILE, got 0x{head:02x}")
            self._end_result(payload)
            return "ok"
        if state == "columns":
            self.columns.append(decode_column_definition(payload))
            if len(self.columns) == self._expect:
                self._state = "rows" if self.deprecate_eof else "columns_eof"
            return "column"
        if state == "columns_eof":
            if not is_eof(payload):
                raise ProtocolError("server: expected EOF after the column definitions")
            self._state = "rows"
            return "eof"
        if state == "rows":
            if is_eof(payload):
                self._end_result(payload)
                return "eof"
            return "row"
        raise ProtocolError(f"server: unexpected packet in state {state}")

    def _prepare_packet(self, payload: bytes) -> Packet:
        state = self._state
        if state == "first":
            ok = self.prepare = decode_prepare_ok(payload)
            self._params, self._expect = ok.params, ok.columns
            self._state = "params"
            self._advance()
            return "prepare_ok"
        if state in ("params_eof", "columns_eof"):
            if not is_eof(payload):
                raise ProtocolError("server: expected EOF after the definitions")
            self._state = "columns" if state == "params_eof" else "end"
            self._advance()
            return "eof"
        if state == "params":
            decode_column_definition(payload)
            self._params -= 1
            self._advance()
            return "param"
        if state == "columns":
            self.columns.append(decode_column_definition(payload))
            self._advance()
            return "column"
        raise ProtocolError(f"server: unexpected packet in PREPARE response state {state}")

    def _advance(self) -> None:
        """After PREPARE_OK or a definition: where the response goes next."""
        if self._state == "params" and self._params == 0:
            started = self.prepare.params > 0
            self._state = "params_eof" if started and not self.deprecate_eof else "columns"
        if self._state == "columns" and len(self.columns) == self._expect:
            started = self._expect > 0
            self._state = "columns_eof" if started and not self.deprecate_eof else "end"
        if self._state == "end":
            self.done = True
            self.results = 1
