#!/usr/bin/env python3
"""Turns `tapir --pcap` captures into seed corpora for the fuzz targets.

    fuzz/seeds_from_pcap.py OUT_DIR CAPTURE.pcap...

writes OUT_DIR/<target>/<name> for the targets whose input is guest bytes:
  frame_ingest   the guest's frames of each conversation (ARP/ND, DHCP, one TCP or UDP flow,
                 ICMP echo), in the records format of fuzz/src/lib.rs, with the capture's delays
  frame_classify each distinct guest frame alone (first 64 bytes of a conversation's frames)
  dhcp           each DHCP exchange's client messages, in records (a MAC byte, then the payload)
  dns            DNS queries the guest sent and the answers it got, in the dns target's format
Names are content hashes, so rerunning adds nothing twice. Only the standard library is used.

The committed seeds (fuzz/seeds/) come from seven `tapir run --pcap` captures made in a test
World (tests/common): busybox udhcpc; curl to 10.0.2.2:8080; socat UDP to 10.0.2.2; the
actors.py dns-query over UDP and TCP, answered and NXDOMAIN; ping (small and 1400 bytes);
`-6` with SLAAC, ping6, curl and UDP to [fd00::2] and DNS to fd00::3; and a refused TCP
connect and UDP to a closed port. Seeds named regression-* are fuzzer findings, kept so that
every run replays them.
"""

import hashlib
import os
import struct
import sys

ETH_IPV4, ETH_ARP, ETH_IPV6 = 0x0800, 0x0806, 0x86DD


def read_pcap(path):
    """Yields (seconds, frame) from a libpcap file with Ethernet link type."""
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise SystemExit(f"{path}: not a libpcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[pos : pos + 16])
        pos += 16
        yield sec + frac / (1e9 if nano else 1e6), data[pos : pos + incl]
        pos += incl


def conversation(frame):
    """A key grouping a frame with the rest of its exchange, and its L4 payload if UDP."""
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == ETH_ARP:
        return "arp", None
    if ethertype == ETH_IPV4 and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        proto = frame[23]
        l4 = frame[14 + ihl :]
        if proto in (6, 17) and len(l4) >= 4:
            a, b = struct.unpack("!HH", l4[:4])
            payload = l4[8:] if proto == 17 else None
            if proto == 17 and 67 in (a, b):
                return "dhcp", payload
            return f"v4-{proto}-{min(a, b)}-{max(a, b)}", payload
        return f"v4-{proto}", None
    if ethertype == ETH_IPV6 and len(frame) >= 54:
        proto = frame[20]
        l4 = frame[54:]
        if proto in (6, 17) and len(l4) >= 4:
            a, b = struct.unpack("!HH", l4[:4])
            payload = l4[8:] if proto == 17 else None
            return f"v6-{proto}-{min(a, b)}-{max(a, b)}", payload
        if proto == 58 and l4 and l4[0] in (133, 134, 135, 136):
            return "ndp", None
        return f"v6-{proto}", None
    return "other", None


def is_tapir(frame):
    """Whether tapir sent the frame: its MACs are 52:55 and an IPv4 address (virtual_mac)."""
    return frame[6:8] == b"\x52\x55"


def records(frames, t0):
    """The fuzz targets' records: length, delay byte, body."""
    out = bytearray()
    last = t0
    for t, body in frames:
        gap = max(0.0, t - last)
        last = t
        delay = min(127, int(gap * 100)) if gap < 1.27 else min(255, 127 + round(gap))
        body = body[:65535]
        out += struct.pack("!HB", len(body), delay) + body
    return bytes(out)


def save(out_dir, target, data):
    d = os.path.join(out_dir, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def main():
    out_dir, paths = sys.argv[1], sys.argv[2:]
    for path in paths:
        frames = list(read_pcap(path))
        if not frames:
            continue
        groups = {}
        for t, frame in frames:
            if len(frame) < 14:
                continue
            key, payload = conversation(frame)
            from_guest = not is_tapir(frame)
            groups.setdefault(key, []).append((t, frame, payload, from_guest))
        t0 = frames[0][0]
        for key, items in groups.items():
            guest = [(t, f) for t, f, _, g in items if g]
            if not guest:
                continue
            # Neighbour resolution first, so the flow's frames find the stack ready.
            prelude = [(t, f) for t, f, _, g in groups.get("arp", []) + groups.get("ndp", []) if g][:2]
            if key not in ("arp", "ndp"):
                guest = sorted(prelude + guest)
            save(out_dir, "frame_ingest", records(guest[:64], t0))
            for _, f in guest[:4]:
                save(out_dir, "frame_classify", bytes(f))
            if key == "dhcp":
                msgs = [(t, b"\x00" + p) for t, _, p, g in items if g and p]
                save(out_dir, "dhcp", records(msgs, t0))
            if "-17-53-" in key:
                dns = bytearray()
                for _, _, p, g in items:
                    if p and len(p) <= 255:
                        dns += bytes([len(p), 0 if g else 1]) + p
                save(out_dir, "dns", bytes(dns))
        # Everything the guest sent, in order, as one input.
        everything = [(t, f) for t, f in frames if len(f) >= 14 and not is_tapir(f)]
        save(out_dir, "frame_ingest", records(everything[:96], t0))


if __name__ == "__main__":
    main()
