"""A small results table: (method, metric, dim) -> value, printable, saved as CSV/JSON, plotted vs dim."""
from __future__ import annotations

import csv
import io
import json
from typing import Iterable, Mapping

from ..saving import atomic_file, atomic_write_with


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, so no reader sees half a file."""
    with atomic_file(path, newline="") as f:
        f.write(text)


class ResultsTable:
    """Long-format results, one record per (method, metric, dim). Accuracies are in percent.

    ``print(table)`` shows one dim x method grid per metric; ``to_csv``/``to_json`` save it (atomically);
    ``plot(metric)`` draws value vs dim on a log2 axis, one line per method, like the paper's figures.
    """

    COLUMNS = ("method", "metric", "dim", "value")

    def __init__(self, records: Iterable[dict] | None = None):
        self.records: list[dict] = []
        self._keys: set[tuple] = set()
        for r in records or []:
            self.add(r["method"], r["metric"], r["dim"], r["value"])

    @classmethod
    def from_fractions(cls, results: Mapping[str, Mapping[int, Mapping[str, float]]],
                       prefix: str = "") -> "ResultsTable":
        """``{method: {dim: {metric: fraction}}}`` (e.g. ``quantized_retrieval_metrics``' per-precision results) ->
        a table in percent, methods named ``prefix + method`` (so that tables of several models combine with ``+``)."""
        table = cls()
        for method, per_dim in results.items():
            for dim, row in per_dim.items():
                for metric, value in row.items():
                    table.add(prefix + method, metric.replace("mrr", "MRR"), dim, 100.0 * value)
        return table

    def add(self, method: str, metric: str, dim: int, value: float) -> None:
        """One result; a second value for the same (method, metric, dim) is refused (the table would show one and
        the plot the other)."""
        key = (str(method), str(metric), int(dim))
        if key in self._keys:
            raise ValueError(f"the table already has a result for method={key[0]!r}, metric={key[1]!r}, dim={key[2]}"
                             f" ({self.get(*key)}); name the methods of different runs apart (e.g. "
                             "ResultsTable.from_fractions(..., prefix='run 2: ')).")
        self._keys.add(key)
        self.records.append({"method": key[0], "metric": key[1], "dim": key[2], "value": float(value)})

    def extend(self, other: "ResultsTable") -> "ResultsTable":
        for r in other.records:
            self.add(r["method"], r["metric"], r["dim"], r["value"])
        return self

    def __add__(self, other: "ResultsTable") -> "ResultsTable":
        return ResultsTable(self.records + other.records)

    def __len__(self) -> int:
        return len(self.records)

    def _unique(self, key: str, **where) -> list:
        seen = []
        for r in self.records:
            if all(r[k] == v for k, v in where.items()) and r[key] not in seen:
                seen.append(r[key])
        return seen

    @property
    def methods(self) -> list[str]:
        return self._unique("method")

    @property
    def metrics(self) -> list[str]:
        return self._unique("metric")

    @property
    def dims(self) -> list[int]:
        return sorted(self._unique("dim"))

    def get(self, method: str, metric: str, dim: int) -> float:
        for r in self.records:
            if (r["method"], r["metric"], r["dim"]) == (method, metric, dim):
                return r["value"]
        raise KeyError(f"no result for method={method!r}, metric={metric!r}, dim={dim}; "
                       f"methods {self.methods}, metrics {self.metrics}, dims {self.dims}.")

    def series(self, method: str, metric: str) -> dict[int, float]:
        """``{dim: value}`` of one method and metric, dims ascending."""
        out = {r["dim"]: r["value"] for r in self.records if r["method"] == method and r["metric"] == metric}
        return dict(sorted(out.items()))

    def to_markdown(self, metric: str | None = None, digits: int = 1) -> str:
        blocks = []
        for m in [metric] if metric else self.metrics:
            methods = self._unique("method", metric=m)
            dims = sorted(self._unique("dim", metric=m))
            lines = [f"{m}", "| dim | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
            for d in dims:
                cells = []
                for meth in methods:
                    try:
                        cells.append(f"{self.get(meth, m, d):.{digits}f}")
                    except KeyError:
                        cells.append("")
                lines.append(f"| {d} | " + " | ".join(cells) + " |")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def __str__(self) -> str:
        return self.to_markdown()

    def to_csv(self, path: str) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.COLUMNS)
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write_text(path, buf.getvalue())

    def to_json(self, path: str) -> None:
        atomic_write_text(path, json.dumps(self.records, indent=1))

    @classmethod
    def from_csv(cls, path: str) -> "ResultsTable":
        with open(path, newline="") as f:
            return cls(csv.DictReader(f))

    @classmethod
    def from_json(cls, path: str) -> "ResultsTable":
        with open(path) as f:
            return cls(json.load(f))

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.records, columns=list(self.COLUMNS))

    def plot(self, metric: str, path: str | None = None, methods: list[str] | None = None, ax=None,
             title: str | None = None, dpi: int = 100):
        """Value vs dim (log2 x-axis) for ``metric``, one line per method, drawn on ``ax`` (default: a new figure);
        saves a PNG if ``path`` is given. A figure made only to be saved is drawn apart from pyplot (no backend
        switch, nothing left open); otherwise it is a pyplot figure, which a notebook shows."""
        if metric not in self.metrics:
            raise ValueError(f"metric={metric!r} is not in this table; choose one of {self.metrics}.")
        own = ax is None
        if own and path is not None:
            from matplotlib.figure import Figure

            ax = Figure(figsize=(5, 3.6)).subplots()
        elif own:
            import matplotlib.pyplot as plt

            ax = plt.subplots(figsize=(5, 3.6))[1]
        for method in methods or self._unique("method", metric=metric):
            s = self.series(method, metric)
            if s:
                ax.plot(list(s), list(s.values()), marker="o", markersize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("representation size")
        ax.set_ylabel(metric + " (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        if title:
            ax.set_title(title, fontsize=9)
        if own:
            ax.figure.tight_layout()
        if path is not None:  # the whole figure, also for axes on a subfigure (which cannot save itself)
            root = ax.figure.figure
            atomic_write_with(path, lambda tmp: root.savefig(tmp, dpi=dpi, format="png"))
        return ax
