"""Shared fixtures: real Mosquitto, influxd and VictoriaMetrics on ephemeral loopback ports;
seeded randomness (FIELDMON_TEST_SEED) and the Hypothesis profiles; no secret in any log
(leakcheck.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import settings

from fieldmon.lab.servers import (
    InfluxdServer,
    MosquittoServer,
    ServerQueryError,
    VictoriaMetricsServer,
)

# leakcheck: a test (or the session) whose logs carry a secret fails. pytester runs it on planted
# leaks in tests/test_leakcheck.py.
pytest_plugins = ["leakcheck", "pytester", "demo_run"]

# The tests' own secret files, kept in git, which keeps no modes but the executable bit: made
# private here, as the daemons require of a secret file (fieldmon.core.config.secrets).
for _secret in (Path(__file__).parent / "data" / "config" / "secrets").glob("*"):
    _secret.chmod(0o600)

# A test that uses any of these starts a real server, so it is an integration test.
_SERVER_FIXTURES = frozenset(
    {"mosquitto", "influxd", "influx_db", "victoria_metrics", "storage_backend"}
)

# -- seeded randomness ------------------------------------------------------------------------
# Randomness in tests is reproducible. The global `random` module is seeded before every test
# from FIELDMON_TEST_SEED and the test's id (so tests draw different numbers, and one test draws
# the same numbers alone or in the whole suite). Unset, a fresh seed is chosen per run, shown in
# the header and in the report of every failing test: set it to repeat that run's choices (the
# kill moments of tests/faults, for one). Tests that need fixed numbers use random.Random(N).
SEED_VARIABLE = "FIELDMON_TEST_SEED"


def session_seed(environ: Mapping[str, str]) -> int:
    """The run's seed: FIELDMON_TEST_SEED when set, else a fresh one."""
    text = environ.get(SEED_VARIABLE, "").strip()
    if not text:
        return secrets.randbits(32)
    try:
        return int(text)
    except ValueError:
        raise pytest.UsageError(f"{SEED_VARIABLE} must be an integer, not {text!r}") from None


SEED = session_seed(os.environ)
# pytest-xdist's workers start after this import, from this environment: one seed for the run.
os.environ[SEED_VARIABLE] = str(SEED)


def seed_for(nodeid: str) -> str:
    """What `random` is seeded with for the test `nodeid`."""
    return f"{SEED}:{nodeid}"


def pytest_report_header() -> str:
    return f"random: {SEED_VARIABLE}={SEED} (set it to repeat this run's random choices)"


@pytest.fixture(autouse=True)
def _seeded_random(request: pytest.FixtureRequest) -> None:
    random.seed(seed_for(request.node.nodeid))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport() -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        report.sections.append(
            ("random seed", f"{SEED_VARIABLE}={SEED} repeats this test's random choices")
        )
    return report


# Hypothesis draws the same examples on every run ("fieldmon", the default): a failure seen once
# is seen again, by CI and by whoever looks at it. HYPOTHESIS_PROFILE=explore draws new examples
# each run to look further; a failure there prints the @reproduce_failure line that repeats it.
# Both keep each test's own example count (its @settings or Hypothesis' default of 100). No
# per-example deadline: on a 2-core machine shared with real servers, time is not the property.
settings.register_profile(
    "fieldmon", derandomize=True, database=None, print_blob=True, deadline=None
)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fieldmon"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="also run the tests marked `long` (the 100,000-example ingest fuzz: about an hour)",
    )


# With pytest-xdist (scripts/test.sh) a module runs on one worker, so its module fixtures start
# once. The tests that kill, cut and time whole pipelines, and the two modules that read the one
# demo run, are one group: they run one after another, never beside each other, while the other
# worker takes the rest. (xdist's own `--dist loadgroup` marks do not take with pytest 9; this
# scheduler groups by node id instead.)
_SERIAL_PATHS = (
    "tests/faults/",
    "tests/e2e/",
    "tests/lab/test_demo.py",
    "tests/dashboards/test_dashboards.py",
)
SERIAL_GROUP = "whole-pipelines"


def scheduling_group(nodeid: str) -> str:
    """The group (run on one worker, in order) of the test `nodeid`: its module, or the serial
    group."""
    path = nodeid.split("::", 1)[0]
    return SERIAL_GROUP if path.startswith(_SERIAL_PATHS) else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scheduling_group(nodeid)

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a server fixture `integration` (`-m "not integration"`); skip
    the `long` ones unless `--long` is given; the serial group first (a worker starts on it at
    once while the other takes everything else)."""
    long_runs = config.getoption("--long")
    for item in items:
        if _SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if not long_runs and item.get_closest_marker("long"):
            item.add_marker(pytest.mark.skip(reason="a long run: pytest --long"))
    items.sort(key=lambda item: scheduling_group(item.nodeid) != SERIAL_GROUP)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A fresh broker per test (anonymous, persistent) with its files in the test's tmp_path."""
    server = MosquittoServer(tmp_path / "mosquitto")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxdServer]:
    """One influxd for the session; tests isolate themselves with `influx_db`."""
    server = InfluxdServer(tmp_path_factory.mktemp("influxd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def influx_db(influxd: InfluxdServer) -> Iterator[str]:
    """The name of a new, empty database on the session influxd, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    influxd.create_database(name)
    yield name
    # Dropping keeps the session server small; a failure here must not hide the test's result.
    if influxd.running():
        with contextlib.suppress(ServerQueryError):
            influxd.query(f'DROP DATABASE "{name}"')


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetricsServer]:
    """One VictoriaMetrics for the session; tests tell their series apart by unique labels."""
    server = VictoriaMetricsServer(tmp_path_factory.mktemp("victoria-metrics"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Reply:
    """What the fake server answers: status, headers, body, after an optional delay."""

    status: int = 204
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    """One request the fake server received (the body inflated if it came gzipped)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float = 0.0  # time.monotonic() when it arrived


class FakeInflux:
    """A real aiohttp server on 127.0.0.1 answering every request with `reply`; records them.

    It runs its own event loop in a thread, so the code under test can use asyncio.run().
    """

    def __init__(self) -> None:
        self.reply = Reply()
        self.queued: deque[Reply] = deque()  # one-off answers, used before `reply`
        self.requests: list[Seen] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-influx")

    def answer(
        self,
        status: int,
        body: bytes | str = b"",
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer every following request like this."""
        data = body.encode() if isinstance(body, str) else body
        self.reply = Reply(status, data, headers or {}, delay)

    def answer_next(
        self, status: int, body: bytes | str = b"", headers: dict[str, str] | None = None
    ) -> None:
        """Answer one request like this (in the order queued), before the standing answer."""
        data = body.encode() if isinstance(body, str) else body
        self.queued.append(Reply(status, data, headers or {}))

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:40123."""
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        # aiohttp inflates a gzip body itself (and refuses one that is not valid gzip).
        body = await request.read()
        self.requests.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                body,
                time.monotonic(),
            )
        )
        reply = self.queued.popleft() if self.queued else self.reply
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp offers no public accessor for the bound port
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def start(self) -> FakeInflux:
        """Serve in the background thread until stop()."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Close the server and its loop."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def fake_influx() -> Iterator[FakeInflux]:
    """An HTTP server on loopback whose answers the test chooses (`fake_influx.reply = ...`)."""
    server = FakeInflux().start()
    try:
        yield server
    finally:
        server.stop()
