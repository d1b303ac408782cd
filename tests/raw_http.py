"""HTTP requests written byte for byte, for header bytes no HTTP client would send (a non-ASCII token)."""

from __future__ import annotations

import asyncio


async def raw_request(
    port: int, method: str, path: str, headers: list[bytes], body: bytes = b"", host: str = "127.0.0.1"
) -> tuple[int, bytes]:
    """One HTTP/1.1 request to `host`:`port`; the status and the body of the answer (the server closes)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host.encode(), b"Connection: close", *headers]
        head.append(f"Content-Length: {len(body)}".encode())
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# Authorization headers that are not ASCII (Latin-1 and invalid UTF-8): each must be a 401, never a 500.
NON_ASCII_AUTH = (b"Authorization: Bearer caf\xe9", b"Authorization: Bearer \xff\xfe", b"Authorization: \xff\xfe")


async def chunked_request(
    port: int, method: str, path: str, headers: list[bytes], chunks: list[bytes], host: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request whose body is sent chunked (no Content-Length: its size is known only as it arrives); the
    status, the headers (names lower-cased) and the body of the answer. A server that answers before the last chunk
    and closes is read all the same."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host.encode(), b"Connection: close", *headers]
        head.append(b"Transfer-Encoding: chunked")
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        try:
            for chunk in chunks:
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            pass  # the server answered and closed before the whole body was sent
        answer = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    head_text, _, body = rest.partition(b"\r\n\r\n")
    fields = dict(line.split(": ", 1) for line in head_text.decode("latin-1").split("\r\n") if ": " in line)
    return int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body
