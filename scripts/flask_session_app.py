#!/usr/bin/env python3
"""A minimal Flask + Flask-Session app on one Redis: the baseline that
Tests/SessionRedisTests/SentinelFailoverTests.swift compares SessionCluster's
Sentinel failover with.

    python3 scripts/flask_session_app.py [PORT [REDIS_PORT]]

PORT (env FLASK_PORT, default 5000) is the HTTP port and REDIS_PORT (env
REDIS_PORT, default 6379) the Redis one; both on 127.0.0.1 only. Routes:
    POST /counter  increments session["count"]; JSON {"count": n}
    GET  /session  JSON {"count": n} (0 for a new session)
    GET  /healthz  "ok" (does not touch Redis)
"""
import os
import sys

import redis
from flask import Flask, jsonify, session
from flask_session import Session
from redis.backoff import NoBackoff
from redis.retry import Retry


def main() -> None:
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FLASK_PORT", "5000"))
    redis_port = int(sys.argv[2] if len(sys.argv) > 2 else os.environ.get("REDIS_PORT", "6379"))

    app = Flask(__name__)
    app.config.update(
        SESSION_TYPE="redis",
        # Short timeouts and no retries, like SessionCluster's client in the
        # test (300 ms): a request fails fast instead of hanging while Redis is down.
        SESSION_REDIS=redis.Redis(
            host="127.0.0.1",
            port=redis_port,
            socket_connect_timeout=0.3,
            socket_timeout=0.3,
            retry=Retry(NoBackoff(), 0),
        ),
    )
    Session(app)

    @app.post("/counter")
    def counter():
        session["count"] = session.get("count", 0) + 1
        return jsonify(count=session["count"])

    @app.get("/session")
    def show():
        return jsonify(count=session.get("count", 0))

    @app.get("/healthz")
    def healthz():
        return "ok"

    app.run(host="127.0.0.1", port=port, threaded=True, debug=False, use_reloader=False)


if __name__ == "__main__":
    main()
