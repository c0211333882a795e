#!/usr/bin/python3
"""The hostile guest (and its host-side accomplices) of tests/hostile.rs.

Theory of operation: each flood runs in the guest for a bounded time while a *keeper* thread
keeps one established connection to a host echo server busy: it sends 64 KiB of random bytes,
reads them back and compares, over and over. The flood's own outcome and the keeper's (rounds,
bytes, mismatches, rounds completed while the flood ran, the longest wait for one round) are
printed as `key=value` words on one line, which the scenario checks. Standard library only; the
guest is root in its user namespace, so raw and packet sockets are allowed.

Usage: hostile.py COMMAND ARGS...   (see COMMANDS at the bottom)
"""

import os
import random
import resource
import select
import socket
import struct
import sys
import threading
import time

# actors.py lies beside this file in the world's directory.
from actors import inet_checksum

GUEST = "10.0.2.100"
GATEWAY = "10.0.2.2"
GATEWAY_MAC = bytes.fromhex("52550a000202")
CHUNK = 64 * 1024


def raise_fd_limit():
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Keeper(threading.Thread):
    """One established connection that must keep working, checked byte for byte."""

    def __init__(self, addr, port):
        super().__init__(daemon=True)
        self.sock = socket.create_connection((addr, int(port)), timeout=20)
        self.stop = threading.Event()
        self.rounds, self.bytes, self.errors, self.max_gap = 0, 0, 0, 0.0
        self.done_at = []
        self.problem = ""

    def run(self):
        last = time.monotonic()
        try:
            while not self.stop.is_set():
                data = os.urandom(CHUNK)
                self.sock.sendall(data)
                got = bytearray()
                while len(got) < len(data):
                    piece = self.sock.recv(len(data) - len(got))
                    if not piece:
                        raise OSError("the echo server closed")
                    got += piece
                if got != data:
                    self.errors += 1
                now = time.monotonic()
                self.max_gap = max(self.max_gap, now - last)
                last = now
                self.rounds += 1
                self.bytes += len(data)
                self.done_at.append(now)
        except OSError as e:
            self.problem = str(e).replace(" ", "_") or "error"
            self.errors += 1

    def report(self, start, end):
        self.stop.set()
        self.join(25)
        during = sum(1 for t in self.done_at if start <= t <= end)
        return "keeper_rounds=%d keeper_bytes=%d keeper_errors=%d keeper_during=%d keeper_max_gap=%.2f%s" % (
            self.rounds,
            self.bytes,
            self.errors + (1 if self.is_alive() else 0),
            during,
            self.max_gap,
            (" keeper_problem=" + self.problem) if self.problem else "",
        )


def flood_connect(seconds, count, port):
    """Opens COUNT connections to the host's PORT at once (non-blocking) and holds them for
    SECONDS: those over tapir's flow limit never complete."""
    socks, connected, refused = [], 0, 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((GATEWAY, port))
        socks.append(s)
    deadline = time.monotonic() + seconds
    pending = {s.fileno(): s for s in socks}
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    while pending and time.monotonic() < deadline:
        for fd, _ev in poller.poll(100):
            s = pending.pop(fd)
            poller.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected += 1
            else:
                refused += 1
    for s in socks:
        s.close()
    return "connected=%d refused=%d pending=%d" % (connected, refused, len(pending))


def tcp_syn(src, dst, sport, dport):
    seq = random.getrandbits(32)
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(header))
    return header[:16] + struct.pack("!H", inet_checksum(pseudo + header)) + header[18:]


def flood_syn(seconds, blackhole):
    """SYNs from a raw socket, as fast as it goes: to closed ports of the host's loopback (a RST
    each) and to BLACKHOLE:80, which never answers (half-open flows, up to tapir's limit)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    sent = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(64):
            sport = random.randint(1024, 65535)
            if sent % 2:
                dst, dport = GATEWAY, random.randint(20000, 60000)
            else:
                dst, dport = blackhole, 80
            try:
                s.sendto(tcp_syn(GUEST, dst, sport, dport), (dst, 0))
                sent += 1
            except OSError:
                failed += 1
                time.sleep(0.001)
    return "syns=%d send_failures=%d" % (sent, failed)


def flood_udp(seconds):
    """A datagram to every port of the host's loopback, 1 to 65535, then again until SECONDS."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = failed = rounds = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or rounds == 0:
        for port in range(1, 65536):
            try:
                s.sendto(b"hostile %d" % port, (GATEWAY, port))
                sent += 1
            except OSError:
                failed += 1
        rounds += 1
    return "datagrams=%d send_failures=%d sweeps=%d" % (sent, failed, rounds)


