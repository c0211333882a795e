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


# --- the egress world ------------------------------------------------------------------------------
#
# `serve` plays every host of the world behind the test's host namespace (see prelude.sh,
# EGRESS_WORLD) from one process; `probe` tries a list of destinations from the guest and prints
# one line each; `tcp-hold` keeps one connection open across a change made meanwhile.


def split_endpoint(text):
    """`10.1.2.3:80` or `[fd42::3]:80` -> ("10.1.2.3", 80) or ("fd42::3", 80)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port:
        raise ValueError("%r is not ADDR:PORT or [ADDR]:PORT" % text)
    return host, int(port)


def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def show_endpoint(addr, port):
    return ("[%s]:%d" if ":" in addr else "%s:%d") % (addr, port)


def listener(kind, addr, port):
    family = family_of(addr)
    s = socket.socket(family, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        # `::` then serves IPv6 only, beside a `0.0.0.0` socket on the same port.
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))
    if kind != "udp":
        s.listen(64)
    return s


def serve(ready_file, *specs):
    """Serves every SPEC, `KIND:ADDR:PORT` with ADDR in brackets for IPv6, from one process:
      tcp   answers each connection with `peer IP` and closes (as tcp-whoami)
      echo  TCP: echoes everything back until the client closes
      udp   echoes each datagram to its sender
    Binding each address (not 0.0.0.0) makes every UDP reply leave from the address the datagram
    came to. Logs one line per connection or datagram, `KIND ADDR:PORT from PEER[ N bytes]`
    (ADDR:PORT as the client reached it), so a scenario can tell which destination a flow
    reached. Creates READY_FILE once all listen."""
    sockets = []
    for spec in specs:
        kind, _, endpoint = spec.partition(":")
        if kind not in ("tcp", "echo", "udp"):
            raise ValueError("unknown kind in %r" % spec)
        addr, port = split_endpoint(endpoint)
        sockets.append((kind, show_endpoint(addr, port), listener(kind, addr, port)))

    def peer_text(peer):
        return show_endpoint(peer[0], peer[1])

    def udp_loop(name, s):
        while True:
            data, peer = s.recvfrom(65535)
            log("udp %s from %s %d bytes" % (name, peer_text(peer), len(data)))
            s.sendto(data, peer)

    def tcp_conn(kind, conn, peer):
        # The address the client reached (the listener may be bound to 0.0.0.0).
        name = peer_text(conn.getsockname())
        try:
            log("%s %s from %s" % (kind, name, peer_text(peer)))
            if kind == "tcp":
                conn.sendall(("peer %s\n" % peer[0]).encode())
            else:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)
        except OSError as e:
            log("%s %s from %s: %s" % (kind, name, peer_text(peer), e))
        finally:
            conn.close()

    def accept_loop(kind, _name, s):
        while True:
            conn, peer = s.accept()
            threading.Thread(target=tcp_conn, args=(kind, conn, peer), daemon=True).start()

    for kind, name, s in sockets:
        target = udp_loop if kind == "udp" else accept_loop
        args = (name, s) if kind == "udp" else (kind, name, s)
        threading.Thread(target=target, args=args, daemon=True).start()
    log("ready: %d sockets" % len(sockets))
    with open(ready_file + ".tmp", "w") as f:
        f.write("ready\n")
    os.rename(ready_file + ".tmp", ready_file)
    threading.Event().wait()


def errno_name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else str(e)


def probe_tcp(addr, port, timeout):
    """Connects; reads the first line (a `tcp` server's `peer IP`) if one comes within a second."""
    s = socket.socket(family_of(addr), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
    except ConnectionRefusedError:
        return "refused", ""
    except socket.timeout:
        return "timeout", ""
    except OSError as e:
        return errno_name(e), ""
    s.settimeout(1.0)
    try:
        line = s.makefile("rb").readline().decode(errors="replace").strip()
    except (OSError, socket.timeout):
        line = ""
    return "ok", line or "connected, no data"


def probe_udp(addr, port, timeout, payload=None):
    """A connected socket, so that an ICMP error shows up as the errno of the next recv."""
    payload = payload or os.urandom(32)
    s = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    s.connect((addr, port))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            s.send(payload)
            s.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
            try:
                data = s.recv(65535)
            except socket.timeout:
                continue
            if data == payload:
                return "ok", "echo of %d bytes" % len(data)
            return "ok", data  # an answer, not an echo: probe_dns reads it
    except ConnectionRefusedError:
        return "refused", ""
    except OSError as e:
        return errno_name(e), ""
    return "timeout", ""


def dns_question(name):
    qid = (os.getpid() + int(time.monotonic() * 1000)) & 0xFFFF
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    return qid, struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def dns_summary(reply, question):
    """`NOERROR 192.0.2.53`, from a reply to a question for one name (as dns_query reads it)."""
    rcode = reply[3] & 0xF
    words = [{0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN"}.get(rcode, "RCODE%d" % rcode)]
    ancount = struct.unpack("!H", reply[6:8])[0]
    pos = len(question)
    for _ in range(ancount):
        rtype, _rclass, _ttl, rdlen = struct.unpack("!HHIH", reply[pos + 2 : pos + 12])
        if rtype == 1:
            words.append(socket.inet_ntoa(reply[pos + 12 : pos + 12 + rdlen]))
        pos += 12 + rdlen
    return " ".join(words)


def probe_dns(addr, port, timeout, transport):
    """A for tapir.test (big.tapir.test over TCP: the fake server answers that only over TCP)."""
    name = "big.tapir.test" if transport == "tcp" else "tapir.test"
    _qid, question = dns_question(name)
    if transport == "udp":
        outcome, reply = probe_udp(addr, port, timeout, question)
        return (outcome, dns_summary(reply, question) if outcome == "ok" else "")
    s = socket.socket(family_of(addr), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        s.sendall(struct.pack("!H", len(question)) + question)
        f = s.makefile("rb")
        reply = f.read(struct.unpack("!H", f.read(2))[0])
    except ConnectionRefusedError:
        return "refused", ""
    except socket.timeout:
        return "timeout", ""
    except (OSError, struct.error) as e:
        return (errno_name(e) if isinstance(e, OSError) else "short reply"), ""
    return "ok", dns_summary(reply, question)


def inet_checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def probe_icmp(addr, timeout):
    """One echo request from a raw socket (the guest is root in its user namespace), which also
    sees the ICMP errors: `prohibited` is "communication administratively prohibited" (ICMP 3/13,
    ICMPv6 1/1) about this very request; other errors are `unreachable T/C`."""
    v6 = ":" in addr
    ident = os.getpid() & 0xFFFF
    payload = os.urandom(16)
    if v6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        request = struct.pack("!BBHHH", 128, 0, 0, ident, 1) + payload  # the kernel sums it
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        request = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + payload
        request = request[:2] + struct.pack("!H", inet_checksum(request)) + request[4:]
    target = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, addr)
    s.sendto(request, (addr, 0))
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout", ""
        s.settimeout(left)
        try:
            packet, peer = s.recvfrom(65535)
        except socket.timeout:
            return "timeout", ""
        if v6:
            icmp, inner = packet, packet[8:]
            inner_dst, inner_icmp = inner[24:40], inner[40:48]
            echo_reply, unreachable, prohibited = 129, 1, 1
        else:
            icmp = packet[(packet[0] & 0xF) * 4 :]
            inner = icmp[8:]
            inner_ihl = (inner[0] & 0xF) * 4 if inner else 0
            inner_dst, inner_icmp = inner[16:20], inner[inner_ihl : inner_ihl + 8]
            echo_reply, unreachable, prohibited = 0, 3, 13
        if len(icmp) < 8:
            continue
        kind, code = icmp[0], icmp[1]
        if kind == echo_reply and icmp[4:8] == struct.pack("!HH", ident, 1):
            if icmp[8:] == payload:
                return "ok", "echo reply from %s" % peer[0]
            continue
        about_us = inner_dst == target and inner_icmp[4:6] == struct.pack("!H", ident)
        if kind == unreachable and about_us:
            word = "prohibited" if code == prohibited else "unreachable %d/%d" % (kind, code)
            return word, "from %s" % peer[0]


def probe(*specs):
    """Tries each SPEC in turn and prints one line for it, `PROTO DEST OUTCOME after N s[: DETAIL]`:
      tcp:ADDR:PORT     connect (and read a `tcp` server's `peer IP` line)
      udp:ADDR:PORT     a datagram to an echo server, from a connected socket
      icmp:ADDR         an echo request from a raw socket
      dns:ADDR          A tapir.test over UDP port 53    dnstcp:ADDR  A big.tapir.test over TCP
    IPv6 addresses go in brackets before a port. OUTCOME is `ok`, `refused`, `timeout`,
    `prohibited` (ICMP administratively prohibited, seen by icmp), `unreachable T/C`, or the errno
    the socket reported (`EHOSTUNREACH`, `EACCES`, ...). A leading `--timeout=S` sets the time
    each probe may take (default 3 s). Exit status 0 whatever happened: the scenario judges."""
    timeout = 3.0
    if specs and specs[0].startswith("--timeout="):
        timeout = float(specs[0].split("=", 1)[1])
        specs = specs[1:]
    for spec in specs:
        proto, _, dest = spec.partition(":")
        start = time.monotonic()
        try:
            if proto == "tcp":
                outcome, detail = probe_tcp(*split_endpoint(dest), timeout)
            elif proto == "udp":
                outcome, detail = probe_udp(*split_endpoint(dest), timeout)
            elif proto == "icmp":
                outcome, detail = probe_icmp(dest.strip("[]"), timeout)
            elif proto in ("dns", "dnstcp"):
                transport = "tcp" if proto == "dnstcp" else "udp"
                outcome, detail = probe_dns(dest.strip("[]"), 53, timeout, transport)
            else:
                raise ValueError("unknown protocol in %r" % spec)
        except (OSError, ValueError) as e:
            outcome, detail = "error", str(e)
        line = "%s %s %s after %.3f s" % (proto, dest, outcome, time.monotonic() - start)
        print(line + (": %s" % detail if detail else ""), flush=True)


def tcp_hold(addr, port, directory):
    """Keeps one connection to an `echo` server open across a change the scenario makes
    meanwhile: sends `one`, writes the outcome to DIRECTORY/1; waits (up to 60 s) for
    DIRECTORY/go; sends `two` on the same connection and writes the outcome to DIRECTORY/2. Each
    outcome is `one ok` / `two ok` or says what went wrong."""

    def put(name, text):
        path = os.path.join(directory, name)
        with open(path + ".tmp", "w") as f:
            f.write(text + "\n")
        os.rename(path + ".tmp", path)
        log(text)

    def exchange(f, s, word):
        try:
            s.sendall((word + "\n").encode())
            line = f.readline().decode(errors="replace").strip()
        except (OSError, socket.timeout) as e:
            return "%s failed: %s" % (word, errno_name(e) if isinstance(e, OSError) else e)
        return "%s ok" % word if line == word else "%s failed: got %r" % (word, line)

    try:
        s = socket.create_connection((addr, int(port)), timeout=CLIENT_TIMEOUT)
    except OSError as e:
        put("1", "connect failed: %s" % errno_name(e))
        return
    f = s.makefile("rb")
    put("1", exchange(f, s, "one"))
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(directory, "go")):
        if time.monotonic() > deadline:
            put("2", "two failed: no go within 60 s")
            return
        time.sleep(0.05)
    put("2", exchange(f, s, "two"))


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
    "serve": serve,
    "probe": probe,
    "tcp-hold": tcp_hold,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit("usage: actors.py {%s} ARGS..." % ",".join(COMMANDS))
    try:
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    except (OSError, ValueError) as e:
        print("%s failed: %s" % (sys.argv[1], e))
        sys.exit(1)
