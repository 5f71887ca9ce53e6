#!/usr/bin/env python3
"""Loads KEYS keys into a Meridian node through /v1/txn, 256 puts per transaction, from
LOADERS threads with one keep-alive connection each. Keys are k0000000000.., values
VALUE_BYTES long and distinct per key. Prints one line: keys, seconds, keys/s, MiB/s of values.

Usage: scale_load.py PORT KEYS VALUE_BYTES LOADERS
"""
import base64
import http.client
import sys
import threading
import time

PORT, KEYS, VALUE_BYTES, LOADERS = (int(a) for a in sys.argv[1:5])
BATCH = 256
PAD = b"m" * VALUE_BYTES


def value(i):
    head = b"%010d-" % i
    return base64.b64encode(head + PAD[: max(0, VALUE_BYTES - len(head))]).decode()


def body(first):
    last = min(first + BATCH, KEYS)
    ops = ",".join('{"op":"put","key":"k%010d","value_b64":"%s"}' % (i, value(i)) for i in range(first, last))
    return '{"compare":[],"success":[' + ops + '],"failure":[]}'


next_batch = 0
lock = threading.Lock()
errors = []


def loader():
    global next_batch
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    while True:
        with lock:
            first = next_batch
            next_batch += BATCH
        if first >= KEYS or errors:
            return
        b = body(first)
        for attempt in range(50):
            try:
                conn.request("POST", "/v1/txn", b, {"content-type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                if r.status == 200:
                    break
                if r.status == 503:  # back-pressure: retry shortly
                    time.sleep(0.2)
                    continue
                errors.append("batch at %d: HTTP %d %s" % (first, r.status, data[:200]))
                return
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
                time.sleep(0.2)
                last_error = e
        else:
            errors.append("batch at %d: gave up after 50 attempts" % first)
            return


t0 = time.time()
threads = [threading.Thread(target=loader) for _ in range(LOADERS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
secs = time.time() - t0
if errors:
    print("load failed: " + errors[0], file=sys.stderr)
    sys.exit(1)
print("%d %.1f %.0f %.1f" % (KEYS, secs, KEYS / secs, KEYS * VALUE_BYTES / secs / (1 << 20)))
