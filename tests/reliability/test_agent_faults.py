"""The boot agent under faults: every failure is a logged exit code and a power-off, no secret.

The agent runs as a process against the local AWS and the IMDS emulator (helpers shared with
tests/integration/test_agent_world.py). The annex's lease stays the safety net behind a
powered-off instance: it terminates the instance and deletes the tarball (test_lease_faults.py).
"""

from __future__ import annotations

import gzip
import io
import re
import subprocess
import sys
import tarfile
import time
from typing import Any, Callable

import pytest

from annex_sandbox.local_aws import FAKE_SECRET_ACCESS_KEY
from condor_annex import contract
from condor_annex.agent.exits import Exit
from tests.fixtures.reliability import Row
from tests.integration import test_agent_world as _world_fixtures
from tests.integration.test_agent_world import AGENT, ANNEX_CONFIG, TOKEN, AnnexWorld, tarball

world = _world_fixtures.world
AREA = "boot agent"
pytestmark = pytest.mark.xdist_group("reliability-agent")
mark = pytest.mark.reliability


def _assert_no_secret(done: Any, world: AnnexWorld, *, credentials_served: bool = True) -> None:
    """No token, no AWS secret key and no session token in the agent's output.

    The role credentials hunted for are the ones the metadata service really handed out; when
    the agent got that far (`credentials_served`) their absence is itself a failure, so this
    check can never pass by having nothing to look for.
    """
    log = done.stdout + done.stderr
    assert TOKEN.decode().strip() not in log, "the annex token is in the agent's output"
    assert FAKE_SECRET_ACCESS_KEY not in log
    served = world.imds.served_credentials(world.instance_id)
    if credentials_served:
        assert served is not None, "the metadata service never handed out role credentials"
    if served is not None:
        assert served.secret_access_key not in log, "the role's secret key is in the output"
        assert served.token not in log, "the role's session token is in the output"
    assert not re.search(r"SecretAccessKey|aws_secret|SessionToken\W*[:=]", log)


def _claim_outcome(
    observed: Row, done: Any, world: AnnexWorld, *, code: int, powered_off: bool
) -> None:
    observed.equal("exit {}", done.returncode, code)
    errors = [line for line in done.stderr.splitlines() if "result=error" in line]
    if code != 0:
        first = errors[0] if errors else "no error line"
        observed.check(re.sub(r" ms=\d+", "", first)[:160], bool(errors), done.stderr)
    observed.equal("powered off: {}", world.powered_off, powered_off)


def _claim_no_secret(
    observed: Row, done: Any, world: AnnexWorld, *, credentials_served: bool = True
) -> None:
    observed.holds(
        "no token or role credential in its output",
        lambda: _assert_no_secret(done, world, credentials_served=credentials_served),
    )


def _fails(
    world: AnnexWorld,
    observed: Row,
    code: Exit,
    step: str,
    *args: str,
    timeout: float = 60,
    credentials_served: bool = True,
) -> Any:
    done = world.run_agent(*args, timeout=timeout)
    _claim_outcome(observed, done, world, code=code, powered_off=True)
    observed.check(
        f"failed at step {step}, then powered off",
        f"step={step} result=error" in done.stderr and "step=poweroff result=ok" in done.stderr,
        done.stderr,
    )
    written = (
        sorted(p.name for p in world.config_dir.iterdir()) if world.config_dir.exists() else []
    )
    observed.check(f"files written: {', '.join(written) or 'none'}", not written)
    _claim_no_secret(observed, done, world, credentials_served=credentials_served)
    return done


# --- AWS faults ---------------------------------------------------------------------------------


@mark(AREA, "S3 outage during boot: GetObject throttled for good (SlowDown)")
@pytest.mark.xdist_group("reliability-agent-s3-outage")
def test_s3_outage_during_boot_exits_and_powers_off(world: AnnexWorld, observed: Any) -> None:
    # The slowest case (~95 s): the agent's clients make botocore's 10 adaptive attempts, as on
    # a real instance, before the power-off. Its own group so it runs beside the others.
    world.setup()
    world.upload("s3down")
    world.launch_on_demand("s3down")
    world.aws.throttle("s3", "GetObject", capacity=0, refill_per_second=0)
    done = _fails(world, observed, Exit.AWS_ERROR, "download", timeout=240)
    assert "SlowDown" in done.stderr


