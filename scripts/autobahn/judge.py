"""Judges an Autobahn|Testsuite fuzzingclient report for a server that is not
an echo server: realtide greets with a `welcome` and answers every data
message with exactly one reply (here, a `bad_request` error, since the suite
sends no JSON). So each case is judged on the protocol alone:

- the events, with the welcome dropped and every message (expected echo or
  actual reply) reduced to "a message", must match one of the case's
  expected outcomes: pongs with their payloads, in order with the replies;
- the close: the server's close code is one the case allows, or the echo
  of the client's own normal close; the server drops the TCP connection in
  time; and the close is clean where the case requires it.

Prints one line per failed case and a closing line 'N passed, N failed'.
"""

import json
import os
import sys


def reduce(events, drop_welcome):
    out = []
    for event in events:
        kind = event[0]
        if kind == "message":
            if drop_welcome:
                drop_welcome = False
                continue
            out.append(("message",))
        elif kind in ("pong", "ping"):
            out.append((kind, event[1]))
        else:
            out.append(tuple(event))
    return out


def judge(case):
    problems = []
    received = reduce(case["received"], drop_welcome=True)
    expected = case["expected"]
    if not any(reduce(events, False) == received for events in expected.values()):
        problems.append("events %s, expected one of %s" % (received, list(expected.values())))
    close = case["expectedClose"]
    allowed = close["closeCode"]
    remote, local = case["remoteCloseCode"], case["localCloseCode"]
    echoed = close["closedByMe"] and local in (1000, 1001) and remote == local
    if remote is not None and remote not in allowed and not echoed:
        problems.append("closed with %s, expected %s" % (remote, allowed))
    if remote is None and not close["closedByMe"]:
        problems.append("the server sent no close frame (expected %s)" % allowed)
    if case.get("wasServerConnectionDropTimeout"):
        problems.append("the server did not drop the TCP connection in time")
    if case.get("wasOpenHandshakeTimeout") or case.get("wasCloseHandshakeTimeout"):
        problems.append("a handshake timed out")
    if close.get("requireClean") and not case["wasClean"]:
        problems.append("not a clean close: %s" % case.get("wasNotCleanReason"))
    return problems


def main(report_dir, agent):
    index = json.load(open(os.path.join(report_dir, "index.json")))[agent]
    passed = failed = 0
    for case_id in sorted(index, key=lambda c: [int(x) for x in c.split(".")]):
        entry = index[case_id]
        if entry["behavior"] == "INFORMATIONAL":
            continue
        case = json.load(open(os.path.join(report_dir, entry["reportfile"])))
        problems = judge(case)
        if problems:
            failed += 1
            print("FAIL %s (%s): %s" % (case_id, case["description"][:60].replace("\n", " "), "; ".join(problems)))
        else:
            passed += 1
    print("autobahn: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
