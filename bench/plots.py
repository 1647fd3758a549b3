"""PNG plots of the benchmark JSON files: bench/results/<date>-<name>[-quick].png.

    .venv/bin/python bench/plots.py                 # today's results (full, else quick)
    .venv/bin/python bench/plots.py --date 2026-11-25 --quick

Needs matplotlib (``.venv/bin/pip install matplotlib``). Reads the JSON written by
bench/build.py, resolve.py, second_install.py and peers.py (bench/serve.py writes markdown
only, so it is not plotted); prints the path of every PNG written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from harness.report import results_dir

KIB = 1024


def load(date: str, name: str, quick: bool | None) -> tuple[dict, Path] | None:
    choices = [False, True] if quick is None else [quick]
    for q in choices:
        p = results_dir() / f"{date}-{name}{'-quick' if q else ''}.json"
        if p.exists():
            return json.loads(p.read_text()), p
    return None


def _bar_labels(ax, bars, texts, **kw):
    for bar, text in zip(bars, texts, strict=False):
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=7, **kw)


def human(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def plot_build(data: dict, out: Path, plt) -> None:
    s = data["summary"]
    kinds = [k for k in ("seed", "cold", "warm", "offline", "snapshot", "snapshot_new") if k in s]
    labels = {"seed": "seed script\n(1 page)", "cold": "build\ncold", "warm": "build\nwarm",
              "offline": "build\n--offline", "snapshot": "build\n--snapshot",
              "snapshot_new": "--snapshot\n+1 release"}
    x = range(len(kinds))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    b200 = [s[k]["api_200"] for k in kinds]
    b304 = [s[k]["api_304"] for k in kinds]
    oth = [s[k]["api_other"] for k in kinds]
    ax.bar(x, b200, label="200 (rate-limited)", color="#d62728")
    ax.bar(x, b304, bottom=b200, label="304 Not Modified (free)", color="#2ca02c")
    ax.bar(x, oth, bottom=[a + b for a, b in zip(b200, b304, strict=True)], label="other (archive 302)",
           color="#7f7f7f")
    for i, (a, b, c) in enumerate(zip(b200, b304, oth, strict=True)):
        ax.annotate(f"{a + b + c:.0f}", (i, a + b + c), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7)
    ax.set_ylim(top=max(a + b + c for a, b, c in zip(b200, b304, oth, strict=True)) * 1.25)
    ax.set_xticks(list(x), [labels[k] for k in kinds], fontsize=8)
    ax.set_ylabel("GitHub API requests")
    ax.set_title("API requests per build")
    ax.legend(fontsize=7)
    ax = axes[1]
    bars = ax.bar(x, [s[k]["wall"] for k in kinds], color="#1f77b4")
    for i, k in enumerate(kinds):
        ax.scatter([i] * len(s[k]["walls"]), s[k]["walls"], color="black", s=8, zorder=3)
    _bar_labels(ax, bars, [f"{s[k]['wall']:.2f}s" for k in kinds])
    ax.set_xticks(list(x), [labels[k] for k in kinds], fontsize=8)
    ax.set_ylabel("wall time, s (bar: median, dots: runs)")
    ax.set_title("Wall time (process start to exit)")
    ax = axes[2]
    files = [s[k]["files"] for k in kinds]
    hashed = [s[k]["with_sha256"] for k in kinds]
    ax.bar(x, files, color="#c7c7c7", label="files indexed")
    bars = ax.bar(x, hashed, color="#9467bd", label="with sha256")
    _bar_labels(ax, ax.patches[:len(kinds)], [f"{f:,.0f}" for f in files])
    ax.set_xticks(list(x), [labels[k] for k in kinds], fontsize=8)
    ax.set_title("Files indexed / hashed")
    ax.set_ylim(top=max(files) * 1.2)
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Index build against a fake GitHub (1,099 releases), median of {data['reps']}"
                 f"{' (quick)' if data.get('quick') else ''}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_resolve(data: dict, out: Path, plt) -> None:
    from matplotlib.ticker import FuncFormatter

    s = data["summary"]
    clients, kinds = data["clients"], data["kinds"]
    colors = {"find-links": "#ff7f0e", "static": "#1f77b4", "serve": "#2ca02c"}
    width = 0.8 / len(kinds)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for j, metric in enumerate(("bytes", "wall")):
        ax = axes[j]
        for i, kind in enumerate(kinds):
            vals = [s[c][kind][metric] if s[c][kind]["ok"] else 0 for c in clients]
            xs = [n + (i - (len(kinds) - 1) / 2) * width for n in range(len(clients))]
            plotted = [max(v, 1) for v in vals] if metric == "bytes" else vals
            bars = ax.bar(xs, plotted, width, label=kind, color=colors.get(kind))
            _bar_labels(ax, bars, [human(v) if metric == "bytes" else f"{v:.1f}s" for v in vals],
                        rotation=90)
        ax.set_xticks(range(len(clients)), clients)
        if metric == "bytes":
            ax.set_yscale("log")
            ticks = [1 << 10, 16 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30, 4 << 30]
            ax.set_yticks([t for t in ticks if t <= data["wheel_bytes"] * 30])
            ax.minorticks_off()
            ax.axhline(64 * KIB, color="red", linestyle="--", linewidth=1)
            ax.text(-0.45, 64 * KIB * 1.3, "goal ≤ 64 KiB (serve)", color="red", fontsize=7,
                    ha="left")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v)))
            ax.set_ylabel("bytes from GitHub (log)")
            ax.set_title("Upstream bytes to resolve/lock")
            ax.set_ylim(bottom=4 << 10, top=max(data["wheel_bytes"] * 30, 1e6))
        else:
            ax.set_ylabel("client wall time, s")
            ax.set_title("Wall time (cold client caches)")
            ax.set_ylim(top=ax.get_ylim()[1] * 1.25)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(kinds), fontsize=8,
               title="index kind", title_fontsize=8)
    fig.suptitle(f"Resolving a {human(data['wheel_bytes'])} pipeline, median of {data['reps']}"
                 f"{' (quick)' if data.get('quick') else ''}")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_second(data: dict, out: Path, plt) -> None:
    from matplotlib.ticker import FuncFormatter

    m = data["methods"]
    keys = [k for k in m if m[k]["ok"]]
    labels = [m[k]["label"].replace(", ", "\n").replace(" (`spacy download`)", "\n(spacy download)")
              for k in keys]
    ours = {"pip-serve", "spacy-index-install"}
    colors = ["#2ca02c" if k in ours else "#7f7f7f" for k in keys]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    vals = [m[k]["bytes"] for k in keys]
    bars = ax.bar(range(len(keys)), vals, color=colors)
    _bar_labels(ax, bars, [human(v) for v in vals])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v)))
    ax.set_ylabel("bytes from GitHub, new venv B")
    ax.set_title("Upstream bytes of the second install")
    ax = axes[1]
    bars = ax.bar(range(len(keys)), [m[k]["wall"] for k in keys], color=colors)
    for i, k in enumerate(keys):
        walls = [r["wall"] for r in m[k]["runs"][1:] if r["ok"]]
        ax.scatter([i] * len(walls), walls, color="black", s=8, zorder=3)
    _bar_labels(ax, bars, [f"{m[k]['wall']:.2f}s" for k in keys])
    ax.set_ylabel("install wall time, s (bar: median, dots: venvs)")
    ax.set_title("Wall time of the second install")
    for ax in axes:
        ax.set_xticks(range(len(keys)), labels, fontsize=7)
    fig.suptitle(f"Second install of a {human(data['wheel_bytes'])} pipeline into a fresh venv "
                 f"(green: spacy-index), median of {data['reps']}"
                 f"{' (quick)' if data.get('quick') else ''}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_peers(data: dict, out: Path, plt) -> None:
    s = data["summary"]
    names = [n for n in data["servers"] if s[n]["wall"] is not None]
    colors = ["#2ca02c" if n == "spacy-index serve" else "#7f7f7f" for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, key, title, fmt in (
        (axes[0], "upstream_downloads", f"Upstream downloads ({data['clients']} clients)", "{:.0f}"),
        (axes[1], "peak_rss_kib", "Peak RSS of the server tree, MiB", "{:.0f}"),
        (axes[2], "wall", "Wall time until all clients are done, s", "{:.1f}"),
    ):
        vals = [s[n][key] / (1024 if key == "peak_rss_kib" else 1) for n in names]
        bars = ax.bar(range(len(names)), vals, color=colors)
        _bar_labels(ax, bars, [fmt.format(v) for v in vals])
        ax.set_xticks(range(len(names)), [n.replace(" ", "\n") for n in names], fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{data['clients']} clients, one uncached {human(data['wheel_bytes'])} wheel, "
                 f"median of {data['reps']}{' (quick)' if data.get('quick') else ''}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


PLOTS = {"build": plot_build, "resolve": plot_resolve, "second-install": plot_second,
         "peers": plot_peers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--date", default=dt.date.today().isoformat())
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="plot the -quick JSON files")
    mode.add_argument("--full", action="store_true", help="plot the full-run JSON files")
    args = ap.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: .venv/bin/pip install matplotlib", file=sys.stderr)
        return 2
    quick = True if args.quick else (False if args.full else None)
    made = 0
    for name, fn in PLOTS.items():
        found = load(args.date, name, quick)
        if found is None:
            continue
        data, path = found
        out = path.with_suffix(".png")
        try:
            fn(data, out, plt)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            print(f"{path.name}: cannot plot ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        print(out)
        made += 1
    if not made:
        print(f"no benchmark JSON for {args.date} in {results_dir()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