def _start_agent(world: AnnexWorld, *args: str) -> subprocess.Popen[str]:
    """The agent as `world.run_agent` runs it, but in the background (to act while it runs)."""
    return subprocess.Popen(
        [str(AGENT), "--root", str(world.root), "--no-firewall", "--imds-timeout", "5", *args],
        env=world.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _when(what: str, happened: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    """Wait for an event the agent causes (a liveness guard of 60 s, not a budget)."""
    deadline = time.monotonic() + 60
    while not happened():
        if proc.poll() is not None:
            raise AssertionError(f"the agent exited (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened")
        time.sleep(0.02)


_AGENT_APIS = [
    ("ec2", "DescribeInstances"),
    ("iam", "GetRolePolicy"),
    ("s3", "GetObject"),
]


@pytest.mark.parametrize(
    "service, operation",
    [
        pytest.param(
            s, o, marks=mark(AREA, f"{s.upper()} throttling ({o} refused, then AWS recovers)"),
            id=s,
        )
        for s, o in _AGENT_APIS
    ],
)  # fmt: skip
def test_throttled_agent_api_is_absorbed(
    world: AnnexWorld, observed: Any, service: str, operation: str
) -> None:
    # Deterministic, whatever the machine's load: the service refuses everything until the
    # agent's call has been refused at least once, then recovers while the agent retries.
    world.setup()
    world.upload("slowapis")
    world.launch_on_demand("slowapis")
    world.prefetch_credentials()
    world.aws.clear_calls()
    world.aws.throttle(service, capacity=0, refill_per_second=0)
    agent = _start_agent(world)
    try:
        _when(
            f"a throttled {operation}",
            lambda: any(c.throttled for c in world.aws.calls(service, operation)),
            agent,
        )
    finally:
        world.aws.clear_throttles()
    done = _finish(agent)
    throttled = len([c for c in world.aws.calls(service, operation) if c.throttled])
    _claim_outcome(observed, done, world, code=0, powered_off=False)
    observed.check(
        f"{operation} throttled {throttled}x and retried by botocore (adaptive)", throttled >= 1
    )
    _claim_no_secret(observed, done, world)


@mark(AREA, "instance role lacks IAM read (AccessDenied), IAM enforced")
def test_access_denied_powers_off(world: AnnexWorld, observed: Any) -> None:
    world.setup(iam_read=False)
    world.upload("denied")
    world.launch_on_demand("denied")
    world.prefetch_credentials()
    world.aws.enforce_iam(True)
    _fails(world, observed, Exit.ACCESS_DENIED, "bucket")


@mark(AREA, "tarball missing in the bucket (deleted, or lease already ended)")
def test_missing_tarball_powers_off(world: AnnexWorld, observed: Any) -> None:
    world.setup()
    world.launch_on_demand("gone")
    _fails(world, observed, Exit.TARBALL_MISSING, "download")


@mark(
    AREA,
    "instance launched without the annex client token (looks like an untagged Spot Fleet "
    "instance; tag deadline 2 s)",
)
def test_foreign_instance_powers_off(world: AnnexWorld, observed: Any) -> None:
    world.setup()
    world.launch_on_demand(None)
    _fails(world, observed, Exit.FLEET_TAG_TIMEOUT, "annex-name", "--fleet-tag-timeout", "2")


# --- Spot Fleet tag -----------------------------------------------------------------------------


@mark(AREA, "Spot Fleet tag arrives late, tags not in metadata: DescribeInstances polling")
def test_late_fleet_tag_is_waited_for(world: AnnexWorld, observed: Any) -> None:
    # The tag is added only once the agent has looked (and polled) without finding it, so the
    # wait is exercised whatever the machine's load.
    world.aws.set_fleet_tag_delay(3600)
    world.setup()
    world.upload("latetag")
    world.launch_spot_fleet("latetag", tags_in_metadata=False)
    world.aws.clear_calls()
    agent = _start_agent(world)
    try:
        _when(
            "a DescribeInstances poll",
            lambda: len(world.aws.calls("ec2", "DescribeInstances")) >= 2,
            agent,
        )
    finally:
        world.aws.fire_fleet_tags()
    done = _finish(agent)
    polls = re.search(r"tag_polls=(\d+)", done.stderr)
    _claim_outcome(observed, done, world, code=0, powered_off=False)
    observed.check(
        f"waited {polls.group(1) if polls else 'no'} polls for "
        f"{contract.SPOT_FLEET_REQUEST_ID_TAG}",
        polls is not None and int(polls.group(1)) >= 1,
        done.stderr,
    )
    observed.check(
        f"{contract.TARBALL_CONFIG_FILE} installed",
        (world.config_dir / contract.TARBALL_CONFIG_FILE).exists(),
    )
    _claim_no_secret(observed, done, world)


@mark(AREA, "Spot Fleet tag never arrives (deadline 2 s instead of 50 min)")
def test_fleet_tag_never_arrives_powers_off(world: AnnexWorld, observed: Any) -> None:
    world.aws.set_fleet_tag_delay(3600)
    world.setup()
    world.upload("notag")
    world.launch_spot_fleet("notag", tags_in_metadata=False)
    _fails(world, observed, Exit.FLEET_TAG_TIMEOUT, "annex-name", "--fleet-tag-timeout", "2")


# --- Instance metadata --------------------------------------------------------------------------


@mark(AREA, "slow IMDS: every answer 0.3 s late")
def test_slow_imds_still_configures(world: AnnexWorld, observed: Any) -> None:
    world.setup()
    world.upload("slowimds")
    world.launch_on_demand("slowimds")
    world.imds.set_latency(world.instance_id, 0.3)
    done = world.run_agent()
    _claim_outcome(observed, done, world, code=0, powered_off=False)
    answered = len(world.imds.requests(world.instance_id))
    observed.check(f"{answered} metadata requests answered with the delay set", answered > 0)
    _claim_no_secret(observed, done, world)


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(m, marks=mark(AREA, f"IMDS absent: {what} (deadline 2 s)"), id=m)
        for m, what in (
            ("refuse", "connection refused"),
            ("hang", "connections accepted, never answered"),
            ("disabled", "HttpEndpoint disabled (403/404)"),
        )
    ],
)
def test_absent_imds_powers_off_within_its_deadline(
    world: AnnexWorld, observed: Any, mode: str
) -> None:
    world.setup()
    world.upload("noimds")
    world.launch_on_demand("noimds")
    world.imds.set_available(world.instance_id, False, mode=mode)
    try:
        done = _fails(
            world, observed, Exit.IMDS_UNAVAILABLE, "imds", "--imds-timeout", "2",
            credentials_served=False,
        )  # fmt: skip
    finally:
        world.imds.set_available(world.instance_id, True)
    assert "deadline" in done.stderr or "metadata" in done.stderr


