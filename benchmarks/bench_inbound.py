"""Inbound webhook under gunicorn (2 sync workers) with RQ on Redis, beside its hand-written twin.

    python benchmarks/bench_inbound.py [--seconds 5] [--rounds 5] [--connections 8]
        [--failing-subscriber]

``POST /v1/twilio/sms`` as Twilio sends it: form-encoded, signed. flask-polysms checks the
signature with the project's (encrypted) Auth Token, claims the MessageSid, applies the opt-out,
block and abuse-limit rules (limits counted in Redis), finds or opens the user's session,
records the message, moves the session's deadline and enqueues the agent job.
``baseline_apps.inbound_app`` checks the signature, claims the MessageSid, finds or opens the
session, records the message and moves the deadline in one transaction, and enqueues the same job.

500 users write in turn, each message distinct (so most messages land in an open session, as
replies do). Rounds alternate between the two servers; the ratio is the median of the rounds'
ratios. Every request is signed ahead of time and sent once (no MessageSid repeats). Prints JSON.

``--failing-subscriber`` adds a third side in the same rounds: the same server, another project
whose webhook subscription wants every event type and points at a local server that answers 500
to everything. Its ratio to the project without subscriptions (``failing_subscriber``) is what a
receiver that is down costs the webhook from Twilio: the request only enqueues the event's job.
No worker runs: the jobs wait in Redis (their count is reported), as the agent jobs do.

``--against REV`` adds the project at another commit (a git worktree, on a database of its own
whose schema its own code made) to the same rounds and reports ``ratio_to_against``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tracing  # noqa: E402
from harness import (  # noqa: E402
    against_env,
    checkout,
    emit,
    gunicorn,
    log,
    lua_string,
    machine,
    median,
    paced,
    prepare_against,
    ratio,
    ratio_of_rounds,
    reset_services,
    wrk,
)

AGENT_NUMBER = "+14155550100"
SUBSCRIBED_NUMBER = "+14155550101"
USERS = 500
PATH = "/v1/twilio/sms"


class Signer:
    """Signed inbound requests for one server (its URL and Auth Token)."""

    def __init__(self, port: int, token: str, account_sid: str, agent: str, users_from: int):
        from twilio.request_validator import RequestValidator

        self.url = f"http://127.0.0.1:{port}{PATH}"
        self.validator = RequestValidator(token)
        self.account_sid = account_sid
        self.agent = agent
        self.users_from = users_from
        self.count = 0

    def next(self) -> tuple[str, str]:
        """(signature, form body) of the next message."""
        i = self.count
        self.count += 1
        params = {
            "MessageSid": "SM" + secrets.token_hex(16),
            "AccountSid": self.account_sid,
            "From": f"+1415{self.users_from + i % USERS:07d}",
            "To": self.agent,
            "Body": f"Yes, 10 am works for me ({i})",
            "NumMedia": "0",
        }
        return self.validator.compute_signature(self.url, params), urllib.parse.urlencode(params)

    def lua(self, n: int, directory: str) -> str:
        """A wrk script sending ``n`` fresh signed messages (then it stops sending new ones)."""
        path = os.path.join(directory, f"requests-{secrets.token_hex(4)}.tsv")
        with open(path, "w") as out:
            for _ in range(n):
                signature, body = self.next()
                out.write(f"{signature}\t{body}\n")
        return f"""
