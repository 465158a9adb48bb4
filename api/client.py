"""A small Python client for actq's HTTP API (what the ``actq`` command uses).

client = Client("http://127.0.0.1:8000")
job = client.submit("batched_tdb", request, tags=["demo"])
final = client.wait(job["id"])
response = client.result_json(job["id"])
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import requests
import urllib3

from models.settings import DEFAULT_API_URL, Settings

PENDING = ("queued", "started")


class ClientError(Exception):
    """The service answered with an error status; ``body`` is its parsed JSON (or text)."""

    def __init__(self, status: int, body: Any):
        super().__init__(status, body)
        self.status = status
        self.body = body

    def __str__(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(error, dict):
            where = f" at {error['path']}" if error.get("path") else ""
            return f"{self.status} {error.get('type')}: {error.get('message')}{where}"
        return f"{self.status}: {self.body}"


def _body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def whole_body(response: requests.Response) -> bytes:
    """The body of a streamed response, read and inflated in one call.

    requests' ``.content`` inflates a compressed body 10 KB at a time, each step bounded in what it
    may produce; for a result (300 KB deflated, 1.1 MB of JSON) that took about twice as long as
    one inflate of the whole body, 5 ms more per result. Errors are requests' own, as there."""
    try:
        return response.raw.read(decode_content=True)
    except urllib3.exceptions.ProtocolError as error:
        raise requests.exceptions.ChunkedEncodingError(error) from error
    except urllib3.exceptions.DecodeError as error:
        raise requests.exceptions.ContentDecodingError(error) from error
    except urllib3.exceptions.ReadTimeoutError as error:
        raise requests.exceptions.ConnectionError(error) from error
    except urllib3.exceptions.SSLError as error:
        raise requests.exceptions.SSLError(error) from error
    finally:
        response.close()  # the connection went back to the pool when its body was read