def flood_big(seconds, sink_port, streams):
    """Maximum-size frames without pause: STREAMS TCP connections to a host server that never
    reads (the guest's TSO hands tapir 64 KiB segments, and tapir's buffers fill), and 65534-byte
    frames written to tap0 with a packet socket (UDP to the host, and junk)."""
    conns = []
    for _ in range(streams):
        c = socket.create_connection((GATEWAY, sink_port), timeout=10)
        c.setblocking(False)
        conns.append(c)
    packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    packet.bind(("tap0", 0))
    ours = packet.getsockname()[4]
    payload_len = 65534 - 14 - 20 - 8
    udp = struct.pack("!HHHH", 40000, 9, 8 + payload_len, 0) + os.urandom(payload_len)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
        socket.inet_aton(GUEST), socket.inet_aton(GATEWAY),
    )
    ip = ip[:10] + struct.pack("!H", inet_checksum(ip)) + ip[12:]
    frames = [
        GATEWAY_MAC + ours + b"\x08\x00" + ip + udp,
        GATEWAY_MAC + ours + b"\x08\x00" + os.urandom(65534 - 14),
        GATEWAY_MAC + ours + b"\x86\xdd" + os.urandom(65534 - 14),
    ]
    chunk = os.urandom(CHUNK)
    tcp_bytes = frames_sent = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for c in conns:
            try:
                tcp_bytes += c.send(chunk)
            except BlockingIOError:
                pass
        for f in frames:
            try:
                packet.send(f)
                frames_sent += 1
            except OSError:
                failed += 1
                time.sleep(0.001)
    for c in conns:
        c.close()
    return "tcp_bytes=%d big_frames=%d send_failures=%d" % (tcp_bytes, frames_sent, failed)


def echo_request(ident, seq, payload=b"tapir ping flood"):
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    return header[:2] + struct.pack("!H", inet_checksum(header)) + header[4:]


