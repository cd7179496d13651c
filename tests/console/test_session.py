"""Console sessions: signed cookies, the CSRF token they carry, and the same-origin checks."""

from __future__ import annotations

from micromessaging.console.session import (
    COOKIE,
    CSRF_HEADER,
    Sessions,
    cookie_value,
    cross_origin,
    host_allowed,
)


def scope(headers: dict[str, str], scheme: str = "http") -> dict:
    return {
        "scheme": scheme,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }


def test_an_issued_cookie_reads_back_as_its_session() -> None:
    sessions = Sessions(b"k" * 32)
    session, value = sessions.issue("ops", now=1000.0)
    assert session.who == "ops" and len(session.csrf) >= 32
    assert sessions.read(f"{COOKIE}={value}".encode(), now=1001.0) == session
    # Another cookie around it changes nothing; a second session gets another token.
    assert sessions.read(f"a=b; {COOKIE}={value}; c=d".encode(), now=1001.0) == session
    assert sessions.issue("ops", now=1000.0)[0].csrf != session.csrf


def test_a_forged_altered_or_expired_cookie_is_no_session() -> None:
    sessions = Sessions(b"k" * 32, lifetime=60)
    _, value = sessions.issue("ops", now=1000.0)
    payload, _, signature = value.partition(".")
    other, _ = Sessions(b"x" * 32).issue("ops", now=1000.0)[1].split(".")
    # The first character carries six whole bits of the signature: changed, it always tells.
    # (Ending it in "AA" instead left a signature that already ended so unchanged, one run
    # in about a thousand: the session token in the payload is random.)
    altered = ("B" if signature[0] == "A" else "A") + signature[1:]
    cases = [
        None,
        b"",
        f"{COOKIE}=".encode(),
        f"{COOKIE}={payload}".encode(),
        f"{COOKIE}={payload}.{altered}".encode(),  # signature altered
        f"{COOKIE}={other}.{signature}".encode(),  # another payload, this signature
        f"{COOKIE}=not base64!.{signature}".encode(),
    ]
    for header in cases:
        assert sessions.read(header, now=1001.0) is None, header
    assert sessions.read(f"{COOKIE}={value}".encode(), now=1061.0) is None  # expired
    assert Sessions(b"x" * 32).read(f"{COOKIE}={value}".encode(), now=1001.0) is None


def test_the_cookie_is_http_only_same_site_strict_and_secure_over_https() -> None:
    sessions = Sessions(b"k" * 32, path="/console/")
    _, value = sessions.issue("", now=0.0)
    plain = sessions.set_cookie(value, secure=False).decode()
    assert plain.startswith(f"{COOKIE}={value};")
    assert "HttpOnly" in plain and "SameSite=Strict" in plain and "Path=/console/" in plain
    assert "Secure" not in plain
    assert "; Secure" in sessions.set_cookie(value, secure=True).decode()
    assert "Max-Age=0" in sessions.clear_cookie(secure=False).decode()


def test_csrf_token_compared_with_the_header() -> None:
    sessions = Sessions(b"k" * 32)
    session, _ = sessions.issue("", now=0.0)
    assert session.matches(session.csrf.encode())
    assert not session.matches(None)
    assert not session.matches(b"")
    assert not session.matches(session.csrf[:-1].encode())
    assert not session.matches(session.csrf.encode() + b"x")
    assert CSRF_HEADER == b"x-mm-csrf"


def test_cookie_value_parses_a_cookie_header() -> None:
    assert cookie_value(b"a=1; mm_console=abc.def; b=2", "mm_console") == "abc.def"
    assert cookie_value(b"xmm_console=1", "mm_console") is None
    assert cookie_value(None, "mm_console") is None


def test_cross_origin_requests_are_told_apart() -> None:
    host = {"host": "127.0.0.1:8088"}
    assert cross_origin(scope(host)) is None  # curl: no Origin, no Sec-Fetch-Site
    assert cross_origin(scope({**host, "origin": "http://127.0.0.1:8088"})) is None
    assert cross_origin(scope({**host, "sec-fetch-site": "same-origin"})) is None
    refused = [
        {**host, "origin": "http://evil.example"},
        {**host, "origin": "http://127.0.0.1:9999"},
        {**host, "origin": "null"},
        {**host, "sec-fetch-site": "cross-site"},
        {**host, "sec-fetch-site": "same-site"},
        {**host, "origin": "http://127.0.0.1:8088", "sec-fetch-site": "cross-site"},
        {"origin": "http://127.0.0.1:8088"},  # no Host to compare with
    ]
    for headers in refused:
        assert cross_origin(scope(headers)) is not None, headers


def test_host_header_must_name_an_allowed_host() -> None:
    loopback = frozenset({"127.0.0.1", "localhost", "::1"})
    for host in ("127.0.0.1:8088", "localhost:8088", "LOCALHOST", "[::1]:8088", "127.0.0.1"):
        assert host_allowed(scope({"host": host}), loopback), host
    for host in ("evil.example:8088", "127.0.0.1.evil.example", "", "[::1"):
        assert not host_allowed(scope({"host": host}), loopback), host
    assert not host_allowed(scope({}), loopback)
    assert host_allowed(scope({"host": "anything:1"}), None)