class Client:
    def __init__(self, url: str = DEFAULT_API_URL, timeout: float = 30.0, key: str | None = None):
        """``key``: the API key to send (default: ``ACTQ_API_KEY``, when set)."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        key = key if key is not None else Settings().api_key
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"

    def _get(self, path: str, params=None, timeout: float | None = None) -> requests.Response:
        return self.http.get(self.url + path, params=params, timeout=timeout or self.timeout)

    def _checked(self, response: requests.Response) -> requests.Response:
        if response.status_code >= 400:
            raise ClientError(response.status_code, _body(response))
        return response

    def submit(
        self,
        endpoint: str,
        request: dict | bytes | str | None = None,
        *,
        model: str | None = None,
        label: str | None = None,
        tags: list[str] | None = None,
        wait: float | None = None,
        fresh: bool = False,
    ) -> dict:
        """Submit a job; the 202 body (``id``, ``status``, ``url``, ``resultUrl``).

        With ``wait`` and a job that finished in time, the TDB response is returned instead.
        ``fresh`` asks for a new run even if an identical request was answered before.
        """
        params: list[tuple[str, Any]] = [("tag", t) for t in tags or []]
        if fresh:
            params.append(("fresh", "1"))
        for key, value in (("model", model), ("label", label), ("wait", wait)):
            if value is not None:
                params.append((key, value))
        if isinstance(request, dict):
            data = json.dumps(request).encode()
        elif isinstance(request, str):
            data = request.encode()
        else:
            data = request or b""
        response = self.http.post(
            f"{self.url}/v1/{endpoint}",
            data=data,
            params=params,
            headers={"Content-Type": "application/json"},
            timeout=self.timeout + (wait or 0),
        )
        return self._checked(response).json()

    def status(self, job_id: str, wait: float | None = None) -> dict:
        params = {"wait": wait} if wait else None
        timeout = self.timeout + (wait or 0)
        return self._checked(self._get(f"/v1/jobs/{job_id}", params, timeout)).json()

    def result(self, job_id: str, wait: float | None = None) -> tuple[int, bytes]:
        """(HTTP status, body bytes): 200 and the TDB response, 202 pending, or an error."""
        params = {"wait": wait} if wait else None
        response = self.http.get(
            f"{self.url}/v1/jobs/{job_id}/result",
            params=params,
            timeout=self.timeout + (wait or 0),
            stream=True,
        )
        body = whole_body(response)
        if response.status_code == 404:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = body.decode("utf-8", "replace")
            raise ClientError(404, parsed)
        return response.status_code, body

    def result_json(self, job_id: str, wait: float | None = None) -> dict:
        status, body = self.result(job_id, wait)
        if status != 200:
            raise ClientError(status, json.loads(body))
        return json.loads(body)

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: Callable[[dict, float], None] | None = None,
        poll: float = 10.0,
    ) -> dict:
        """Block until the job is final (long-polling); returns its status body."""
        start = time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            remaining = None if timeout is None else timeout - elapsed
            step = poll if remaining is None else max(0.0, min(poll, remaining))
            job = self.status(job_id, wait=step or None)
            if on_progress:
                on_progress(job, time.monotonic() - start)
            if job["status"] not in PENDING:
                return job
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")

    def history(self, **filters: Any) -> dict:
        params = []
        for key, value in filters.items():
            if value is None:
                continue
            values = value if isinstance(value, list | tuple) else [value]
            params += [(key, str(v).lower() if isinstance(v, bool) else v) for v in values]
        return self._checked(self._get("/v1/jobs", params)).json()

    # --- run history and comparison (api/runs.py) ---

    def runs(self, **filters: Any) -> dict:
        """``GET /v1/runs``: runs newest first; filters as in the API (``hasAblations``, ...)."""
        params = []
        for key, value in filters.items():
            if value is None:
                continue
            values = value if isinstance(value, list | tuple) else [value]
            params += [(key, str(v).lower() if isinstance(v, bool) else v) for v in values]
        return self._checked(self._get("/v1/runs", params)).json()

    def run(self, address: str) -> dict:
        """One run (``JOB/N``, or ``JOB`` for its first) with its own part of the request."""
        return self._checked(self._get(f"/v1/runs/{address}")).json()

    def compare(
        self,
        a: str,
        b: str,
        *,
        only_diff: bool = False,
        sort: str | None = None,
        top: int | None = None,
    ) -> dict:
        """``GET /v1/compare``: run ``a`` against run ``b`` (changes are ``b - a``)."""
        params: dict[str, Any] = {"a": a, "b": b}
        if only_diff:
            params["onlyDiff"] = "1"
        if sort:
            params["sort"] = sort
        if top:
            params["top"] = top
        return self._checked(self._get("/v1/compare", params)).json()

    def baseline(self, address: str) -> dict:
        """The run's clean baseline (raises ClientError 404 when there is none)."""
        return self._checked(self._get(f"/v1/runs/{address}/baseline")).json()

    def submit_baseline(self, address: str) -> dict:
        """Submit the run's clean twin; the 202 body with ``run`` (its address) and links."""
        response = self.http.post(f"{self.url}/v1/runs/{address}/baseline", timeout=self.timeout)
        return self._checked(response).json()

    def edit_run(self, address: str, **edit: Any) -> dict:
        """Set ``label``, ``tags``, ``addTags`` or ``removeTags`` of one run."""
        url = f"{self.url}/v1/runs/{address}"
        return self._checked(self.http.patch(url, json=edit, timeout=self.timeout)).json()

    def edit_job(self, job_id: str, **edit: Any) -> dict:
        """Set ``label``, ``tags``, ``addTags`` or ``removeTags`` of a job and its runs."""
        url = f"{self.url}/v1/jobs/{job_id}"
        return self._checked(self.http.patch(url, json=edit, timeout=self.timeout)).json()

    def models(self) -> dict:
        return self._checked(self._get("/v1/models")).json()

    def health(self) -> dict:
        return self._checked(self._get("/healthz")).json()

    def job_url(self, job_id: str) -> str:
        return f"{self.url}/v1/jobs/{job_id}"
