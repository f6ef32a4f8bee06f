"""Benchmark the generation service on the tiny preset: what the HTTP API adds per job.

    python bench/serve.py                 # ~2-3 min on 2 cores
    python bench/serve.py --rounds 5      # more interleaved rounds per concurrency level (default 3)

In one run, on a throwaway tiny workspace (random base + random adapter, no download):
  1+2. for 1, 4 and 16 concurrent clients, --rounds rounds of two blocks of --block jobs each,
     interleaved so that both see the same machine load: in-process (Generator.generate in this
     process, one job after another) and through the API (`python -m iconforge.serve` under
     uvicorn on 127.0.0.1; each client submits a job and long-polls it until done, then the next);
     jobs/s, ms per job (wall / jobs) and p50/p95 of per-job latency (through the API from submit
     to done, which includes queueing behind the other clients);
  3. memory: the server's RSS every 50 jobs over 500 jobs (results capped at --max-results);
  4. a flood: 200 submissions at once against a queue of 16: 202 or 429 (with Retry-After) each,
     the server answers /health throughout, and every accepted job finishes.
A job is what the tests use: one 64 px image, 2 steps (the API's per-job overhead is largest
relative to the smallest job). Writes bench/out/serve.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402

from iconforge import paths  # noqa: E402
from iconforge.serve.client import Client  # noqa: E402

JOB = {"prompt": "zebrafish embryo", "n": 1, "steps": 2, "size": 64, "seed": 1}
PARAMS = """caption: {trigger: bioicons style, template: "{trigger}, {name}, {category}"}
sample: {prompts: [x], num_val_prompts: 0, seed: 0, steps: 2, guidance: 3.5, size: 64}
"""


def make_workspace(root: Path) -> Path:
    """models/base (tiny) + a random adapter + params.yaml: what `make demo` leaves, in seconds."""
    from iconforge.config import ModelConfig
    from iconforge.flux.lora_io import add_lora, save_adapter
    from iconforge.flux.models import load_pipeline, resolve_base

    resolve_base(ModelConfig(base="tiny", revision=""), root / paths.BASE)
    pipe = load_pipeline(root / paths.BASE)
    add_lora(pipe.transformer, rank=4, alpha=4, target_modules=("to_q", "to_k", "to_v", "to_out.0"), seed=0)
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_()
    save_adapter(pipe.transformer, root / paths.LORA_FILE, root / paths.LORA_KOHYA_FILE)
    (root / "params.yaml").write_text(PARAMS)
    return root


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def summary(blocks: list[tuple[list[float], float]]) -> dict:
    """Blocks of (per-job latencies, wall seconds) -> jobs/s, s per job, p50/p95 latency."""
    lat = [x for b in blocks for x in b[0]]
    wall = sum(b[1] for b in blocks)
    return {"jobs": len(lat), "jobs_per_s": len(lat) / wall, "s_per_job": wall / len(lat),
            "p50_ms": 1000 * pct(lat, 0.5), "p95_ms": 1000 * pct(lat, 0.95)}


def in_process(gen, settings, jobs: int) -> tuple[list[float], float]:
    lat = []
    t0 = time.perf_counter()
    for _ in range(jobs):
        t = time.perf_counter()
        gen.generate(settings)
        lat.append(time.perf_counter() - t)
    return lat, time.perf_counter() - t0


def through_api(url: str, clients: int, jobs: int, poll_s: float) -> tuple[list[float], float]:
    per_client = max(1, jobs // clients)

    def client(k: int) -> list[float]:
        out = []
        with Client(url) as api:
            for _ in range(per_client):
                t = time.perf_counter()
                job = api.submit(JOB, client_id=f"bench{k}")
                api.wait(job["id"], poll_s=poll_s)
                out.append(time.perf_counter() - t)
        return out

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        lat = [x for xs in pool.map(client, range(clients)) for x in xs]
    return lat, time.perf_counter() - t0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(url: str, pid: int, jobs: int, poll_s: float) -> list[dict]:
    points = [{"jobs": 0, "rss_mb": rss_mb(pid)}]
    with Client(url) as api:
        for i in range(1, jobs + 1):
            api.wait(api.submit({**JOB, "seed": i}, client_id="mem")["id"], poll_s=poll_s)
            if i % 50 == 0:
                points.append({"jobs": i, "rss_mb": rss_mb(pid)})
    return points


def flood(url: str, submissions: int, queue_size: int) -> dict:
    barrier = threading.Barrier(submissions)
    health: list[int] = []

    def submit(k: int):
        with httpx.Client(base_url=url, timeout=60) as http:
            barrier.wait()
            r = http.post("/v1/jobs", json={**JOB, "seed": k}, headers={"X-Client-Id": f"flood{k}"})
            return r.status_code, r.headers.get("Retry-After"), (r.json().get("id") if r.status_code == 202 else None)

    stop = threading.Event()

    def probe():
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                health.append(http.get("/health").status_code)
                time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(submissions) as pool:
        answers = list(pool.map(submit, range(submissions)))
    submit_s = time.perf_counter() - t0
    accepted = [a[2] for a in answers if a[0] == 202]
    with Client(url) as api:
        finished = [api.wait(j, poll_s=0.05)["status"] for j in accepted]
    stop.set()
    prober.join()
    codes = sorted({a[0] for a in answers})
    return {"submissions": submissions, "queue_size": queue_size, "status_codes": codes,
            "accepted": len(accepted), "rejected_429": sum(a[0] == 429 for a in answers),
            "429_with_retry_after": sum(a[0] == 429 and a[1] is not None for a in answers),
            "accepted_done": finished.count("done"), "submit_wall_s": submit_s,
            "health_probes": len(health), "health_not_200": sum(c != 200 for c in health)}


def start_server(root: Path, port: int, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "iconforge.serve", "--port", str(port), *flags], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the API did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--block", type=int, default=16, help="jobs per block (a multiple of 16)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved in-process/API block pairs per client count")
    ap.add_argument("--memory-jobs", type=int, default=500)
    ap.add_argument("--poll", type=float, default=1.0, help="client long-poll interval, s (Client.wait)")
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--json", type=Path, default=ROOT / "bench/out/serve.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "load_avg_before": os.getloadavg(), "job": JOB, "poll_s": args.poll,
              "versions": {p: version(p) for p in ("torch", "diffusers", "fastapi", "uvicorn")}}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        from iconforge.generate.generator import Generator
        from iconforge.generate.request import GenerateRequest
        from iconforge.generate.source import workspace

        root = make_workspace(Path(tmp))
        gen = Generator(workspace(root))
        settings = gen.settings(GenerateRequest(**JOB))
        gen.generate(settings)  # warm-up
        url = f"http://127.0.0.1:{args.port}"
        proc = start_server(root, args.port, "--queue-size", "64", "--per-client", "64", "--max-results", "100")
        try:
            with Client(url) as api:  # warm-up
                api.wait(api.submit(JOB)["id"], poll_s=args.poll)
            result["levels"] = {}
            for clients in (1, 4, 16):
                pairs = [(in_process(gen, settings, args.block), through_api(url, clients, args.block, args.poll))
                         for _ in range(args.rounds)]
                result["levels"][clients] = {"in_process": summary([p[0] for p in pairs]),
                                             "api": summary([p[1] for p in pairs])}
            result["memory"] = memory(url, proc.pid, args.memory_jobs, args.poll)
        finally:
            proc.terminate()
            proc.wait()
        proc = start_server(root, args.port + 1, "--queue-size", "16", "--per-client", "200")
        try:
            result["flood"] = flood(f"http://127.0.0.1:{args.port + 1}", 200, 16)
            result["flood"]["server_alive_after"] = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait()
    result["load_avg_after"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    report(result)


def report(r: dict) -> None:
    print(f"\n{r['date']}, {r['machine']}, load {r['load_avg_before'][0]:.2f} -> {r['load_avg_after'][0]:.2f}, "
          f"job: {r['job']['n']} image, {r['job']['size']} px, {r['job']['steps']} steps, long poll {r['poll_s']} s\n")
    print("| clients | path | jobs | jobs/s | ms per job | API / in-process | p50 latency ms | p95 latency ms |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for clients, level in r["levels"].items():
        ratio = level["api"]["s_per_job"] / level["in_process"]["s_per_job"]
        for name, s in (("in-process", level["in_process"]), ("HTTP API", level["api"])):
            shown = f"**{ratio:.2f}x**" if name == "HTTP API" else ""
            print(f"| {clients} | {name} | {s['jobs']} | {s['jobs_per_s']:.1f} | {1000 * s['s_per_job']:.1f} | {shown} | "
                  f"{s['p50_ms']:.0f} | {s['p95_ms']:.0f} |")
    mem = r["memory"]
    print("\nserver RSS over jobs: " + ", ".join(f"{m['jobs']}: {m['rss_mb']:.0f} MB" for m in mem))
    f = r["flood"]
    print(f"\nflood: {f['submissions']} at once, queue {f['queue_size']}: {f['accepted']} accepted (202), "
          f"{f['rejected_429']} x 429 ({f['429_with_retry_after']} with Retry-After), codes {f['status_codes']}; "
          f"{f['accepted_done']}/{f['accepted']} accepted jobs done; /health {f['health_probes'] - f['health_not_200']}"
          f"/{f['health_probes']} OK; server alive after: {f['server_alive_after']}")


if __name__ == "__main__":
    main()
