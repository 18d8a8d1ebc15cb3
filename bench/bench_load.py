"""Many simulated users against the served demo: latency, errors and the server's memory over repeated rounds.

    python -m bench.bench_load [--clients 20] [--rounds 3] [--requests 6] [--kinds page,search,steer,bad id]
                               [--servers before,pages,pages+worker] [--client http|gradio_client]
                               [--drawn DIR] [--bundle …]

For each server setting (`--servers`), starts `python app.py` as its own process on a free
localhost port, waits for its model, then runs `--rounds` rounds. A round opens with a burst:
every one of `--clients` threads (one visitor each: Gradio's REST API over a kept-alive
connection, or gradio_client) opens a latent page at the same moment ("first page"). Then each
makes `--requests` requests, taking in turn a latent page, a search, a steer with a fresh
strength, and a bad latent id (which must come back as a message). After every page the visitor
asks for the latent's map over time where the page did not bring it, as the browser does ("map",
with how many pages needed it). Prints per kind the median and p95 latency and the errors, the fairness
across clients (Jain's index of their mean latencies), and the resident memory of the server and
its model worker after each round against the first: RSS grows until the caches are full (base
runs for steering take up to 1/16 of the machine's memory), then holds.
The baselines in the same run: one client alone making the same mix of requests, and the burst's
floor: as many new visitors at once, each asking only a bad latent id (Gradio's per-session setup
and one event, no pictures).

Server settings: "before" is the app before issue 27: each latent page and map over time drawn when
first asked (a fresh folder, nothing drawn ahead or while idle) and the model in the server's
process; "pages" serves pages and maps over time from files drawn ahead by `python -m
ui.page_files --maps` (ui/page_files.py, ui/map_files.py: what the app has once its first start's
drawing is done), the model still in the server's process; "pages+worker" (the app as it ships)
also runs the model in a worker process (ui/worker.py). The two share one folder drawn ahead.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from gradio_client import Client
from gradio_client.exceptions import AppError

from app import DEFAULT_BUNDLE
from bench.common import device_name, free_port, percentile

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("page", "search", "steer", "bad id")  # --kinds picks some (e.g. without "steer": browsing with an idle model)
SERVERS = ("before", "pages", "pages+worker")
REPORTED = ("first page", "page", "map", "search", "steer", "bad id")  # "map": asked after a page that did not bring it
PROMPTS = ["a large red circle in the center on a black background", "a small blue square in the top left on a white background",
           "a green triangle on the right on a gray background"]


def rss_mib(pid: int, children: bool = True) -> float:
    """Resident memory of a process and (with `children`) its children, such as the model worker, from /proc."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) / 1024
    for task in Path(f"/proc/{pid}/task").iterdir() if children else ():
        for child in (task / "children").read_text().split():
            total += rss_mib(int(child))
    return total


class HttpVisitor:
    """A simulated visitor on Gradio's REST call API over one kept-alive connection, as `Client.predict` is called.

    gradio_client spends about twice the server's CPU on each request (46 ms against 25 ms for a
    latent page here); 20 of them on the server's own 2 cores measure mostly themselves. Like a
    browser tab (and gradio_client), a visitor keeps one session: Gradio sets up a session's state
    on its first request (about 25 ms of server CPU for this app's 228 components), not on every one.
    """

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, timeout=600)
        self.session = uuid.uuid4().hex[:11]

    def predict(self, *data, api_name: str):
        """The event's outputs, or AppError with the app's message."""
        body = {"data": list(data), "session_hash": self.session}
        event_id = self.http.post(f"gradio_api/call{api_name}", json=body).raise_for_status().json()["event_id"]
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


def open_page(client: Client | HttpVisitor, rng: random.Random, timed: dict[str, float], kind: str = "page") -> None:
    """A latent page, then its map over time as the browser asks for it: only when the page did not bring it (its last
    output, the map request, is set); each timed under its own kind, "map" only when asked for."""
    latent = rng.randrange(1024)
    start = time.perf_counter()
    *_, map_request = client.predict(latent, api_name="/latent_page")
    timed[kind] = time.perf_counter() - start
    if isinstance(map_request, str):
        start = time.perf_counter()
        client.predict(latent, api_name="/map_over_time")
        timed["map"] = time.perf_counter() - start


