#!/usr/bin/python3
"""The small programs that play host, remote host and guest in tapir's integration tests.

Theory of operation: every scenario needs a few servers and clients whose behaviour is exact and
whose output is easy to check with grep. socat and curl cover the plain cases; the rest live here,
written against the Python standard library only, so that a fresh Debian machine with `python3`
runs them. Servers run until killed (the harness kills every process of a world at its end) and
log one line per request to stdout, which the harness sends to $W/log/NAME.log. Clients print one
result line to stdout and exit 0 only on the expected outcome; every client has its own timeout,
so a broken network path fails the scenario instead of hanging it.

Usage: actors.py COMMAND ARGS...   (see the `COMMANDS` table at the bottom)
"""

import errno
import hashlib
import os
import socket
import socketserver
import struct
import sys
import threading
import time

CLIENT_TIMEOUT = 10.0


def log(line):
    print(line, flush=True)


# --- DNS ------------------------------------------------------------------------------------------
#
# The fake upstream resolver. It knows three names and nothing else:
#   tapir.test.      A 192.0.2.53 over UDP and TCP
#   big.tapir.test.  over UDP: an empty answer with TC set; over TCP: A 192.0.2.54
#                    (so an answer of 192.0.2.54 proves the query was retried over TCP)
#   anything else    NXDOMAIN
# AAAA (or any other type) for a known name gets NOERROR with no answer.

DNS_A = {"tapir.test.": "192.0.2.53"}
DNS_TC_OVER_UDP = {"big.tapir.test.": "192.0.2.54"}
QTYPE_NAMES = {1: "A", 28: "AAAA"}


def dns_parse_question(msg):
    """Returns (id, flags, qname, qtype, end_of_question) or raises ValueError."""
    if len(msg) < 12:
        raise ValueError("short header")
    qid, flags, qdcount = struct.unpack("!HHH", msg[:6])
    if qdcount != 1:
        raise ValueError("qdcount %d" % qdcount)
    labels, pos = [], 12
    while True:
        if pos >= len(msg):
            raise ValueError("name runs past the end")
        n = msg[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0:
            raise ValueError("compressed name in question")
        labels.append(msg[pos : pos + n].decode("ascii", "replace"))
        pos += n
    if pos + 4 > len(msg):
        raise ValueError("question runs past the end")
    qtype, _qclass = struct.unpack("!HH", msg[pos : pos + 4])
    return qid, flags, ".".join(labels).lower() + ".", qtype, pos + 4


def dns_answer(query, transport):
    qid, flags, qname, qtype, qend = dns_parse_question(query)
    rd = flags & 0x0100
    rcode, tc, address = 0, 0, None
    if qname in DNS_A:
        address = DNS_A[qname]
    elif qname in DNS_TC_OVER_UDP:
        if transport == "udp":
            tc = 0x0200
        else:
            address = DNS_TC_OVER_UDP[qname]
    else:
        rcode = 3
    if qtype != 1:
        address = None
    log("%s %s %s" % (transport, QTYPE_NAMES.get(qtype, str(qtype)), qname))
    answers = b""
    if address is not None:
        rdata = socket.inet_aton(address)
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, len(rdata)) + rdata
    header = struct.pack(
        "!HHHHHH", qid, 0x8000 | 0x0080 | rd | tc | rcode, 1, 1 if answers else 0, 0, 0
    )
    return header + query[12:qend] + answers