class Pinger(threading.Thread):
    """An ordinary ping beside the flood: one echo request every 200 ms with its own identifier
    from a raw socket, counting the replies that come back (by sequence number)."""

    IDENT = 0x7A7A

    def __init__(self, target, seconds):
        super().__init__(daemon=True)
        self.target, self.seconds = target, seconds
        self.sent, self.replies = 0, set()

    def run(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.settimeout(0.05)
        deadline = time.monotonic() + self.seconds
        next_send = time.monotonic()
        # Replies may come up to a second after the last request.
        while time.monotonic() < deadline + 1.0:
            now = time.monotonic()
            if now < deadline and now >= next_send:
                s.sendto(echo_request(self.IDENT, self.sent), (self.target, 0))
                self.sent += 1
                next_send += 0.2
            try:
                packet = s.recv(2048)
            except socket.timeout:
                continue
            icmp = packet[(packet[0] & 0x0F) * 4:]
            if len(icmp) >= 8 and icmp[0] == 0:
                ident, seq = struct.unpack("!HH", icmp[4:8])
                if ident == self.IDENT:
                    self.replies.add(seq)


def flood_ping(seconds, target, idents):
    """Echo requests from a raw socket to TARGET as fast as they go, cycling over IDENTS
    identifiers (one tapir flow each), while a Pinger runs beside them."""
    pinger = Pinger(target, seconds)
    pinger.start()
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    requests = [echo_request(0x1000 + i, 0) for i in range(idents)]
    sent = failed = 0
    start = time.monotonic()
    while time.monotonic() < start + seconds:
        for r in requests:
            try:
                s.sendto(r, (target, 0))
                sent += 1
            except OSError:
                failed += 1
                time.sleep(0.001)
    flood_secs = time.monotonic() - start
    pinger.join(5)
    return "echo_requests=%d send_failures=%d flood_secs=%.2f ping_sent=%d ping_replies=%d" % (
        sent, failed, flood_secs, pinger.sent, len(pinger.replies))


def flood(kind, keeper_port, seconds, *args):
    """Runs one flood for SECONDS while a keeper works against the host echo at KEEPER_PORT."""
    raise_fd_limit()
    seconds = float(seconds)
    keeper = Keeper(GATEWAY, keeper_port)
    keeper.start()
    time.sleep(0.5)
    start = time.monotonic()
    if kind == "connect":
        result = flood_connect(seconds, int(args[0]), int(args[1]))
    elif kind == "syn":
        result = flood_syn(seconds, args[0])
    elif kind == "udp":
        result = flood_udp(seconds)
    elif kind == "big":
        result = flood_big(seconds, int(args[0]), int(args[1]))
    elif kind == "ping":
        result = flood_ping(seconds, args[0], int(args[1]))
    elif kind == "none":
        time.sleep(seconds)
        result = "nothing"
    else:
        raise ValueError("unknown flood %r" % kind)
    end = time.monotonic()
    # The keeper goes on a little after the flood: tapir must have come through it.
    time.sleep(1.0)
    print("flood=%s elapsed=%.1f %s %s" % (kind, end - start, result, keeper.report(start, end)), flush=True)


def sink(port):
    """A host server that accepts and never reads (nor closes), with a deep backlog: connections
    pile up in it, and what clients send fills the kernel's buffers."""
    raise_fd_limit()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(port)))
    s.listen(4096)
    held = []
    print("sink ready", flush=True)
    while True:
        conn, _peer = s.accept()
        held.append(conn)


def sequential(count, port, marks):
    """COUNT connections one after the other to the host echo at PORT (connect, a line there
    and back, close). Touches MARKS/first after the first one and waits for MARKS/measured, so
    the scenario can count tapir's fds at that point; prints the tally at the end."""
    ok = bad = 0
    for i in range(int(count)):
        try:
            with socket.create_connection((GATEWAY, int(port)), timeout=10) as s:
                line = b"connection %d\n" % i
                s.sendall(line)
                got = b""
                while not got.endswith(b"\n"):
                    piece = s.recv(256)
                    if not piece:
                        break
                    got += piece
                ok += got == line
                bad += got != line
        except OSError:
            bad += 1
        if i == 0:
            open(os.path.join(marks, "first"), "w").close()
            deadline = time.monotonic() + 20
            while not os.path.exists(os.path.join(marks, "measured")) and time.monotonic() < deadline:
                time.sleep(0.05)
    print("sequential ok=%d bad=%d" % (ok, bad), flush=True)
    open(os.path.join(marks, "done"), "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(marks, "counted")) and time.monotonic() < deadline:
        time.sleep(0.05)


def reset_server(port):
    """Accepts, reads a line, answers `bye`, then resets the connection (SO_LINGER 0)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(port)))
    s.listen(16)
    print("reset-server ready", flush=True)
    while True:
        conn, _peer = s.accept()
        conn.recv(100)
        conn.sendall(b"bye\n")
        time.sleep(0.2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


def reset_client(port):
    """Talks to reset-server through the gateway and prints what the guest saw: `reset` when the
    host's RST became one towards the guest."""
    s = socket.create_connection((GATEWAY, int(port)), timeout=5)
    s.sendall(b"hello\n")
    s.settimeout(5)
    got = b""
    try:
        while True:
            piece = s.recv(100)
            if not piece:
                print("eof after %r" % got, flush=True)
                return
            got += piece
    except ConnectionResetError:
        print("reset after %r" % got, flush=True)
    except socket.timeout:
        print("timeout after %r" % got, flush=True)


def connect_many(count, addr, port):
    """COUNT connects to ADDR:PORT one after the other; returns the outcomes counted by kind
    (`ok=N refused=M ...`), holding the ok ones open until all are done."""
    held, tally = [], {}
    for _ in range(int(count)):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect((addr, int(port)))
            held.append(s)
            word = "ok"
        except ConnectionRefusedError:
            word = "refused"
        except socket.timeout:
            word = "timeout"
        except OSError as e:
            word = __import__("errno").errorcode.get(e.errno, str(e.errno))
        tally[word] = tally.get(word, 0) + 1
    for s in held:
        s.close()
    return " ".join("%s=%d" % kv for kv in sorted(tally.items()))


def emfile(port, marks):
    """While a keeper works against the host echo at PORT: touches MARKS/keeper and waits for
    MARKS/lowered (tapir's open-file limit was cut), tries 8 connections (`during_*`), touches
    MARKS/tried and waits for MARKS/raised, tries 3 more (`after_*`); prints it all."""

    def wait_for(name):
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(marks, name)):
            if time.monotonic() > deadline:
                raise OSError("no %s within 20 s" % name)
            time.sleep(0.05)

    keeper = Keeper(GATEWAY, port)
    keeper.start()
    time.sleep(0.3)
    open(os.path.join(marks, "keeper"), "w").close()
    wait_for("lowered")
    start = time.monotonic()
    during = connect_many(8, GATEWAY, port)
    time.sleep(0.5)
    end = time.monotonic()
    open(os.path.join(marks, "tried"), "w").close()
    wait_for("raised")
    after = connect_many(3, GATEWAY, port)
    time.sleep(0.5)
    words = lambda prefix, tally: " ".join(prefix + w for w in tally.split())
    print("%s %s %s" % (words("during_", during), words("after_", after), keeper.report(start, end)), flush=True)


