"""What a run looks like while it runs: one sample a second over REST, shown live, plotted.

:class:`Watch` reads the hub as any client would (``GET /devices``, ``/rollouts``,
``/drift/alerts``, ``/rounds``, ``/metrics``) about once a second (every few seconds for
large fleets: the listing is a page per thousand devices), plus the accuracy of the
predictions served since the last sample (:mod:`simulator.load`). With ``live`` it shows
the latest sample under the story's narration with **rich** (a ``Live`` display that
redraws in place; the narration prints above it), so no terminal code is written here;
``edgefleet sim`` turns it on only when stdout is a terminal and ``--quiet`` is not given.
:meth:`Watch.plot` draws the samples as PNGs (accuracy, drift score, version share) with
matplotlib, an optional extra (``pip install edgefleet[plot]``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from protocol.errors import EdgefleetError
from simulator import hubs
from simulator.load import Load
from simulator.report import hub_counters
from simulator.steps import MODEL

PLOT_EXTRA = "pip install 'edgefleet[plot]'"


class PlotUnavailable(EdgefleetError):
    """``--plot`` without matplotlib installed."""

    reason = "plot_unavailable"


def check_plot() -> None:
    """Raises: PlotUnavailable, naming the extra to install."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise PlotUnavailable(f"--plot needs matplotlib: {PLOT_EXTRA}") from e


@dataclass
class Sample:
    """One look at the run, ``t`` seconds after the watch began."""

    t: float
    devices: int = 0
    online: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)
    rollout: str = "-"
    alerts: int = 0
    drift_score: float = 0.0
    round: str = "-"
    accuracy: float | None = None


@dataclass(eq=False)
class Watch:
    """Samples the hub behind ``api`` until closed; ``live``: show them as they come."""

    api: httpx.Client
    live: bool = False
    console: Console | None = None  # where the live table goes (default: stdout)
    samples: list[Sample] = field(default_factory=list)
    _load: Load | None = None
    _ids: frozenset[str] = frozenset()
    _scored: tuple[int, int] = (0, 0)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = field(default_factory=time.monotonic)

    def attach(self, load: Load, ids: list[str]) -> None:
        """Count these devices, and the accuracy of what ``load`` has them serve."""
        self._load, self._ids = load, frozenset(ids)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="sim-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        if not self.live:
            self._loop(None)
            return
        with Live(self._table(), console=self.console or Console(), refresh_per_second=1,
                  redirect_stdout=True, transient=True) as live:  # fmt: skip
            self._loop(live)

    def _loop(self, live: Live | None) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):  # hub gone
                self.samples.append(self._sample())
            if live is not None:
                live.update(self._table())
            interval = max(1.0, len(self._ids) / 200)
            if self._stop.wait(interval):
                return

    def _sample(self) -> Sample:
        sample = Sample(round(time.monotonic() - self._started, 1))
        listing = [d for d in hubs.listing(self.api) if not self._ids or d["id"] in self._ids]
        sample.devices, sample.online = len(listing), sum(bool(d["online"]) for d in listing)
        sample.versions = dict(Counter(
            f"v{d['active']['version']}" if d["active"] else "none" for d in listing))  # fmt: skip
        counters = hub_counters(self.api)
        sample.messages = {k: counters[k] for k in ("ingested", "duplicates", "rejected")}
        rollouts = self.api.get("/rollouts").json()
        if rollouts:
            r = rollouts[0]
            sample.rollout = f"{r['id']} v{r['version']} {r['phase']} {r['percent'] or 0:g}%"
        alerts = [a for a in self.api.get("/drift/alerts").json() if a.get("state") != "resolved"]
        sample.alerts = len(alerts)
        sample.drift_score = max((_score(a) for a in alerts), default=0.0)
        rounds = self.api.get("/rounds", params={"model": MODEL}).json().get("items", [])
        if rounds:
            sample.round = f"{rounds[0]['round_id']} {rounds[0]['state']}"
        sample.accuracy = self._accuracy()
        return sample

    def _accuracy(self) -> float | None:
        """Accuracy on the labelled rows served since the last sample."""
        if self._load is None:
            return None
        labelled = sum(s.labelled for s in self._load.scores.values())
        correct = sum(s.correct for s in self._load.scores.values())
        before, self._scored = self._scored, (labelled, correct)
        new = labelled - before[0]
        return (correct - before[1]) / new if new else None

    def _table(self) -> Table:
        table = Table(title="edgefleet sim", show_header=False, box=None)
        last = self.samples[-1] if self.samples else Sample(0.0)
        versions = ", ".join(f"{v}: {n}" for v, n in sorted(last.versions.items())) or "-"
        m = last.messages
        rows = [
            ("time", f"{last.t:.0f} s"),
            ("devices online", f"{last.online} / {last.devices}"),
            ("versions", versions),
            ("messages", f"{m.get('ingested', 0)} ingested, {m.get('duplicates', 0)} "
                         f"duplicates, {m.get('rejected', 0)} rejected"),
            ("rollout", last.rollout),
            ("drift alerts", f"{last.alerts} open, max score {last.drift_score:.2f}"),
            ("round", last.round),
            ("accuracy", "-" if last.accuracy is None else f"{last.accuracy:.3f}"),
        ]  # fmt: skip
        for name, value in rows:
            table.add_row(f"[bold]{name}[/]", value)
        return table

    def plot(self, directory: Path) -> list[Path]:
        """``accuracy.png``, ``drift.png``, ``versions.png`` in ``directory``; their paths."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        directory.mkdir(parents=True, exist_ok=True)
        t = [s.t for s in self.samples]
        written = []
        for name, title, series in (
            ("accuracy", "accuracy on labelled feedback", [s.accuracy for s in self.samples]),
            ("drift", "largest drift score (PSI) of open alerts",
             [s.drift_score for s in self.samples]),
        ):  # fmt: skip
            fig, ax = plt.subplots(figsize=(8, 3.5))
            points = [(x, y) for x, y in zip(t, series, strict=True) if y is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".")
            ax.set(title=title, xlabel="seconds")
            written.append(_save(fig, directory / f"{name}.png"))
        versions = sorted({v for s in self.samples for v in s.versions})
        fig, ax = plt.subplots(figsize=(8, 3.5))
        shares = [[s.versions.get(v, 0) / max(1, s.devices) for s in self.samples]
                  for v in versions]  # fmt: skip
        if versions:
            ax.stackplot(t, shares, labels=versions)
            ax.legend(loc="upper left")
        ax.set(title="share of devices per active version", xlabel="seconds", ylim=(0, 1))
        written.append(_save(fig, directory / "versions.png"))
        return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _score(alert: dict[str, Any]) -> float:
    scores = [f["score"]["psi"] for f in alert["detail"]["features"] if f["score"]["psi"]]
    return float(max(scores, default=0.0))