# --- Hostile tarballs ---------------------------------------------------------------------------


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes], *, gz: bool = True) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for info in members:
            body = data.get(info.name)
            archive.addfile(info, io.BytesIO(body) if body is not None else None)
    return gzip.compress(raw.getvalue()) if gz else raw.getvalue()


def _file(name: str, body: bytes) -> tuple[tarfile.TarInfo, dict[str, bytes]]:
    info = tarfile.TarInfo(name)
    info.size = len(body)
    return info, {name: body}


def _with(*extra: tarfile.TarInfo, data: dict[str, bytes] | None = None) -> bytes:
    config, files = _file(contract.TARBALL_CONFIG_FILE, ANNEX_CONFIG.replace(b"{name}", b"x"))
    return _tar([config, *extra], {**files, **(data or {})})


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


def _fifo(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info


def _bomb() -> bytes:
    # 64 MiB of zeros compress to ~64 KiB: far over the agent's 16 MiB uncompressed cap.
    info = tarfile.TarInfo("99-bomb.config")
    info.size = 64 * 1024 * 1024
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    return gzip.compress(raw.getvalue(), compresslevel=9)


def _many() -> bytes:
    members = [_file(f"f{i}.config", b"X = 1\n") for i in range(300)]
    return _with(*(m for m, _ in members), data={k: v for _, d in members for k, v in d.items()})


def _duplicate() -> bytes:
    first, data = _file(contract.TARBALL_CONFIG_FILE, b"A = 1\n")
    again, _ = _file(contract.TARBALL_CONFIG_FILE, b"A = 2\n")
    return _tar([first, again], data)


def _plus(name: str, body: bytes = b"x") -> bytes:
    """A valid tarball plus one regular member `name`."""
    info, data = _file(name, body)
    return _with(info, data=data)


def _only(name: str, body: bytes = b"A = 1\n", *, gz: bool = True) -> bytes:
    """A tarball with the single regular member `name`."""
    info, data = _file(name, body)
    return _tar([info], data, gz=gz)


_HOSTILE: list[tuple[str, str, Callable[[], bytes]]] = [
    ("symlink", "symlink to /etc/shadow", lambda: _with(_link("x.config", "/etc/shadow", tarfile.SYMTYPE))),
    ("hardlink", "hard link to /etc/passwd", lambda: _with(_link("y.config", "/etc/passwd", tarfile.LNKTYPE))),
    ("device", "character device (/dev/null clone)", lambda: _with(_device("null.config"))),
    ("fifo", "FIFO", lambda: _with(_fifo("pipe.config"))),
    ("traversal", "member `../../etc/cron.d/evil`", lambda: _plus("../../etc/cron.d/evil")),
    ("absolute", "member `/etc/sudoers.d/evil`", lambda: _plus("/etc/sudoers.d/evil")),
    ("bomb", "gzip bomb (64 MiB of zeros in ~64 KiB)", _bomb),
    ("many", "300 members", _many),
    ("duplicate", "the same member twice", _duplicate),
    ("mixed", f"mixed layouts: {contract.TARBALL_CONFIG_FILE} and config.d/", lambda: _plus("config.d/x.config")),
    ("ambiguous", "ambiguous layout: passwords.d/ alone", lambda: _only("passwords.d/POOL")),
    ("truncated", "truncated gzip stream", lambda: tarball("x")[:-20]),
    ("plain", "plain tar, not gzip", lambda: _only(contract.TARBALL_CONFIG_FILE, gz=False)),
]  # fmt: skip


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(b, marks=mark(AREA, f"hostile tarball: {what}"), id=i)
        for i, what, b in _HOSTILE
    ],
)
def test_hostile_tarball_is_refused_and_nothing_written(
    world: AnnexWorld, observed: Any, build: Callable[[], bytes]
) -> None:
    world.setup()
    world.upload("hostile", build())
    world.launch_on_demand("hostile")
    _fails(world, observed, Exit.TARBALL_REFUSED, "verify")
    outside = sorted(p.name for p in world.root.parent.iterdir() if p.name != "root")
    assert outside == [world.poweroff_marker.name]
    assert not (world.root / "etc").exists() or not any((world.root / "etc").rglob("*evil*"))