local reqs = {{}}
local i = 0
init = function(args)
  for line in io.lines({lua_string(path)}) do
    local tab = line:find("\\t")
    reqs[#reqs + 1] = {{line:sub(1, tab - 1), line:sub(tab + 1)}}
  end
end
request = function()
  i = i + 1
  if i > #reqs then i = #reqs end  -- out of fresh messages: repeats are Twilio retries
  local r = reqs[i]
  return wrk.format("POST", "{PATH}", {{
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-Twilio-Signature"] = r[1]}}, r[2])
end
"""

    def build(self, i: int):
        signature, body = self.next()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        }
        return "POST", PATH, body.encode(), headers


class Answers500:
    """A local HTTP server answering 500 to every request (a subscriber that is down)."""

    def __enter__(self) -> str:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def subscribe_everything(app, project_id: str, url: str) -> None:
    """A subscription to every event type, written through the Store: the served app is
    configured for production, where the API takes only https:// URLs."""
    from flask_polysms.clock import utcnow
    from flask_polysms.records import WEBHOOK_EVENT_TYPES, WebhookSubscription, new_id
    from flask_polysms.services.state import get_state
    from flask_polysms.services.webhook_subscriptions import new_secret

    state = get_state(app)
    state.store.add_webhook_subscription(
        WebhookSubscription(
            id=new_id("whk_"),
            project_id=project_id,
            url=url,
            events=list(WEBHOOK_EVENT_TYPES),
            secret_encrypted=state.cipher.encrypt(new_secret()),
            created_at=utcnow(),
        )
    )
    state.store.disconnect()


def queued_webhook_jobs() -> int:
    """How many event jobs wait in the benchmark's queue."""
    from harness import QUEUE, REDIS_URL
    from redis import Redis
    from rq import Queue

    queue = Queue(QUEUE, connection=Redis.from_url(REDIS_URL))
    return sum(1 for job_id in queue.get_job_ids() if job_id.startswith("webhook-"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--paced-seconds", type=float, default=8.0)
    parser.add_argument(
        "--max-rate", type=int, default=2000, help="fresh messages signed per second of a run"
    )
    parser.add_argument(
        "--failing-subscriber",
        action="store_true",
        help="also measure a project subscribed to every event at a URL that answers 500",
    )
    parser.add_argument(
        "--against", metavar="REV", help="also serve this commit of the project, side by side"
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="time every request inside the server too (benchmarks/tracing.py) and say where "
        "the half-peak tail went",
    )
    args = parser.parse_args()

    import baseline_apps
    import polysms_app

    from flask_polysms.testing import provision

    result: dict = {"benchmark": "inbound", "machine": machine()}
    log("resetting the benchmark database and Redis")
    reset_services()
    app = polysms_app.create_app()
    tenant = provision(app, numbers=(AGENT_NUMBER,))
    env = {"POLYSMS_BENCH_BASELINE_TOKEN": baseline_apps.BASELINE_TOKEN}
    per_run = int(args.max_rate * args.seconds)
    trace_folder = tempfile.mkdtemp(prefix="polysms-trace-") if args.trace else None
    traced = {"POLYSMS_BENCH_TRACE": trace_folder} if trace_folder else None
    with contextlib.ExitStack() as servers:
        serve = servers.enter_context
        failing_url = serve(Answers500())
        scratch = serve(tempfile.TemporaryDirectory())
        baseline_port = serve(gunicorn("baseline_apps:inbound_app()", env))
        ours_port = serve(gunicorn("polysms_app:create_app()", traced))
        signers = {
            "baseline": Signer(
                baseline_port,
                baseline_apps.BASELINE_TOKEN,
                "AC" + "0" * 32,
                baseline_apps.BASELINE_AGENT,
                3_000_000,
            ),
            "polysms": Signer(
                ours_port,
                tenant.twilio_auth_token,
                tenant.twilio_account_sid,
                AGENT_NUMBER,
                4_000_000,
            ),
        }
        ports = {"baseline": baseline_port, "polysms": ours_port}
        if args.failing_subscriber:
            subscribed = provision(app, numbers=(SUBSCRIBED_NUMBER,))
            subscribe_everything(app, subscribed.project_id, failing_url)
            signers["failing_subscriber"] = Signer(
                ours_port,
                subscribed.twilio_auth_token,
                subscribed.twilio_account_sid,
                SUBSCRIBED_NUMBER,
                5_000_000,
            )
            ports["failing_subscriber"] = ours_port
        if args.against:
            code = serve(checkout(args.against))
            against = prepare_against(code, numbers=[AGENT_NUMBER])
            ports["against"] = serve(gunicorn("polysms_app:create_app()", against_env(code)))
            signers["against"] = Signer(
                ports["against"],
                against["twilio_auth_token"],
                against["twilio_account_sid"],
                AGENT_NUMBER,
                6_000_000,
            )
        for name, port in ports.items():  # warm-up, and the users' sessions get opened
            wrk(
                f"http://127.0.0.1:{port}",
                signers[name].lua(3000, scratch),
                connections=4,
                seconds=2,
            )
        runs: dict[str, list[dict]] = {name: [] for name in ports}
        for round_no in range(args.rounds):
            for name, port in ports.items():
                run = wrk(
                    f"http://127.0.0.1:{port}",
                    signers[name].lua(per_run, scratch),
                    connections=args.connections,
                    seconds=args.seconds,
                )
                run["fresh_messages_ran_out"] = run["requests"] > per_run
                log(f"round {round_no + 1} {name}: {run['requests_per_s']} req/s")
                runs[name].append(run)
        peak = {name: median([r["requests_per_s"] for r in rs]) for name, rs in runs.items()}
        half = {}
        for name in ports:
            log(f"paced load at half of {name}'s peak ({peak[name] / 2:.0f} req/s)")
            began = time.time()
            half[name] = paced(
                ports[name], signers[name].build, rate=peak[name] / 2, seconds=args.paced_seconds
            )
            if name == "polysms" and trace_folder:
                half[name]["inside_the_server"] = tracing.summary(trace_folder, since=began)

    errors = {
        name: sum(r["non_2xx"] + r["connect_errors"] + r["timeouts"] for r in rs)
        for name, rs in runs.items()
    }
    ours_ratio = ratio_of_rounds(runs, "polysms", "baseline")
    if args.failing_subscriber:
        result["failing_subscriber"] = {
            "url_answers": 500,
            "ratio_to_polysms": ratio_of_rounds(runs, "failing_subscriber", "polysms"),
            "ratio_to_baseline": ratio_of_rounds(runs, "failing_subscriber", "baseline"),
            "event_jobs_queued": queued_webhook_jobs(),
        }
    if args.against:
        result["against"] = {
            "revision": args.against,
            "ratio_to_against": ratio_of_rounds(runs, "polysms", "against"),
            "against_ratio_to_baseline": ratio_of_rounds(runs, "against", "baseline"),
        }
    result.update(
        {
            "command": "python benchmarks/bench_inbound.py " + " ".join(sys.argv[1:]),
            "settings": {
                "gunicorn_workers": 2,
                "wrk_connections": args.connections,
                "seconds_per_run": args.seconds,
                "rounds": args.rounds,
                "users": USERS,
            },
            "peak_requests_per_s": peak,
            "ratio_to_baseline": ours_ratio,
            "ratio_of_medians": ratio(peak["polysms"], peak["baseline"]),
            "peak_latency_ms": {
                name: {
                    "p50": median([r["p50_ms"] for r in rs]),
                    "p99": median([r["p99_ms"] for r in rs]),
                }
                for name, rs in runs.items()
            },
            "half_peak_open_loop": half,
            "errors": errors,
            "runs": runs,
            "targets": {"ratio_at_least_0.6": ours_ratio >= 0.6},
        }
    )
    emit(result)


if __name__ == "__main__":
    main()