def craft(port, v6_source, *targets):
    """Sends, from a packet socket on tap0, a TCP SYN, a UDP datagram and an ICMP echo request to
    each TARGET, a destination the guest's kernel would never put on the wire (127.0.0.1,
    0.0.0.0, ::1, ::ffff:127.0.0.1, ...), addressed to the gateway's MAC as if routed there."""
    packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    packet.bind(("tap0", 0x0003))
    ours = packet.getsockname()[4]
    port = int(port)
    sent = 0
    for target in targets:
        v6 = ":" in target
        if v6:
            src = socket.inet_pton(socket.AF_INET6, v6_source)
            dst = socket.inet_pton(socket.AF_INET6, target)
        else:
            src, dst = socket.inet_aton(GUEST), socket.inet_aton(target)
        for proto in (6, 17, 1):
            sport = random.randint(30000, 60000)
            if proto == 6:
                body = struct.pack("!HHIIBBHHH", sport, port, random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
            elif proto == 17:
                data = b"crafted to %s" % target.encode()
                body = struct.pack("!HHHH", sport, port, 8 + len(data), 0) + data
            else:
                proto = 58 if v6 else 1
                body = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, sport, 1) + b"crafted"
            if v6:
                pseudo = src + dst + struct.pack("!IxxxB", len(body), proto)
            elif proto == 1:
                pseudo = b""
            else:
                pseudo = src + dst + struct.pack("!BBH", 0, proto, len(body))
            csum = inet_checksum(pseudo + body)
            at = {6: 16, 17: 6, 1: 2, 58: 2}[proto]
            body = body[:at] + struct.pack("!H", csum) + body[at + 2 :]
            if v6:
                ip = struct.pack("!IHBB", 6 << 28, len(body), proto, 64) + src + dst
                ethertype = b"\x86\xdd"
            else:
                ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0, src, dst)
                ip = ip[:10] + struct.pack("!H", inet_checksum(ip)) + ip[12:]
                ethertype = b"\x08\x00"
            for _ in range(3):
                packet.send(GATEWAY_MAC + ours + ethertype + ip + body)
                sent += 1
    # What came back: an ICMP error about a target is a refusal; anything else from a target
    # (an echo reply, a SYN-ACK, a datagram) means the host's loopback answered.
    sources = set()
    for target in targets:
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        sources.add(socket.inet_pton(family, target))
    leaks = refusals = 0
    packet.settimeout(0.2)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        try:
            frame, addr = packet.recvfrom(65536)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING or len(frame) < 34:
            continue
        ethertype = frame[12:14]
        if ethertype == b"\x08\x00":
            src, proto, l4 = frame[26:30], frame[23], frame[14 + (frame[14] & 0xF) * 4 :]
            error = proto == 1 and l4[:1] == b"\x03"
        elif ethertype == b"\x86\xdd" and len(frame) >= 54:
            src, proto, l4 = frame[22:38], frame[20], frame[54:]
            error = proto == 58 and l4[:1] == b"\x01"
        else:
            continue
        if src not in sources:
            continue
        if error:
            refusals += 1
        else:
            leaks += 1
            print("LEAK proto %d from %s" % (proto, src.hex()), flush=True)
    print("crafted frames=%d leaks=%d refusals=%d" % (sent, leaks, refusals), flush=True)


