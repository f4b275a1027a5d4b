"""The session bookkeeping without a server: what goes upstream for each client message, and
how server messages are matched, rewritten or refused."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.enforcement.hooks import StatementVerdict
from adapters.postgres import messages as m
from adapters.postgres.codec import BackendDecoder, Frame, FrontendDecoder
from adapters.postgres.session import Session, SessionError, denial_error

ALLOW = StatementVerdict.allow()


def frame(message: m.Message) -> Frame:
    decoder: FrontendDecoder | BackendDecoder
    if isinstance(message, m.FrontendMessage) and not isinstance(message, m.BackendMessage):
        decoder = FrontendDecoder(startup=False)
    else:
        decoder = BackendDecoder()
    decoder.feed(message.encode())
    result = decoder.next_frame()
    assert result is not None
    return result


def send(session: Session, message: m.FrontendMessage,
         verdict: StatementVerdict | None = None) -> list[bytes]:
    if session.statement_text(message) is not None and verdict is None:
        verdict = ALLOW
    return session.client_message(frame(message), message, verdict)


def receive(session: Session, *messages: m.BackendMessage) -> list[m.BackendMessage]:
    out: list[bytes] = []
    for message in messages:
        session.server_frame(frame(message), out)
    decoder = BackendDecoder()
    decoder.feed(b"".join(out))
    return list(decoder)


def test_denied_query_becomes_a_poison_query() -> None:
    session = Session()
    deny = StatementVerdict.deny("no", decision_id="d1")
    sent = send(session, m.Query("DROP TABLE x"), deny)
    assert sent == [m.Query(f'EXECUTE "{session.poison_name}"').encode()]
    server_error = m.ErrorResponse.build("26000", "prepared statement does not exist")
    assert receive(session, server_error, m.ReadyForQuery("I")) == [
        denial_error(deny), m.ReadyForQuery("I")]
    assert denial_error(deny).fields == (
        ("S", "ERROR"), ("V", "ERROR"), ("C", "42501"),
        ("M", "permission denied by policy: no"), ("D", "decision id: d1"))
    assert not session.in_flight


def test_review_is_answered_as_a_denial_that_says_so() -> None:
    error = denial_error(StatementVerdict("review", message="needs a DBA"))
    assert error.code == "42501" and error.message == "statement requires approval: needs a DBA"


def test_a_cancelled_hold_is_answered_as_postgresql_answers_a_cancel() -> None:
    error = denial_error(StatementVerdict.cancelled(decision_id="d1", detail="held"))
    assert error.fields == (
        ("S", "ERROR"), ("V", "ERROR"), ("C", "57014"),
        ("M", "canceling statement due to user request"), ("D", "decision id: d1\nheld"))


def test_a_fatal_error_is_never_replaced_by_the_denial() -> None:
    session = Session()
    send(session, m.Query("x"), StatementVerdict.deny("no"))
    fatal = m.ErrorResponse.build("57P01", "terminating", severity="FATAL")
    assert receive(session, fatal) == [fatal]


def test_denied_parse_discards_until_sync() -> None:
    session = Session()
    assert len(send(session, m.Parse("", "bad"), StatementVerdict.deny("no"))) == 1
    for message in (m.Bind("", ""), m.Describe("P", ""), m.Execute(""), m.Query("x"),
                    m.Flush()):
        assert session.statement_text(message) is None
        assert send(session, message) == []
    assert send(session, m.Sync()) == [m.Sync().encode()]


def test_server_state_follows_responses_not_requests() -> None:
    session = Session()
    masked = StatementVerdict.allow(lambda c: (lambda v: b"x") if c.name == "pan" else None)
    send(session, m.Parse("s", "SELECT pan"), masked)
    send(session, m.Bind("p", "s"))
    sent = send(session, m.Execute("p"))
    assert sent[0] == m.Describe("P", "p").encode()  # injected: columns unknown otherwise
    send(session, m.Sync())
    got = receive(session, m.ParseComplete(), m.BindComplete(),
                  m.RowDescription((m.FieldDescription("pan"),)),
                  m.DataRow((b"4111",)), m.CommandComplete("SELECT 1"), m.ReadyForQuery("T"))
    assert got == [m.ParseComplete(), m.BindComplete(), m.DataRow((b"x",)),
                   m.CommandComplete("SELECT 1"), m.ReadyForQuery("T")]


def test_desynchronised_server_is_refused() -> None:
    session = Session()
    with pytest.raises(SessionError, match="DataRow but no query was pending"):
        receive(session, m.DataRow((b"1",)))
    with pytest.raises(SessionError, match="ParseComplete but no answer was pending"):
        receive(Session(), m.ParseComplete())
    session = Session()
    send(session, m.Query("SELECT 1"))
    with pytest.raises(SessionError, match="BindComplete while Query was pending"):
        receive(session, m.BindComplete())


def test_start_up_messages_are_not_relayed_mid_session_and_encoding_is_checked() -> None:
    session = Session()
    assert receive(session, m.BackendKeyData(1, b"abcd"), m.NegotiateProtocolVersion(0)) == []
    assert receive(session, m.ParameterStatus("client_encoding", "UTF8")) == [
        m.ParameterStatus("client_encoding", "UTF8")]
    with pytest.raises(SessionError) as info:
        receive(session, m.ParameterStatus("client_encoding", "LATIN1"))
    assert info.value.code == "0A000"
    with pytest.raises(SessionError, match="authentication in the middle"):
        receive(session, m.AuthenticationOk())
    assert receive(session, m.UnknownBackendMessage(b"Y", b"")) == [
        m.UnknownBackendMessage(b"Y", b"")]


def test_function_call_is_denied_unless_allowed() -> None:
    session = Session()
    call = m.FunctionCall(1598)
    refusal = session.refusal(call)
    assert refusal is not None and refusal.text == "FunctionCall of function OID 1598"
    verdict = StatementVerdict.deny(refusal.reason, decision_id="")
    assert session.client_message(frame(call), call, verdict) == [m.FunctionCall(0).encode()]
    server_error = m.ErrorResponse.build("42883", "function with OID 0 does not exist")
    assert receive(session, server_error, m.ReadyForQuery("I")) == [
        denial_error(verdict), m.ReadyForQuery("I")]
    allowed = Session()
    assert allowed.refusal(call, allow_function_call=True) is None
    assert allowed.client_message(frame(call), call, allow_function_call=True) == [
        call.encode()]


def test_a_denied_query_in_a_failed_batch_is_ignored_with_it() -> None:
    # The server skips to Sync after the Execute's error: the poison Query gets no answer,
    # and the client gets one ReadyForQuery, for its Sync (as from PostgreSQL).
    session = Session()
    for message in (m.Parse("", "SELECT 1/0"), m.Bind("", ""), m.Execute("")):
        send(session, message)
    send(session, m.Query("DROP TABLE x"), StatementVerdict.deny("no"))
    send(session, m.Sync())
    got = receive(session, m.ParseComplete(), m.BindComplete(),
                  m.ErrorResponse.build("22012", "division by zero"), m.ReadyForQuery("I"))
    assert [type(x).__name__ for x in got] == ["ParseComplete", "BindComplete",
                                                "ErrorResponse", "ReadyForQuery"]
    assert not session.in_flight


def test_a_bind_of_an_unknown_statement_is_a_refusal() -> None:
    session = Session()
    bind = m.Bind("", "never")
    refusal = session.refusal(bind)
    assert refusal is not None and "'never' was not prepared" in refusal.reason
    assert session.statement_text(bind) is None
    assert session.refusal(m.Bind("", "")) is not None  # the unnamed one was not prepared
    send(session, m.Parse("", "SELECT 1"))
    assert session.refusal(m.Bind("", "")) is None


def test_session_ids_never_read_as_card_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hex id with a run of 13+ digits could be masked in its own audit records."""
    from adapters.postgres import proxy
    from engine.masking import may_hold_pan

    draws = iter(["4111111111111111abcdefab", "0123456789abcdef01234567"])
    monkeypatch.setattr(proxy.secrets, "token_hex", lambda n: next(draws))
    assert proxy.new_session_id() == "0123456789abcdef01234567"
    monkeypatch.undo()
    assert not any(may_hold_pan(proxy.new_session_id()) for _ in range(2000))


