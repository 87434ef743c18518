#!/usr/bin/env python3
"""Sets up or tears down N relayed calls through weir by SIP, for the RTP
relay benchmark (the shared harness's rtpload then sends the media).

  rtp-calls.py --proxy 127.0.0.1:5060 setup N --out PORTS [--state FILE]
  rtp-calls.py --proxy 127.0.0.1:5060 teardown --state FILE

With --srtp the caller offers SRTP (RTP/SAVP, an AES_CM_128_HMAC_SHA1_80
key of its own per call) for a relay that terminates it on the caller's
leg, and each PORTS line also carries "<the caller's a=crypto> | <the
relay's a=crypto>" (for tests/src/bin/srtp-load). --uas-port fixes the
callee's SIP port (a routing plugin's configured target).

This script is the UAC and the UAS of every call: it sends an INVITE whose
SDP names the caller's media at 127.0.0.1:CALLER_PORT, answers the INVITE
weir forwards with the callee's media at 127.0.0.1:CALLEE_PORT, and writes
one line per call, "<relay port facing the caller> <relay port facing the
callee>" (rtpload's PORTS file). Calls are set up a window at a time.
"""
import argparse
import base64
import json
import os
import re
import socket
import sys
import time


def sdp(port, sess, crypto=None):
    proto, extra = ("RTP/SAVP", "a=crypto:%s\r\n" % crypto) if crypto else ("RTP/AVP", "")
    if os.environ.get("MUX") == "1":
        # Both parties multiplex RTCP (RFC 5761): the relay closes its RTCP sockets.
        extra += "a=rtcp-mux\r\n"
    return ("v=0\r\no=- %d 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio %d %s 0\r\na=rtpmap:0 PCMU/8000\r\n%sa=sendrecv\r\n" % (sess, port, proto, extra))


def new_crypto():
    key = base64.b64encode(os.urandom(30)).decode()
    return "1 AES_CM_128_HMAC_SHA1_80 inline:" + key


def crypto_of(body):
    m = re.search(r"^a=crypto:(.*?)\r?$", body, re.M)
    return m.group(1).strip() if m else None


def msg(start, headers, body=""):
    h = "".join("%s: %s\r\n" % kv for kv in headers)
    if body:
        h += "Content-Type: application/sdp\r\n"
    return ("%s\r\n%sContent-Length: %d\r\n\r\n%s" % (start, h, len(body), body)).encode()


def parse(data):
    text = data.decode(errors="replace")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    hdrs = {}
    order = []
    for l in lines[1:]:
        k, _, v = l.partition(":")
        k = k.strip().lower()
        hdrs.setdefault(k, []).append(v.strip())
        order.append((k, l))
    return lines[0], hdrs, order, body


def media_port(body):
    m = re.search(r"^m=audio (\d+)", body, re.M)
    return int(m.group(1)) if m else None