def dns_server(bind="127.0.0.1", port="53"):
    port = int(port)

    class Udp(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            try:
                sock.sendto(dns_answer(data, "udp"), self.client_address)
            except ValueError as e:
                log("udp malformed query: %s" % e)

    class Tcp(socketserver.BaseRequestHandler):
        def handle(self):
            f = self.request.makefile("rb")
            while True:
                head = f.read(2)
                if len(head) < 2:
                    return
                data = f.read(struct.unpack("!H", head)[0])
                try:
                    reply = dns_answer(data, "tcp")
                except ValueError as e:
                    log("tcp malformed query: %s" % e)
                    return
                self.request.sendall(struct.pack("!H", len(reply)) + reply)

    socketserver.ThreadingUDPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    udp = socketserver.ThreadingUDPServer((bind, port), Udp)
    tcp = socketserver.ThreadingTCPServer((bind, port), Tcp)
    threading.Thread(target=udp.serve_forever, daemon=True).start()
    tcp.serve_forever()


def dns_query(server, name, transport="udp"):
    """Prints `RCODE [TC] addr...`, e.g. `NOERROR 192.0.2.53` or `NXDOMAIN`."""
    qid = os.getpid() & 0xFFFF
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    if transport == "tcp":
        s = socket.create_connection((server, 53), timeout=CLIENT_TIMEOUT)
        s.sendall(struct.pack("!H", len(query)) + query)
        f = s.makefile("rb")
        reply = f.read(struct.unpack("!H", f.read(2))[0])
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(CLIENT_TIMEOUT)
        s.sendto(query, (server, 53))
        reply, peer = s.recvfrom(65535)
        if peer != (server, 53):
            print("reply from unexpected source %s:%d" % peer)
            sys.exit(1)
    rid, flags, _qd, ancount, _ns, _ar = struct.unpack("!HHHHHH", reply[:12])
    if rid != qid:
        print("reply id %d does not match query id %d" % (rid, qid))
        sys.exit(1)
    words = [{0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN"}.get(flags & 0xF, "RCODE%d" % (flags & 0xF))]
    if flags & 0x0200:
        words.append("TC")
    pos = 12 + len(qname) + 4
    for _ in range(ancount):
        # The fake server always compresses the answer name to a 2-byte pointer.
        rtype, _rclass, _ttl, rdlen = struct.unpack("!HHIH", reply[pos + 2 : pos + 12])
        rdata = reply[pos + 12 : pos + 12 + rdlen]
        if rtype == 1:
            words.append(socket.inet_ntoa(rdata))
        pos += 12 + rdlen
    print(" ".join(words))


# --- UDP ------------------------------------------------------------------------------------------


def udp_echo(bind, port):
    """Echoes each datagram to its sender and logs `from IP:PORT N bytes`."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((bind, int(port)))
    while True:
        data, peer = s.recvfrom(65535)
        log("from %s:%d %d bytes" % (peer[0], peer[1], len(data)))
        s.sendto(data, peer)


def udp_ask(addr, port, size="32"):
    """Sends SIZE bytes from an unconnected socket and checks that the echo comes back whole from
    ADDR:PORT itself. Prints `echo from IP:PORT N bytes ok`. Retries twice: UDP may be dropped."""
    payload = os.urandom(int(size))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3.0)
    for _attempt in range(3):
        s.sendto(payload, (addr, int(port)))
        try:
            data, peer = s.recvfrom(65535)
        except socket.timeout:
            continue
        if peer != (addr, int(port)):
            print("echo came from %s:%d, not from %s:%s" % (peer[0], peer[1], addr, port))
            sys.exit(1)
        if data != payload:
            print("echo from %s:%d differs: %d bytes back for %d sent" % (*peer, len(data), len(payload)))
            sys.exit(1)
        print("echo from %s:%d %d bytes ok" % (peer[0], peer[1], len(data)))
        return
    print("no echo from %s:%s after 3 tries" % (addr, port))
    sys.exit(1)


# --- TCP ------------------------------------------------------------------------------------------


def tcp_server(bind, port, handler):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            handler(self.request, self.client_address)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    socketserver.ThreadingTCPServer((bind, int(port)), Handler).serve_forever()


def tcp_whoami(bind, port):
    """Answers every connection with `peer IP` and closes: shows the source address a flow got."""

    def handle(conn, peer):
        log("connection from %s:%d" % peer)
        conn.sendall(("peer %s\n" % peer[0]).encode())

    tcp_server(bind, port, handle)


def tcp_echo_after_eof(bind, port):
    """Reads until the client shuts down its write side, waits a little (so the connection sits
    half-closed), then sends back everything it read and closes."""

    def handle(conn, peer):
        chunks = []
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            chunks.append(data)
        data = b"".join(chunks)
        log("from %s:%d read %d bytes until EOF" % (peer[0], peer[1], len(data)))
        time.sleep(0.5)
        conn.sendall(data)
        log("echoed %d bytes after EOF" % len(data))

    tcp_server(bind, port, handle)


def tcp_half_close(addr, port, size):
    """Sends SIZE random bytes, shuts down its write side, then reads the echo until EOF.
    Prints `sent N, received M after half-close, sha256 equal`."""
    payload = os.urandom(int(size))
    s = socket.create_connection((addr, int(port)), timeout=CLIENT_TIMEOUT)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    chunks = []
    while True:
        data = s.recv(1 << 16)
        if not data:
            break
        chunks.append(data)
    echo = b"".join(chunks)
    same = hashlib.sha256(echo).digest() == hashlib.sha256(payload).digest()
    print(
        "sent %d, received %d after half-close, sha256 %s"
        % (len(payload), len(echo), "equal" if same else "DIFFERENT")
    )
    sys.exit(0 if same else 1)


def tcp_sha256(bind, port):
    """Reads each connection to EOF, then answers `N bytes sha256 HEX` and closes: a sink whose
    answer tells the sender that everything arrived."""

    def handle(conn, peer):
        digest, total = hashlib.sha256(), 0
        while True:
            data = conn.recv(1 << 18)
            if not data:
                break
            digest.update(data)
            total += len(data)
        answer = "%d bytes sha256 %s" % (total, digest.hexdigest())
        log("from %s:%d %s" % (peer[0], peer[1], answer))
        conn.sendall((answer + "\n").encode())

    tcp_server(bind, port, handle)


def tcp_send(path, addr, port):
    """Sends the file at PATH, shuts down its write side and prints the peer's answer (see
    tcp-sha256). It returns only once the peer has read everything, so the sender's exit (and
    with it, under `tapir run`, the guest network's) cannot cut the transfer short."""
    s = socket.create_connection((addr, int(port)), timeout=CLIENT_TIMEOUT)
    with open(path, "rb") as f:
        s.sendfile(f)
    s.shutdown(socket.SHUT_WR)
    tcp_read_to_eof(s)


def tcp_read_to_eof(s):
    chunks = []
    while True:
        data = s.recv(4096)
        if not data:
            break
        chunks.append(data)
    sys.stdout.write(b"".join(chunks).decode())


def tcp_ask(addr, port):
    """Connects, reads until EOF, prints what it read."""
    tcp_read_to_eof(socket.create_connection((addr, int(port)), timeout=CLIENT_TIMEOUT))


def tcp_connect(addr, port, timeout=str(CLIENT_TIMEOUT)):
    """Tries one connect and prints how it ended and how long it took, e.g.
    `refused after 0.002 s`, `connected after 0.001 s`, `timed out after 10.0 s`, or
    `ENETUNREACH after 0.000 s`. Exit status is 0 whatever happened: the scenario judges."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(float(timeout))
    start = time.monotonic()
    try:
        s.connect((addr, int(port)))
        outcome = "connected"
    except ConnectionRefusedError:
        outcome = "refused"
    except socket.timeout:
        outcome = "timed out"
    except OSError as e:
        outcome = errno.errorcode.get(e.errno, str(e.errno))
    print("%s after %.3f s" % (outcome, time.monotonic() - start))


# --- the slirp4netns API ---------------------------------------------------------------------------


def s4nn_api(path, request):
    """One request to a slirp4netns API socket, framed as its clients do: connect to the UNIX
    socket PATH, write REQUEST, shut down the write side (the end of a request), read the reply
    until the server closes. Prints the reply exactly as it came (slirp4netns adds no newline)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(CLIENT_TIMEOUT)
    s.connect(path)
    s.sendall(request.encode())
    s.shutdown(socket.SHUT_WR)
    tcp_read_to_eof(s)
    print()


COMMANDS = {
    "dns-server": dns_server,
    "dns-query": dns_query,
    "udp-echo": udp_echo,
    "udp-ask": udp_ask,
    "tcp-whoami": tcp_whoami,
    "tcp-echo-after-eof": tcp_echo_after_eof,
    "tcp-half-close": tcp_half_close,
    "tcp-sha256": tcp_sha256,
    "tcp-send": tcp_send,
    "tcp-ask": tcp_ask,
    "tcp-connect": tcp_connect,
    "s4nn-api": s4nn_api,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit("usage: actors.py {%s} ARGS..." % ",".join(COMMANDS))
    try:
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    except (OSError, ValueError) as e:
        print("%s failed: %s" % (sys.argv[1], e))
        sys.exit(1)
