"""The one client of the HTTP API, used by the web UI and the Telegram bot (and the benchmark).

Configured from the environment: ICONFORGE_API_URL (default http://127.0.0.1:8000) and
ICONFORGE_API_KEY (sent as a Bearer token when set)."""
from __future__ import annotations

import os
import time
from typing import Callable

import httpx

API_URL_ENV, API_KEY_ENV = "ICONFORGE_API_URL", "ICONFORGE_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = ("done", "failed", "cancelled")
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{16}$"  # the ids the server makes (secrets.token_urlsafe(12))


class ApiError(Exception):
    """A 4xx/5xx answer, or no answer; `message` is the server's one line."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(f"{status}: {message}" if status else message)
        self.status, self.message, self.retry_after = status, message, retry_after


class Client:
    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout_s: float = 60.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    @classmethod
    def from_env(cls) -> "Client":
        return cls(os.environ.get(API_URL_ENV) or DEFAULT_URL, os.environ.get(API_KEY_ENV) or None)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, url: str, **kw) -> httpx.Response:
        try:
            r = self._http.request(method, url, **kw)
        except httpx.HTTPError as e:
            raise ApiError(0, f"cannot reach the iconforge API at {self.base_url} ({type(e).__name__})") from None
        if r.status_code >= 400:
            try:
                message = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:200] or r.reason_phrase
            retry = r.headers.get("Retry-After")
            raise ApiError(r.status_code, message, int(retry) if retry and retry.isdigit() else None)
        return r

    def model(self) -> dict:
        return self._call("GET", "/v1/model").json()

    def health(self) -> dict:
        return self._call("GET", "/health").json()

    def submit(self, request: dict, client_id: str | None = None) -> dict:
        """{id, status, position, url}; ApiError(429, retry_after=...) when the queue is full."""
        headers = {"X-Client-Id": client_id} if client_id else {}
        return self._call("POST", "/v1/jobs", json=request, headers=headers).json()

    def job(self, job_id: str, wait_s: float = 0.0) -> dict:
        """The job's state; with wait_s, the server answers as soon as it finishes, or after wait_s."""
        return self._call("GET", f"/v1/jobs/{job_id}", params={"wait": wait_s} if wait_s else None).json()

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel").json()

    def png(self, job_id: str, index: int) -> bytes:
        return self._call("GET", f"/v1/jobs/{job_id}/images/{index}.png").content

    def svg(self, job_id: str, index: int) -> str:
        return self._call("GET", f"/v1/jobs/{job_id}/images/{index}.svg").text

    def wait(self, job_id: str, on_update: Callable[[dict], None] = lambda view: None,
             poll_s: float = 0.25, timeout_s: float = 3600.0) -> dict:
        """Long-poll until the job is done, failed or cancelled: the end is seen at once, and `on_update`
        sees the state (progress) at least every `poll_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.job(job_id, wait_s=poll_s)
            on_update(view)
            if view["status"] in FINISHED:
                return view
            if time.monotonic() > deadline:
                raise ApiError(0, f"job {job_id} not finished after {timeout_s:.0f} s")
