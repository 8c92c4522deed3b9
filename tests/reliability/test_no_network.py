"""No network: the CLI says which endpoint did not answer and what to do, after one request.

The endpoint is a local listener that accepts each connection and closes it at once (what a
dead proxy or a firewall's reset looks like), so the test counts attempts instead of timing
them. Retries stay for throttling and 5xx answers (tests/reliability/test_aws_faults.py).
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from condor_annex.cli.main import CliContext, main
from tests.integration.annex_env import AnnexEnv
from tests.reliability.conftest import Run, claim_refused

AREA = "aws faults"
pytestmark = pytest.mark.xdist_group("reliability-no-network")
mark = pytest.mark.reliability


class _Hangup:
    """Accepts TCP connections and closes each at once; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


@pytest.fixture
def hangup() -> Iterator[_Hangup]:
    server = _Hangup()
    yield server
    server.sock.close()


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["status"], marks=mark(AREA, "no network: `status` (endpoint hangs up)"), id="status"),
        pytest.param(
            ["off", "-annex-name", "gone", "-json"],
            marks=mark(AREA, "no network: `off` (endpoint hangs up)"),
            id="off",
        ),
    ],
)  # fmt: skip
def test_unreachable_endpoint_is_reported_after_one_attempt(
    env: AnnexEnv, observed: Any, hangup: _Hangup, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", hangup.url)
    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(stdout=out, stderr=err, pool_view=lambda: set(), pool_shutdown=lambda n: 0)
    run = Run(main([*argv, *env.cli_args()], ctx), out.getvalue(), err.getvalue())
    claim_refused(observed, run, 1, f"no answer from the AWS endpoint {hangup.url}", "network")
    # One request: urllib3 re-opens a connection reset before the response once, so one request
    # is two connections here; the SDK's ten adaptive attempts would have been twenty.
    observed.check(
        f"{hangup.accepted} connections: one request, not retried",
        0 < hangup.accepted <= 2,
        hangup.accepted,
    )
