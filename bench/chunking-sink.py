#!/usr/bin/env python3
"""An SMTP sink that offers CHUNKING (BDAT, RFC 3030) and PIPELINING, as Postfix and Exim
do when shipped, for bench/perf-session.sh (SINK=chunking): Postfix's smtp-sink offers no
CHUNKING, so a front-end relaying to it never sends BDAT. It takes every message and keeps
none. Replies queued while more commands are already buffered go out together, as
Postfix's smtpd sends them.

    bench/chunking-sink.py HOST:PORT
"""

import asyncio
import sys

EHLO = (
    b"250-sink.invalid\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n"
    b"250-8BITMIME\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n"
)


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    out = bytearray(b"220 sink.invalid ESMTP\r\n")
    try:
        while True:
            # Replies wait while the client's next command is already here (pipelining).
            if out and not reader._buffer:  # noqa: SLF001 (no public "bytes pending")
                writer.write(bytes(out))
                out.clear()
                await writer.drain()
            line = await reader.readline()
            if not line:
                return
            cmd = line.rstrip(b"\r\n").upper()
            verb = cmd.split(b" ", 1)[0]
            if verb == b"EHLO":
                out += EHLO
            elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                out += b"250 2.0.0 Ok\r\n"
            elif verb == b"DATA":
                writer.write(bytes(out) + b"354 End data with <CR><LF>.<CR><LF>\r\n")
                out.clear()
                await writer.drain()
                while (await reader.readline()) not in (b".\r\n", b""):
                    pass
                out += b"250 2.0.0 Ok: queued as SINK\r\n"
            elif verb == b"BDAT":
                words = cmd.split()
                await reader.readexactly(int(words[1]))
                last = words[2:] == [b"LAST"]
                out += b"250 2.0.0 Ok: queued as SINK\r\n" if last else b"250 2.0.0 Ok\r\n"
            elif verb == b"QUIT":
                writer.write(bytes(out) + b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                out += b"502 5.5.2 Error: command not recognized\r\n"
    except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
        return
    finally:
        writer.close()


async def main() -> None:
    host, _, port = sys.argv[1].rpartition(":")
    server = await asyncio.start_server(session, host, int(port), backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