def setup(a):
    ph, pp = a.proxy.split(":")
    proxy = (ph, int(pp))
    uac = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uac.bind(("127.0.0.1", 0))
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.bind(("127.0.0.1", a.uas_port))
    for s in (uac, uas):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.settimeout(5)
    uac_port, uas_port = uac.getsockname()[1], uas.getsockname()[1]
    calls = []
    t0 = time.time()
    window = 50
    for start in range(0, a.n, window):
        batch = range(start, min(a.n, start + window))
        pending = {}
        for i in batch:
            crypto = new_crypto() if a.srtp else None
            cid = "%s-%d-%d@bench" % (a.prefix, int(t0), i)
            inv = msg("INVITE sip:callee@127.0.0.1:%d SIP/2.0" % uas_port, [
                ("Via", "SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK%s-%d;rport" % (uac_port, a.prefix, i)),
                ("Max-Forwards", "70"),
                ("From", "<sip:caller@127.0.0.1>;tag=a%d" % i),
                ("To", "<sip:callee@127.0.0.1>"),
                ("Call-ID", cid),
                ("CSeq", "1 INVITE"),
                ("Contact", "<sip:caller@127.0.0.1:%d>" % uac_port),
            ], sdp(a.caller_port, i, crypto))
            uac.sendto(inv, proxy)
            pending[cid] = {"i": i, "crypto": crypto}
        # The callee's side: answer every forwarded INVITE.
        answered = 0
        while answered < len(pending):
            data, src = uas.recvfrom(65535)
            first, h, order, body = parse(data)
            if not first.startswith("INVITE"):
                continue
            cid = h["call-id"][0]
            if cid not in pending or "b" in pending[cid]:
                continue
            pending[cid]["b"] = media_port(body)
            pending[cid]["rr"] = h.get("record-route", [])
            keep = "".join(l + "\r\n" for k, l in order if k in ("via", "record-route", "from", "call-id", "cseq"))
            to = h["to"][0] + ";tag=b%d" % pending[cid]["i"]
            body = sdp(a.callee_port, pending[cid]["i"])
            ok = ("SIP/2.0 200 OK\r\n%sTo: %s\r\nContact: <sip:callee@127.0.0.1:%d>\r\n"
                  "Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s"
                  % (keep, to, uas_port, len(body), body)).encode()
            uas.sendto(ok, src)
            answered += 1
        # The caller's side: the 200s, then ACK.
        got = 0
        while got < len(pending):
            data, _ = uac.recvfrom(65535)
            first, h, order, body = parse(data)
            if not first.startswith("SIP/2.0 200"):
                continue
            cid = h["call-id"][0]
            c = pending.get(cid)
            if c is None or "a" in c:
                continue
            c["a"] = media_port(body)
            c["relay_crypto"] = crypto_of(body)
            if a.srtp and not c["relay_crypto"]:
                sys.exit("call %s: the relay answered SRTP without a=crypto" % cid)
            c["to"] = h["to"][0]
            c["route"] = list(reversed(h.get("record-route", [])))
            ack = msg("ACK sip:callee@127.0.0.1:%d SIP/2.0" % uas_port, [
                ("Via", "SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK%s-ack-%d;rport" % (uac_port, a.prefix, c["i"])),
                ("Max-Forwards", "70"),
                ("Route", ", ".join(c["route"])),
                ("From", "<sip:caller@127.0.0.1>;tag=a%d" % c["i"]),
                ("To", c["to"]),
                ("Call-ID", cid),
                ("CSeq", "1 ACK"),
            ])
            uac.sendto(ack, proxy)
            got += 1
        for cid, c in pending.items():
            calls.append({"cid": cid, "i": c["i"], "a": c["a"], "b": c["b"], "to": c["to"], "route": c["route"],
                          "keys": "%s | %s" % (c["crypto"], c["relay_crypto"]) if a.srtp else None})
    with open(a.out, "w") as f:
        for c in calls:
            f.write("%d %d%s\n" % (c["a"], c["b"], " " + c["keys"] if c["keys"] else ""))
    with open(a.state, "w") as f:
        json.dump({"uas_port": uas_port, "calls": calls}, f)
    print("setup %d calls in %.2fs" % (a.n, time.time() - t0), file=sys.stderr)


def teardown(a):
    ph, pp = a.proxy.split(":")
    proxy = (ph, int(pp))
    st = json.load(open(a.state))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    for c in st["calls"]:
        bye = msg("BYE sip:callee@127.0.0.1:%d SIP/2.0" % st["uas_port"], [
            ("Via", "SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK%s-bye-%d;rport" % (port, a.prefix, c["i"])),
            ("Max-Forwards", "70"),
            ("Route", ", ".join(c["route"])),
            ("From", "<sip:caller@127.0.0.1>;tag=a%d" % c["i"]),
            ("To", c["to"]),
            ("Call-ID", c["cid"]),
            ("CSeq", "2 BYE"),
        ])
        s.sendto(bye, proxy)
        if c["i"] % 50 == 49:
            time.sleep(0.01)
    print("sent %d BYEs" % len(st["calls"]), file=sys.stderr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", default="127.0.0.1:5060")
    p.add_argument("--prefix", default="bench")
    p.add_argument("--caller-port", type=int, default=21000)
    p.add_argument("--callee-port", type=int, default=21002)
    p.add_argument("--state", default="/tmp/weir-rtp-calls.json")
    p.add_argument("--srtp", action="store_true")
    p.add_argument("--uas-port", type=int, default=0)
    sub = p.add_subparsers(dest="op", required=True)
    s = sub.add_parser("setup")
    s.add_argument("n", type=int)
    s.add_argument("--out", required=True)
    sub.add_parser("teardown")
    a = p.parse_args()
    setup(a) if a.op == "setup" else teardown(a)


if __name__ == "__main__":
    main()
