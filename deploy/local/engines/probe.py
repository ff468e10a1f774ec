#!/usr/bin/env python3
"""Asks a running engine whether it serves, over its own wire protocol.

    probe.py kafka HOST:PORT   Kafka Metadata v1: prints "brokers=N controller=ID"
    probe.py cql HOST:PORT     CQL native protocol v4: prints the server's
                               release_version from system.local
    probe.py cql HOST:PORT "STATEMENT"
                               runs one CQL statement (no bind values) and
                               prints the first column of each row it returns
                               (text, int and bigint columns)

Exits 0 when the engine answered, 1 (with the reason) when it did not. No
client library: deploy/local/engines.sh runs it before anything is installed.
"""
import socket
import struct
import sys


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-frame")
        data += chunk
    return data


def kafka(address):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        client = b"broadside-probe"
        # Request header v1 (api key 3 Metadata, version 1, correlation id 7,
        # client id), then Metadata v1's body: topics = null (all topics).
        body = struct.pack(">hhih", 3, 1, 7, len(client)) + client + struct.pack(">i", -1)
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", recv_exact(sock, 4))[0]
        payload = recv_exact(sock, size)
    correlation, brokers = struct.unpack(">ii", payload[:8])
    if correlation != 7:
        raise ValueError(f"unexpected correlation id {correlation}")
    offset = 8
    for _ in range(brokers):
        offset += 4  # node id
        host_len = struct.unpack(">h", payload[offset:offset + 2])[0]
        offset += 2 + host_len + 4  # host, port
        rack_len = struct.unpack(">h", payload[offset:offset + 2])[0]
        offset += 2 + max(rack_len, 0)
    controller = struct.unpack(">i", payload[offset:offset + 4])[0]
    if brokers < 1:
        raise ValueError("the broker lists no brokers yet")
    return f"brokers={brokers} controller={controller}"


def cql_frame(opcode, body, stream=1):
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body


def cql_read(sock):
    version, flags, _stream, opcode, length = struct.unpack(">BBhBi", recv_exact(sock, 9))
    body = recv_exact(sock, length)
    if flags & 0x02:  # tracing: a session id comes first
        body = body[16:]
    if flags & 0x08:  # warnings: a [string list] comes first
        count, offset = struct.unpack(">H", body[:2])[0], 2
        for _ in range(count):
            offset += 2 + struct.unpack(">H", body[offset:offset + 2])[0]
        body = body[offset:]
    if opcode == 0x00:  # ERROR: [int code][string message]
        code = struct.unpack(">i", body[:4])[0]
        message_len = struct.unpack(">H", body[4:6])[0]
        raise RuntimeError(f"server error 0x{code:04x}: {body[6:6 + message_len].decode()}")
    return opcode, body


def cql(address, statement="SELECT release_version FROM system.local"):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        key, value = b"CQL_VERSION", b"3.0.0"
        startup = struct.pack(">H", 1) + struct.pack(">H", len(key)) + key + struct.pack(">H", len(value)) + value
        sock.sendall(cql_frame(0x01, startup))
        opcode, _ = cql_read(sock)
        if opcode != 0x02:
            raise RuntimeError(f"expected READY, got opcode {opcode} (authentication is not supported by this probe)")
        query = statement.encode()
        body = struct.pack(">i", len(query)) + query + struct.pack(">HB", 0x0001, 0)  # consistency ONE, no flags
        sock.sendall(cql_frame(0x07, body, stream=2))
        opcode, body = cql_read(sock)
    kind = struct.unpack(">i", body[:4])[0]
    if opcode != 0x08:
        raise RuntimeError(f"expected a RESULT, got opcode {opcode}")
    if kind != 0x0002:  # Void, SetKeyspace, SchemaChange: done
        return ""
    flags, columns = struct.unpack(">ii", body[4:12])
    offset = 12
    if flags & 0x0002:  # has_more_pages: skip the paging state
        offset += 4 + struct.unpack(">i", body[offset:offset + 4])[0]
    global_spec = flags & 0x0001
    if global_spec:  # keyspace and table names, once
        for _ in range(2):
            offset += 2 + struct.unpack(">H", body[offset:offset + 2])[0]
    types = []
    for _ in range(columns):  # [keyspace, table,] name, type id (simple types only)
        for _ in range(1 if global_spec else 3):
            offset += 2 + struct.unpack(">H", body[offset:offset + 2])[0]
        types.append(struct.unpack(">H", body[offset:offset + 2])[0])
        offset += 2
    rows = struct.unpack(">i", body[offset:offset + 4])[0]
    offset += 4
    values = []
    for _ in range(rows):
        for column in range(columns):
            length = struct.unpack(">i", body[offset:offset + 4])[0]
            cell = body[offset + 4:offset + 4 + max(length, 0)]
            offset += 4 + max(length, 0)
            if column == 0:
                values.append(decode_cell(types[0], cell, length))
    if statement.startswith("SELECT release_version") and not values:
        raise RuntimeError("system.local has no row")
    return "\n".join(values)


def decode_cell(type_id, cell, length):
    if length < 0:
        return "null"
    if type_id in (0x0002, 0x0009):  # bigint, int
        return str(int.from_bytes(cell, "big", signed=True))
    return cell.decode(errors="replace")


def main():
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in ("kafka", "cql") or (len(sys.argv) == 4 and sys.argv[1] != "cql"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        print({"kafka": kafka, "cql": cql}[sys.argv[1]](*sys.argv[2:]))
        return 0
    except Exception as error:  # the caller prints this and retries
        what = "does not answer yet" if len(sys.argv) == 3 else "refused the statement"
        print(f"{sys.argv[1]} at {sys.argv[2]} {what}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