def record(ready_file, port):
    """Listens on TCP and UDP PORT of 0.0.0.0 and :: and logs every connection or datagram:
    the host loopback listener that must hear nothing."""
    socks = []
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(family, kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, int(port)))
            if kind == socket.SOCK_STREAM:
                s.listen(64)
            socks.append(s)
    open(ready_file, "w").close()
    while True:
        readable, _, _ = select.select(socks, [], [])
        for s in readable:
            if s.type == socket.SOCK_STREAM:
                conn, peer = s.accept()
                print("REACHED tcp %s from %s" % (conn.getsockname()[0], peer[0]), flush=True)
                conn.close()
            else:
                data, peer = s.recvfrom(65535)
                print("REACHED udp %r from %s" % (data[:40], peer[0]), flush=True)


def api_abuse(path):
    """Each abusive request to the API socket at PATH, one line per request: what came back
    (`reply <json>`, `cut off`, `closed`), so the scenario can check each was refused."""

    def ask(data, shut=True, timeout=8):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = b""
        try:
            while True:
                piece = s.recv(65536)
                if not piece:
                    break
                got += piece
        except ConnectionResetError:
            pass
        except socket.timeout:
            return "timeout"
        return ("reply " + got.decode(errors="replace").strip()) if got else "closed"

    cases = [
        ("malformed", b'{"execute":'),
        ("not-json", b"\x00\xff garbage \xfe"),
        ("unknown", b'{"execute":"frobnicate"}'),
        ("port-70000", b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":70000,"guest_port":80}}'),
        ("guest-port-70000", b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":18090,"guest_port":70000}}'),
        ("negative-port", b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":-1,"guest_port":80}}'),
        ("huge-id", b'{"execute":"remove_hostfwd","arguments":{"id":18446744073709551616}}'),
        ("float-id", b'{"execute":"remove_hostfwd","arguments":{"id":1e300}}'),
        ("string-id", b'{"execute":"remove_hostfwd","arguments":{"id":"1"}}'),
        ("deep-nesting", b"[" * 100000 + b"]" * 100000),
        ("one-megabyte", b'{"execute":"list_hostfwd","pad":"' + b"x" * (1 << 20) + b'"}'),
    ]
    for name, data in cases:
        print("%s %s" % (name, ask(data)), flush=True)


def slowloris(path, count, seconds):
    """COUNT clients that each send half a request and then nothing, held for SECONDS; prints
    how many the server cut off (closed) before that."""
    clients = []
    for _ in range(int(count)):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.sendall(b'{"execute":"li')
        clients.append(s)
    deadline = time.monotonic() + float(seconds)
    closed = set()
    while time.monotonic() < deadline and len(closed) < len(clients):
        readable, _, _ = select.select([c for c in clients if c not in closed], [], [], 0.2)
        for c in readable:
            try:
                if not c.recv(100):
                    closed.add(c)
            except OSError:
                closed.add(c)
    print("slowloris clients=%d cut_off=%d" % (len(clients), len(closed)), flush=True)


COMMANDS = {
    "flood": flood,
    "sink": sink,
    "sequential": sequential,
    "reset-server": reset_server,
    "reset-client": reset_client,
    "emfile": emfile,
    "craft": craft,
    "record": record,
    "api-abuse": api_abuse,
    "slowloris": slowloris,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit("usage: hostile.py {%s} ARGS..." % ",".join(COMMANDS))
    COMMANDS[sys.argv[1]](*sys.argv[2:])