def test_a_statement_approved_for_one_execution_is_decided_again_at_each_bind() -> None:
    session = Session()
    once = StatementVerdict.allow(decision_id="approved", single_execution=True)
    send(session, m.Parse("s", "SELECT pan FROM cards"), once)
    first, second = m.Bind("p1", "s"), m.Bind("p2", "s")
    assert session.statement_text(first) is None  # the approval covers this one
    send(session, first)
    assert session.statement_text(second) == "SELECT pan FROM cards"

    async def recorded(outcome: Any) -> None:
        raise AssertionError("not awaited here")

    again = StatementVerdict.allow(decision_id="approved-again", on_complete=recorded,
                                   single_execution=True)
    assert send(session, second, again) == [second.encode()]
    send(session, m.Execute("p2"))
    out: list[bytes] = []
    for message in (m.ParseComplete(), m.BindComplete(), m.BindComplete()):
        assert session.server_frame(frame(message), out) is None
    completion = session.server_frame(frame(m.CommandComplete("SELECT 0")), out)
    assert completion is not None and completion.hook is recorded  # this execution's own
    third = m.Bind("p3", "s")
    refused = StatementVerdict.deny("approval was denied", decision_id="again")
    assert send(session, third, refused) == [m.Describe("S", session.poison_name).encode()]
    assert send(session, m.Execute("p3")) == []  # dropped with the rest of the batch
    plain = Session()
    send(plain, m.Parse("s", "SELECT 1"))
    send(plain, m.Bind("", "s"))
    assert plain.statement_text(m.Bind("", "s")) is None  # an allowed statement is not
