"""The proxy at the wire level, driven by the project's own codec: exact response sequences
for denials in the extended protocol, injected Describe for masking, start-up negotiation and
malformed input. Where it matters the same exchange is replayed directly against PostgreSQL
with a real server error in place of the denial, and the shapes must match."""

from __future__ import annotations

import socket
import struct

import pytest

from adapters.postgres import messages as m
from adapters.postgres.auth import UpstreamLogin
from adapters.postgres.codec import BackendDecoder
from tests.postgres.conftest import USERS, ProxyThread

pytestmark = pytest.mark.postgres


class RawClient:
    """A blocking protocol-3.0 client built on the codec (logs in with `UpstreamLogin`)."""

    def __init__(self, port: int, dbname: str, user: str = "alice",
                 password: str | None = None, *, startup: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.decoder = BackendDecoder()
        self.params: dict[str, str] = {}
        self.key: m.BackendKeyData | None = None
        if not startup:
            return
        self.send(m.StartupMessage((("user", user), ("database", dbname))))
        login = UpstreamLogin(user, USERS[user][0] if password is None else password)
        while True:
            message = self.recv()
            if isinstance(message, m.ErrorResponse):
                raise AssertionError(message.message)
            if isinstance(message, m.Authentication):
                self.send(*login.receive(message))
            elif isinstance(message, m.ParameterStatus):
                self.params[message.name] = message.value
            elif isinstance(message, m.BackendKeyData):
                self.key = message
            elif isinstance(message, m.ReadyForQuery):
                return

    @classmethod
    def direct(cls, dsn: str) -> RawClient:
        from psycopg.conninfo import conninfo_to_dict
        p = conninfo_to_dict(dsn)
        client = cls.__new__(cls)
        USERS.setdefault(str(p["user"]), (str(p["password"]), ()))
        cls.__init__(client, int(p["port"]), str(p["dbname"]), str(p["user"]),
                     str(p["password"]))
        return client

    def send(self, *messages: m.Message) -> None:
        self.sock.sendall(b"".join(x.encode() for x in messages))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> m.BackendMessage:
        while True:
            message = self.decoder.next_message()
            if message is not None:
                return message
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.decoder.feed(data)

    def until_ready(self) -> list[m.BackendMessage]:
        out: list[m.BackendMessage] = []
        while True:
            out.append(self.recv())
            if isinstance(out[-1], m.ReadyForQuery):
                return out

    def closed(self) -> bool:
        try:
            while True:
                self.recv()
        except ConnectionError:
            return True

    def close(self) -> None:
        self.sock.close()


def shape(messages: list[m.BackendMessage]) -> list[str]:
    """Message names, with the SQLSTATE of errors and the status of ReadyForQuery."""
    out = []
    for x in messages:
        if isinstance(x, m.ErrorResponse):
            out.append(f"Error:{x.code}")
        elif isinstance(x, m.ReadyForQuery):
            out.append(f"Ready:{x.status}")
        elif not isinstance(x, m.NoticeResponse | m.ParameterStatus):
            out.append(type(x).__name__)
    return out


def batch(*steps: tuple[str, str]) -> list[m.FrontendMessage]:
    """Parse/Bind/Execute for each (statement name, sql), then Sync."""
    out: list[m.FrontendMessage] = []
    for name, sql in steps:
        out += [m.Parse(name, sql), m.Bind("", name), m.Execute("")]
    return [*out, m.Sync()]


@pytest.fixture
def client(proxy: ProxyThread, dbname: str) -> RawClient:
    c = RawClient(proxy.port, dbname)
    yield c  # type: ignore[misc]
    c.close()


def test_denied_parse_mid_batch_matches_a_server_error(client: RawClient,
                                                       upstream_db: str) -> None:
    direct = RawClient.direct(upstream_db)
    try:
        for c in (client, direct):
            c.send(m.Query("CREATE TEMP TABLE mid (x int)"))
            c.until_ready()
        flow = [("", "INSERT INTO mid VALUES (1)"), ("", "SELECT 1")]
        client.send(*batch(flow[0], ("", "SELECT 'forbidden'"), flow[1]))
        direct.send(*batch(flow[0], ("", "SELEC 1"), flow[1]))  # fails at Parse too
        got, expected = client.until_ready(), direct.until_ready()
        assert shape(got) == [s.replace("42601", "42501") for s in shape(expected)] == [
            "ParseComplete", "BindComplete", "CommandComplete", "Error:42501", "Ready:I"]
        error = got[-2]
        assert isinstance(error, m.ErrorResponse) and error.get("D") == (
            "decision id: dec-42\nrule: no-forbidden")
        for c in (client, direct):  # the implicit transaction of the batch was rolled back
            c.send(m.Query("SELECT count(*) FROM mid"))
            rows = [x for x in c.until_ready() if isinstance(x, m.DataRow)]
            assert rows == [m.DataRow((b"0",))]
    finally:
        direct.close()


def test_denial_in_a_transaction_block_fails_the_block(client: RawClient) -> None:
    client.send(m.Query("BEGIN"))
    assert shape(client.until_ready()) == ["CommandComplete", "Ready:T"]
    client.send(*batch(("s1", "SELECT 'forbidden'")))
    assert shape(client.until_ready()) == ["Error:42501", "Ready:E"]
    client.send(m.Query("SELECT 1"))
    assert shape(client.until_ready()) == ["Error:25P02", "Ready:E"]
    client.send(m.Query("ROLLBACK"))
    assert shape(client.until_ready()) == ["CommandComplete", "Ready:I"]
    client.send(m.Query("SELECT 'forbidden'"))
    assert shape(client.until_ready()) == ["Error:42501", "Ready:I"]


def test_pipelined_batches_keep_their_order(client: RawClient) -> None:
    client.send(*batch(("", "SELECT 1")), *batch(("", "SELECT 'forbidden'")),
                *batch(("", "SELECT 3")), m.Query("SELECT 'forbidden' AS x"), m.Query("SELECT 4"))
    answers = [shape(client.until_ready()) for _ in range(5)]
    ok = ["ParseComplete", "BindComplete", "DataRow", "CommandComplete", "Ready:I"]
    assert answers == [ok, ["Error:42501", "Ready:I"], ok, ["Error:42501", "Ready:I"],
                       ["RowDescription", "DataRow", "CommandComplete", "Ready:I"]]


def test_decisions_that_wait_keep_the_pipeline_in_order(client: RawClient) -> None:
    slow = "/* decide slowly */ "
    client.send(*batch(("", slow + "SELECT 1 AS n")), m.Query(slow + "SELECT 'forbidden'"),
                m.Query("SELECT 2 AS n"), *batch(("", slow + "SELECT 3 AS n")),
                *batch(("", slow + "SELECT 'forbidden'")), m.Query(slow + "SELECT 4 AS n"))
    answers = [client.until_ready() for _ in range(6)]
    ok = ["ParseComplete", "BindComplete", "DataRow", "CommandComplete", "Ready:I"]
    row = ["RowDescription", "DataRow", "CommandComplete", "Ready:I"]
    assert [shape(a) for a in answers] == [ok, ["Error:42501", "Ready:I"], row, ok,
                                           ["Error:42501", "Ready:I"], row]
    values = [x.values[0] for a in answers for x in a if isinstance(x, m.DataRow)]
    assert values == [b"1", b"2", b"3", b"4"]


def test_a_slow_reader_gets_a_large_result_whole(client: RawClient) -> None:
    """The proxy stops reading the server while the client does not read (flow control),
    and the result arrives complete and in order once it does."""
    client.send(m.Query("SELECT g, repeat('x', 2000) FROM generate_series(1, 20000) AS g"))
    import time
    time.sleep(0.5)  # ~40 MB waiting: far more than the socket buffers hold
    answer = client.until_ready()
    rows = [x for x in answer if isinstance(x, m.DataRow)]
    assert [int(r.values[0] or b"0") for r in rows] == list(range(1, 20001))
    assert shape(answer)[-2:] == ["CommandComplete", "Ready:I"]
    client.send(m.Query("SELECT 5"))
    assert shape(client.until_ready()) == ["RowDescription", "DataRow", "CommandComplete",
                                           "Ready:I"]


def test_named_statements_portals_and_close(client: RawClient) -> None:
    client.send(m.Parse("st", "SELECT generate_series(1, 5) AS n"), m.Describe("S", "st"),
                m.Bind("po", "st"), m.Execute("po", 2), m.Execute("po", 0), m.Close("P", "po"),
                m.Close("S", "st"), m.Sync())
    assert shape(client.until_ready()) == [
        "ParseComplete", "ParameterDescription", "RowDescription", "BindComplete", "DataRow",
        "DataRow", "PortalSuspended", "DataRow", "DataRow", "DataRow", "CommandComplete",
        "CloseComplete", "CloseComplete", "Ready:I"]
    # A statement that was never prepared through the proxy cannot be bound.
    client.send(m.Bind("", "st"), m.Execute(""), m.Sync())
    got = client.until_ready()
    assert shape(got) == ["Error:42501", "Ready:I"]
    assert isinstance(got[0], m.ErrorResponse) and "was not prepared" in got[0].message


def test_masking_without_describe_injects_a_hidden_one(client: RawClient) -> None:
    client.send(*batch(("", "SELECT pan, holder FROM cards WHERE id = 1")))
    got = client.until_ready()
    assert shape(got) == ["ParseComplete", "BindComplete", "DataRow", "CommandComplete",
                          "Ready:I"]
    assert got[2] == m.DataRow((b"************1111", b"Ann"))


def test_masking_through_statement_description_and_binary_formats(client: RawClient) -> None:
    client.send(m.Parse("ps", "SELECT pan, id FROM cards WHERE id = $1", (23,)),
                m.Describe("S", "ps"), m.Sync())
    client.until_ready()
    client.send(m.Bind("", "ps", (), (b"2",), (0,)), m.Execute(""),
                m.Bind("", "ps", (), (b"1",), (1,)), m.Execute(""),
                m.Bind("p2", "ps", (), (b"1",), (1, 0)), m.Execute("p2", 1), m.Sync())
    rows = [x for x in client.until_ready() if isinstance(x, m.DataRow)]
    assert rows == [m.DataRow((b"************5559", b"2")),
                    m.DataRow((None, b"\x00\x00\x00\x01")),
                    m.DataRow((None, b"1"))]


def test_function_call_is_denied_and_session_goes_on(client: RawClient) -> None:
    client.send(m.FunctionCall(1598, (), (), 0))  # random()
    assert shape(client.until_ready()) == ["Error:42501", "Ready:I"]
    client.send(m.Query(""))
    assert shape(client.until_ready()) == ["EmptyQueryResponse", "Ready:I"]


@pytest.mark.parametrize(("steps", "ready"), [
    (["call", "sync"], 2),  # PostgreSQL answers a FunctionCall, then the Sync
    (["fail", "call", "sync"], 1),  # skipped with the failed batch
    (["fail", "query", "sync"], 1),
    (["ok", "call", "sync"], 2),
    (["ok", "query", "sync"], 2),
    (["begin", "call", "query", "rollback"], 4),
])
def test_denied_function_calls_and_queries_are_answered_as_postgresql_answers_errors(
        client: RawClient, upstream_db: str, steps: list[str], ready: int) -> None:
    """The proxy's denials against the same exchange sent straight to PostgreSQL, with a
    FunctionCall and a Query that fail there: the same messages, as many ReadyForQuery."""
    def exchange(target: RawClient, denied: bool) -> list[str]:
        messages: list[m.FrontendMessage] = []
        for step in steps:
            messages += {
                "call": [m.FunctionCall(1598 if denied else 0)],
                "query": [m.Query("SELECT 'forbidden'" if denied else "SELECT 1/0")],
                "fail": [m.Parse("", "SELECT 1/0"), m.Bind("", ""), m.Execute("")],
                "ok": [m.Parse("", "SELECT 1"), m.Bind("", ""), m.Execute("")],
                "sync": [m.Sync()], "begin": [m.Query("BEGIN")],
                "rollback": [m.Query("ROLLBACK")],
            }[step]
        target.send(*messages)
        got: list[m.BackendMessage] = []
        for _ in range(ready):
            got += target.until_ready()
        target.send(m.Query(""))  # nothing is left over: the next answer is this one's
        assert shape(target.until_ready()) == ["EmptyQueryResponse", "Ready:I"]
        return [x.split(":")[0] if x.startswith("Error") else x for x in shape(got)]

    direct = RawClient.direct(upstream_db)
    try:
        expected = exchange(direct, denied=False)
    finally:
        direct.close()
    assert exchange(client, denied=True) == expected


def test_copy_in_through_extended_protocol(client: RawClient) -> None:
    client.send(m.Query("CREATE TEMP TABLE cin (a int)"))
    client.until_ready()
    client.send(m.Parse("", "COPY cin FROM STDIN"), m.Bind("", ""), m.Execute(""), m.Sync())
    assert shape([client.recv(), client.recv(), client.recv()]) == [
        "ParseComplete", "BindComplete", "CopyInResponse"]
    # Like libpq: the Sync sent with the COPY is ignored, so a second one follows CopyDone.
    client.send(m.CopyData(b"1\n2\n"), m.CopyData(b"3\n"), m.CopyDone(), m.Sync())
    assert shape(client.until_ready()) == ["CommandComplete", "Ready:I"]
    client.send(*batch(("", "SELECT sum(a) FROM cin")), m.CopyDone())  # stray: ignored
    got = client.until_ready()
    assert shape(got) == ["ParseComplete", "BindComplete", "DataRow", "CommandComplete",
                          "Ready:I"] and got[2] == m.DataRow((b"6",))
    # Fully pipelined, the COPY data sent before the server even answered.
    client.send(m.Parse("", "COPY cin FROM STDIN"), m.Bind("", ""), m.Execute(""), m.Sync(),
                m.CopyData(b"4\n"), m.CopyDone(), m.Sync(), *batch(("", "SELECT sum(a) FROM cin")))
    assert shape(client.until_ready()) == ["ParseComplete", "BindComplete", "CopyInResponse",
                                           "CommandComplete", "Ready:I"]
    assert client.until_ready()[2] == m.DataRow((b"10",))


def test_invalid_frontend_message_gets_fatal_08p01(client: RawClient) -> None:
    client.send_raw(b"Z\x00\x00\x00\x04")
    error = client.recv()
    assert isinstance(error, m.ErrorResponse)
    assert (error.severity, error.code) == ("FATAL", "08P01")
    assert "invalid frontend message type b'Z'" in error.message
    assert client.closed()


def test_oversized_message_is_refused_from_its_header(client: RawClient) -> None:
    client.send_raw(b"Q" + struct.pack("!I", 200 * 1024 * 1024))
    error = client.recv()
    assert isinstance(error, m.ErrorResponse) and error.code == "08P01"
    assert "exceeds the maximum message size" in error.message
    assert client.closed()


def test_ssl_and_gss_requests_are_declined_without_tls(proxy: ProxyThread,
                                                       dbname: str) -> None:
    c = RawClient(proxy.port, dbname, startup=False)
    c.send(m.GSSENCRequest())
    assert c.sock.recv(1) == b"N"
    c.send(m.SSLRequest())
    assert c.sock.recv(1) == b"N"
    c.close()


def test_cancel_with_a_wrong_key_is_ignored(proxy: ProxyThread, dbname: str,
                                            client: RawClient) -> None:
    assert client.key is not None
    stranger = RawClient(proxy.port, dbname, startup=False)
    stranger.send(m.CancelRequest(client.key.pid, b"\x00\x00\x00\x00"))
    assert stranger.closed()
    client.send(m.Query("SELECT 1"))
    assert shape(client.until_ready())[-1] == "Ready:I"


def test_newer_protocol_minor_is_negotiated_down(proxy: ProxyThread, dbname: str) -> None:
    c = RawClient(proxy.port, dbname, startup=False)
    c.send(m.StartupMessage((("user", "alice"), ("database", dbname),
                             ("_pq_.fancy", "1")), protocol=3 << 16 | 2))
    first = c.recv()
    assert first == m.NegotiateProtocolVersion(0, ("_pq_.fancy",))
    assert isinstance(c.recv(), m.AuthenticationSASL)
    c.close()


def test_startup_without_user_is_refused(proxy: ProxyThread) -> None:
    c = RawClient(proxy.port, "x", startup=False)
    c.send(m.StartupMessage((("database", "x"),)))
    error = c.recv()
    assert isinstance(error, m.ErrorResponse) and error.code == "28000"
    assert c.closed()
