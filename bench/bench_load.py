"""Many simulated users against the served demo: latency, errors and the server's memory over repeated rounds.

    python -m bench.bench_load [--clients 20] [--rounds 3] [--requests 6] [--kinds page,search,steer,bad id]
                               [--client http|gradio_client] [--bundle …]

Starts `python app.py` as its own process on a free localhost port, waits for its model, then
runs `--rounds` rounds in which each of `--clients` threads (one visitor each: Gradio's REST API
over a kept-alive connection, or gradio_client) makes `--requests` requests,
taking in turn a latent page, a search, a steer with a fresh strength, and a bad latent id
(which must come back as a message). Prints per kind the median and p95 latency and
the errors, the fairness across clients (Jain's index of their mean latencies), and the
server's resident memory after each round against the first: RSS grows until the caches are
full (base runs for steering take up to 1/16 of the machine's memory), then holds. The baseline in the same run is one client
alone making the same mix of requests.
"""

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from gradio_client import Client
from gradio_client.exceptions import AppError

from app import DEFAULT_BUNDLE
from bench.common import device_name, free_port, percentile

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("page", "search", "steer", "bad id")  # --kinds picks some (e.g. without "steer": browsing with an idle model)
PROMPTS = ["a large red circle in the center on a black background", "a small blue square in the top left on a white background",
           "a green triangle on the right on a gray background"]


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class HttpVisitor:
    """A simulated visitor on Gradio's REST call API over one kept-alive connection, as `Client.predict` is called.

    gradio_client spends about twice the server's CPU on each request (46 ms against 25 ms for a
    latent page here); 20 of them on the server's own 2 cores measure mostly themselves.
    """

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, timeout=600)

    def predict(self, *data, api_name: str):
        """The event's outputs, or AppError with the app's message."""
        event_id = self.http.post(f"gradio_api/call{api_name}", json={"data": list(data)}).raise_for_status().json()["event_id"]
        with self.http.stream("GET", f"gradio_api/call{api_name}/{event_id}") as stream:
            event = None
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    payload = json.loads(line.removeprefix("data:"))
                    if event == "complete":
                        return payload
                    message = payload.get("error") if isinstance(payload, dict) else payload
                    raise AppError(message or "")
        raise RuntimeError(f"the stream of {api_name} ended without a result")


def visitor(url: str, kind: str) -> Client | HttpVisitor:
    return HttpVisitor(url) if kind == "http" else Client(url, verbose=False, download_files=False)


def request(client: Client | HttpVisitor, kind: str, rng: random.Random) -> None:
    """One request of `kind`; a bad id must be answered with a message."""
    if kind == "page":
        client.predict(rng.randrange(1024), api_name="/latent_page")
    elif kind == "search":
        client.predict(rng.choice(["red", "circle", "", "background blue", "12"]), "frequency", False, 0.0, api_name="/search")
    elif kind == "steer":
        slots = [str(rng.randrange(1024)), rng.uniform(-0.6, 0.6), "add", "", 0.0, "add", "", 0.0, "add"]
        client.predict(rng.choice(PROMPTS), rng.randrange(1000), 4.0, 0, 19, "everywhere", [], *slots, api_name="/steer")
    else:
        try:
            client.predict(rng.choice(["--5", "²", "9" * 5000, "-1"]), api_name="/latent_page")
        except AppError as err:
            if str(err).strip() in ("", "Error"):
                raise RuntimeError("a bad id got a bare Error") from None
            return
        raise RuntimeError("a bad id was accepted")


def run_clients(url: str, clients: int, requests: int, seed: int, kinds=KINDS,
                client_kind: str = "http") -> tuple[dict[str, list[float]], list[float], int]:
    """`clients` threads making `requests` each; latencies by kind, mean latency per client, and the error count."""
    latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
    per_client: list[float] = []
    errors, messages = [0], [0]
    lock = threading.Lock()

    def user(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        client = visitor(url, client_kind)
        mine = []
        for i in range(requests):
            kind = kinds[(index + i) % len(kinds)]  # every client makes every kind in turn
            start = time.perf_counter()
            try:
                request(client, kind, rng)
            except AppError as err:  # the app's own message (e.g. a latent that never fired has nothing to add)
                with lock:
                    messages[0] += 1
                    if messages[0] <= 2:
                        print(f"  message in {kind}: {str(err)[:120]}")
            except Exception as err:
                with lock:
                    errors[0] += 1
                    if errors[0] <= 3:
                        print(f"  error in {kind}: {type(err).__name__}: {str(err)[:200]}")
            elapsed = time.perf_counter() - start
            mine.append(elapsed)
            with lock:
                latencies[kind].append(elapsed)
        with lock:
            per_client.append(statistics.mean(mine))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, per_client, errors[0]


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when every client waited the same."""
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def report(name: str, latencies: dict[str, list[float]], errors: int) -> None:
    cells = [f"{kind} {statistics.median(v) * 1e3:.0f}/{percentile(v, 95) * 1e3:.0f} ms (n {len(v)})" for kind, v in latencies.items() if v]
    print(f"{name}: " + " · ".join(cells) + f" · errors {errors}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6, help="requests per client per round")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated kinds of request, of {', '.join(KINDS)}")
    parser.add_argument("--client", choices=("http", "gradio_client"), default="http",
                        help="how visitors call the app: Gradio's REST API over kept-alive connections, or gradio_client "
                             "(the figures before issue 17's last step; it costs more CPU than the server's side)")
    args = parser.parse_args(argv)
    kinds = tuple(kind.strip() for kind in args.kinds.split(","))
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds takes some of {', '.join(KINDS)}")

    port = free_port()
    server = subprocess.Popen([sys.executable, "app.py", "--bundle", args.bundle, "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                Client(url, verbose=False)
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the app did not start") from None
                time.sleep(0.5)
        request(Client(url, verbose=False, download_files=False), "steer", random.Random(0))  # waits for the model: time a warm server
        print(f"device: {device_name()}; {args.clients} clients ({args.client}) × {args.requests} requests per round, {args.rounds} rounds")
        alone, _, alone_errors = run_clients(url, 1, args.requests * 3, seed=99, kinds=kinds, client_kind=args.client)
        report("one client alone", alone, alone_errors)
        first = None
        for r in range(args.rounds):
            latencies, per_client, errors = run_clients(url, args.clients, args.requests, seed=r, kinds=kinds, client_kind=args.client)
            rss = rss_mib(server.pid)
            first = first or rss
            report(f"round {r + 1}", latencies, errors)
            print(f"  fairness (Jain) {jain(per_client):.3f} · server RSS {rss:.0f} MiB ({rss / first - 1:+.1%} vs round 1)")
        for kind in ("page", "steer"):
            if alone.get(kind) and latencies.get(kind):
                ratio = statistics.median(latencies[kind]) / statistics.median(alone[kind])
                print(f"{kind}: median under load / alone = {ratio:.1f}x")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