# --- Tests of the secret check itself -----------------------------------------------------------

# The real agent with one fault added: it logs the role credentials its session resolved (the
# mistake the check exists to catch), then boots as usual.
_LEAKY_AGENT = """
import sys
from condor_annex import aws
from condor_annex.agent import log, main

real_make_session = aws.make_client_session

def leaky_make_session(*args, **kwargs):
    session = real_make_session(*args, **kwargs)
    frozen = session.get_credentials().get_frozen_credentials()
    log.emit("credentials", "ok", **{FIELD: getattr(frozen, FIELD)})
    return session

aws.make_client_session = leaky_make_session
sys.exit(main.main())
"""


@pytest.mark.parametrize("field", ["secret_key", "token"])
def test_secret_check_catches_an_agent_that_logs_its_role_credentials(
    world: AnnexWorld, field: str
) -> None:
    world.setup()
    world.upload("leaky")
    world.launch_on_demand("leaky")
    leaky = subprocess.run(
        [sys.executable, "-c", _LEAKY_AGENT.replace("FIELD", repr(field)),
         "--root", str(world.root), "--no-firewall", "--imds-timeout", "5"],
        env=world.env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert leaky.returncode == 0, leaky.stderr  # otherwise a working agent
    assert f"step=credentials result=ok {field}=" in leaky.stderr
    assert AGENT.exists()  # the mutant runs the same installed package as the real console script
    with pytest.raises(AssertionError, match=r"secret key|session token"):
        _assert_no_secret(leaky, world)


def test_secret_check_fails_when_no_credentials_were_served(world: AnnexWorld) -> None:
    """An agent that never reached the metadata credentials cannot vouch for their absence."""
    world.setup()
    world.launch_on_demand("never")
    quiet = subprocess.CompletedProcess(args=[], returncode=0, stdout="", stderr="")
    with pytest.raises(AssertionError, match="never handed out"):
        _assert_no_secret(quiet, world)