def request(client: Client | HttpVisitor, kind: str, rng: random.Random) -> dict[str, float]:
    """One request of `kind` (a page with its map over time), timed; a bad id must be answered with a message."""
    timed: dict[str, float] = {}
    start = time.perf_counter()
    if kind == "page":
        open_page(client, rng, timed)
        return timed
    if kind == "search":
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
            return {kind: time.perf_counter() - start}
        raise RuntimeError("a bad id was accepted")
    return {kind: time.perf_counter() - start}


def run_clients(url: str, clients: int, requests: int, seed: int, kinds=KINDS, client_kind: str = "http",
                burst: bool = True) -> tuple[dict[str, list[float]], list[float], int]:
    """`clients` threads, each opening a page at the same moment (with `burst`), then making `requests` requests; latencies
    by kind, mean latency per client, and the error count."""
    latencies: dict[str, list[float]] = {kind: [] for kind in REPORTED}
    per_client: list[float] = []
    errors, messages = [0], [0]
    lock = threading.Lock()
    start_line = threading.Barrier(clients)

    def user(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        client = visitor(url, client_kind)
        mine = []
        asked = ["first page"] * burst + [kinds[(index + i) % len(kinds)] for i in range(requests)]  # every kind in turn
        start_line.wait()
        for kind in asked:
            try:
                timed = {}
                if kind == "first page":
                    open_page(client, rng, timed, kind)
                else:
                    timed = request(client, kind, rng)
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
            mine += timed.values()
            with lock:
                for name, seconds in timed.items():
                    latencies[name].append(seconds)
        with lock:
            per_client.append(statistics.mean(mine) if mine else float("nan"))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, per_client, errors[0]


def session_floor(url: str, clients: int, client_kind: str) -> list[float]:
    """The burst's floor: `clients` new visitors at once, each asking one bad latent id (a message, no pictures), so the
    latency is mostly Gradio setting up each new session's state; seconds per visitor."""
    start_line, seconds, lock = threading.Barrier(clients), [], threading.Lock()
    visitors = [visitor(url, client_kind) for _ in range(clients)]  # a visitor that cannot connect fails here, not as a bad id

    def user(client) -> None:
        start_line.wait()
        start = time.perf_counter()
        try:
            client.predict("-1", api_name="/latent_page")
        except AppError:
            with lock:
                seconds.append(time.perf_counter() - start)

    threads = [threading.Thread(target=user, args=(client,)) for client in visitors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(seconds) < clients:
        raise RuntimeError("a bad id in the floor's burst was not answered with a message")
    return seconds


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when every client waited the same."""
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def report(name: str, latencies: dict[str, list[float]], errors: int) -> None:
    cells = [f"{kind} {statistics.median(v) * 1e3:.0f}/{percentile(v, 95) * 1e3:.0f} ms (n {len(v)})" for kind, v in latencies.items() if v]
    pages = len(latencies["first page"]) + len(latencies["page"])
    print(f"{name}: " + " · ".join(cells) + f" · errors {errors} · maps asked after {len(latencies['map'])} of {pages} pages")


def draw_ahead(bundle: str, pages: Path) -> float:
    """Every latent page and map over time drawn into `pages`, as the app leaves them once its first start's drawing is
    done (`python -m ui.page_files --maps`); the seconds it took."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ui.page_files", "--bundle", bundle, "--cache", str(pages), "--maps"], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def start_server(bundle: str, setting: str, pages: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py` with this setting, once it answers ("before": nothing drawn ahead, and nothing drawn while idle)."""
    env = os.environ | {"SAE_PAGE_CACHE": str(pages), "SAE_MODEL_WORKER": "1" if setting == "pages+worker" else "0"}
    if setting == "before":
        env |= {"SAE_PAGE_PREDRAW": "0", "SAE_MAP_PREDRAW": "0"}
    port = free_port()
    server = subprocess.Popen([sys.executable, "app.py", "--bundle", bundle, "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            Client(url, verbose=False)
            return server, url
        except Exception:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("the app did not start") from None
            time.sleep(0.5)


def measure(args, setting: str, kinds: tuple[str, ...], drawn: Path) -> dict[str, dict[str, list[float]]]:
    """One server setting (its pages and maps from `drawn`, unless "before"): one client alone (no burst), then the rounds;
    latencies by kind of each."""
    with tempfile.TemporaryDirectory(prefix="bench-load-pages-") as fresh:
        server, url = start_server(args.bundle, setting, Path(fresh) if setting == "before" else drawn)
        try:
            request(Client(url, verbose=False, download_files=False), "steer", random.Random(0))  # waits for the model: time a warm server
            print(f"\nserver: {setting}")
            alone, _, alone_errors = run_clients(url, 1, args.requests * 3, seed=99, kinds=kinds, client_kind=args.client, burst=False)
            report("one client alone", alone, alone_errors)
            measured, first = {"alone": alone}, None
            for r in range(args.rounds):
                latencies, per_client, errors = run_clients(url, args.clients, args.requests, seed=r, kinds=kinds, client_kind=args.client)
                rss, own = rss_mib(server.pid), rss_mib(server.pid, children=False)
                first = first or rss
                report(f"round {r + 1}", latencies, errors)
                print(f"  fairness (Jain) {jain(per_client):.3f} · RSS {rss:.0f} MiB ({rss / first - 1:+.1%} vs round 1): "
                      f"server {own:.0f} MiB, its children {rss - own:.0f} MiB")
                measured[f"round {r + 1}"] = latencies
            floor = [percentile(session_floor(url, args.clients, args.client), 95) for _ in range(3)]
            print(f"floor: {args.clients} new visitors at once, one bad id each (session setup, no pictures): p95 "
                  + " / ".join(f"{s * 1e3:.0f}" for s in floor) + " ms in 3 bursts")
            for kind in ("map", "steer"):
                if alone.get(kind) and latencies.get(kind):
                    print(f"{kind}: median under load / alone = {statistics.median(latencies[kind]) / statistics.median(alone[kind]):.1f}x")
            return measured
        finally:
            server.terminate()
            server.wait(timeout=30)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6, help="requests per client per round")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated kinds of request, of {', '.join(KINDS)}")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated server settings, of {', '.join(SERVERS)}")
    parser.add_argument("--client", choices=("http", "gradio_client"), default="http",
                        help="how visitors call the app: Gradio's REST API over kept-alive connections, or gradio_client "
                             "(the figures before issue 17's last step; it costs more CPU than the server's side)")
    parser.add_argument("--drawn", type=Path, help="a folder of pages and maps over time drawn ahead by an earlier run (or by "
                        "python -m ui.page_files --maps --cache DIR) to reuse; anything missing is drawn into it")
    args = parser.parse_args(argv)
    kinds = tuple(kind.strip() for kind in args.kinds.split(","))
    servers = tuple(setting.strip() for setting in args.servers.split(","))
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds takes some of {', '.join(KINDS)}")
    if not servers or set(servers) - set(SERVERS):
        parser.error(f"--servers takes some of {', '.join(SERVERS)}")
    print(f"device: {device_name()}; {args.clients} clients ({args.client}) × (a first page + {args.requests} requests) per round, "
          f"{args.rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="bench-load-drawn-") as temporary:
        drawn = args.drawn or temporary
        if set(servers) - {"before"}:
            print(f"pages and maps over time drawn ahead in {draw_ahead(args.bundle, Path(drawn)):.0f} s")
        results = {setting: measure(args, setting, kinds, Path(drawn)) for setting in servers}
    if len(results) > 1:
        print("\npage p95 in the rounds (first pages with the later ones), per server setting:")
        for setting, measured in results.items():
            pages = [t for name, latencies in measured.items() if name != "alone" for kind in ("first page", "page") for t in latencies[kind]]
            print(f"  {setting}: {percentile(pages, 95) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
