"""An app's backend for realtide, in Flask: it decides who connects (from the
app's own session cookie), who may subscribe to what, what a publish may say,
and it hears realtide's webhooks. Every call from realtide is signed; this
app checks the signature first.

    pip install -r requirements.txt
    REALTIDE_WEBHOOK_SECRET=... PORT=3000 python app.py
    realtide --proxy-connect-url http://127.0.0.1:3000/realtide/connect \\
             --proxy-subscribe-url http://127.0.0.1:3000/realtide/subscribe \\
             --proxy-publish-url http://127.0.0.1:3000/realtide/publish \\
             --webhook-url http://127.0.0.1:3000/realtide/webhooks \\
             --webhook-secret "$REALTIDE_WEBHOOK_SECRET"
"""

import hashlib
import hmac
import os
import re
import time

from flask import Flask, jsonify, request

SECRET = os.environ["REALTIDE_WEBHOOK_SECRET"].encode()
PORT = int(os.environ.get("PORT", "3000"))

# The app's sessions, as its login would have made them.
SESSIONS = {"s-ann": "ann", "s-bob": "bob", "s-admin": "admin"}
BAD_WORDS = re.compile(r"\b(darn|heck)\b", re.IGNORECASE)

app = Flask(__name__)
seen = set()  # webhook ids already handled: delivery is at least once
events = []  # what the app heard, for GET /events
rejected = 0  # calls whose signature did not verify


def verified(header, body):
    """`X-Realtide-Signature: t=<unix s>,v1=<hex>`: HMAC-SHA256 over `<t>.<body>`, at most 5 minutes old."""
    parts = dict(p.split("=", 1) for p in (header or "").split(",") if "=" in p)
    try:
        at = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - at) > 300 or "v1" not in parts:
        return False
    expected = hmac.new(SECRET, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


@app.before_request
def check_signature():
    global rejected
    if request.method == "POST" and not verified(
        request.headers.get("X-Realtide-Signature"), request.get_data()
    ):
        rejected += 1
        return jsonify(error={"code": "unauthorized", "message": "bad signature"}), 401
    return None


def session_user(cookie_header):
    for pair in (cookie_header or "").split(";"):
        name, _, value = pair.strip().partition("=")
        if name == "session" and value in SESSIONS:
            return SESSIONS[value]
    return None


@app.post("/realtide/connect")
def connect():
    user = session_user(request.json.get("headers", {}).get("cookie"))
    if user is None:
        return jsonify(error={"code": "unauthorized", "message": "log in first"}), 401
    grants = {"subscribe": ["orders", "chat/*"], "publish": ["chat/*"]}
    return jsonify(result={"user": user, "realtime": grants})


@app.post("/realtide/subscribe")
def subscribe():
    call = request.json
    if call["topic"] == "chat/admins" and call.get("user") != "admin":
        return jsonify(error={"code": "forbidden", "message": "admins only"})
    if call["topic"] == "orders":
        # Everyone sees only their own orders.
        return jsonify(result={"filter": {"owner": {"eq": call.get("user")}}})
    return jsonify(result={})


@app.post("/realtide/publish")
def publish():
    data = request.json.get("data")
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        return jsonify(error={"code": "bad_request", "message": "say something"})
    clean = BAD_WORDS.sub(lambda m: "*" * len(m.group(0)), text)
    return jsonify(result={} if clean == text else {"data": {**data, "text": clean}})


@app.post("/realtide/webhooks")
def webhooks():
    event = request.json
    if event["id"] not in seen:
        seen.add(event["id"])
        events.append(event)
    return jsonify(ok=True)


@app.get("/events")
def heard():
    return jsonify(events=events, rejected=rejected)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=PORT, threaded=True)
