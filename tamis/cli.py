"""The ``tamis`` command line.

Exit codes: 0 done, 3 done but a ``--fail-on`` condition holds (one line per condition), 2 bad
input, usage or output (one line on stderr, no traceback), 130 / 143 interrupted / terminated,
1 internal error (one line; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

from ._version import __version__
from .config import (
    CLI_PROJECTION,
    DEFAULT_K,
    DEFAULTS,
    DEVICES,
    ENGINES,
    EXCLUDE_BY,
    PRECISIONS,
    PROJECTION_DIMS,
    PROJECTIONS,
    coerce,
)
from .errors import ConfigError, TamisError

EXAMPLES = """\
examples:
  tamis demo                                   scan the bundled demo data into ./tamis-demo
  tamis scan embeddings.npz --out report/      scan an .npz store
  tamis scan shards/ --embedding-col clip_emb --label-col class
  tamis scan store.parquet --device gpu --checks invalid,class_imbalance
  tamis scan store.npz --param class_imbalance.min_fraction=0.1
  tamis scan store.npz --engine faiss --param search.index=ivf   FAISS candidates, canonical answers
  tamis scan store.npz --references trusted.npz   off-topic rows per class too (junk clusters need none)
  tamis scan shards/ --workers 2 --no-projection   heavy steps on a local Dask cluster, out of core
  tamis scan shards/ --scheduler tcp://head:8786   ... on a running Dask cluster
  tamis scan store.npz --out ref/ --save-index     also save the store's index into ref/
  tamis scan new.npz --against ref/ --out new/     scan only a new batch, against the saved store
  tamis index add ref/ new.npz                     append an accepted batch to ref/'s index
  tamis checks                                 list the checks and what they need
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tamis", description="Find what is wrong with an ML dataset stored as embeddings: "
                     "invalid rows, class imbalance and more, on GPU or CPU.",
                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tamis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    scan = sub.add_parser("scan", help="scan an embedding store and write a report", epilog=EXAMPLES,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    scan.add_argument("store", metavar="STORE", help=".npz, .npy, .parquet (or a folder of shards), "
                      ".arrow/.feather")
    scan.add_argument("--out", default="tamis-report", metavar="DIR", help="report folder (default: %(default)s)")
    _run_options(scan)
    batch = scan.add_argument_group("a new batch against a scanned store")
    batch.add_argument("--save-index", action="store_true",
                       help="also save the store's index (normalised rows, ids, labels, splits, buckets, fingerprint) "
                            "into the report folder, for later scans --against it")
    batch.add_argument("--against", metavar="REPORT_DIR",
                       help="scan STORE as a new batch against the store scanned into REPORT_DIR with --save-index, "
                            "without rescanning it")
    dask = scan.add_argument_group("cluster (Dask; pip install 'tamis[dask]'; the store: a path every worker can read)")
    where = dask.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="start a local Dask cluster of N workers (one per GPU with dask-cuda) for the heavy steps")
    where.add_argument("--scheduler", metavar="ADDRESS", help="run the heavy steps on the Dask cluster at ADDRESS, "
                       "e.g. tcp://head:8786")
    dask.add_argument("--partition-rows", type=int, metavar="ROWS",
                      help="rows per partition (Parquet: whole row groups; default: ~64 MiB of embeddings)")
    cols = scan.add_argument_group("columns (default: detected from the usual names)")
    for name, what in (("embedding", "embedding vectors"), ("label", "class labels"), ("path", "image paths"),
                       ("split", "train/val/test split"), ("id", "sample ids"),
                       ("pred-probs", "model's predicted class probabilities"),
                       ("quality", "a quality score per sample (higher = better), for --param *.keep=quality"),
                       ("group", "the image (or other unit) each row comes from, e.g. of an object crop: rows of "
                                 "one group are never each other's duplicates or leaks")):
        cols.add_argument(f"--{name}-col", metavar="NAME", help=f"column with the {what}")
    cols.add_argument("--metadata-cols", metavar="A,B",
                      help="the other columns the metadata check reads (default: every column that holds no input)")

    demo = sub.add_parser("demo", help="write the bundled demo store and scan it")
    demo.add_argument("--out", default="tamis-demo", metavar="DIR", help="report folder (default: %(default)s)")
    _run_options(demo)

    sub.add_parser("checks", help="list the checks and the inputs each needs")

    index = sub.add_parser("index", help="work on the index a scan saved with --save-index")
    actions = index.add_subparsers(dest="index_command", metavar="ACTION", parser_class=_Parser)
    add = actions.add_parser("add", help="append an accepted batch's rows to the index of REPORT_DIR")
    add.add_argument("report", metavar="REPORT_DIR", help="a report folder written with --save-index")
    add.add_argument("store", metavar="NEW", help="the batch: any store format tamis reads, with ids")
    add.add_argument("--device", choices=DEVICES, default=DEFAULTS.device,
                     help="where to normalise and bucket the rows (default: %(default)s)")
    add_cols = add.add_argument_group("columns (default: detected from the usual names)")
    for name in ("embedding", "label", "path", "split", "id"):
        add_cols.add_argument(f"--{name}-col", metavar="NAME", help=f"the batch's {name} column")
    add.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    add.add_argument("-v", "--verbose", action="store_true", help="log each step")
    add.add_argument("--debug", action="store_true", help="show the traceback of internal errors")
    return parser


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default=DEFAULTS.device,
                   help="where to compute (default: %(default)s: the GPU when one is usable)")
    p.add_argument("--checks", metavar="A,B,C", help="run only these checks (default: all that apply)")
    p.add_argument("--param", action="append", default=[], metavar="CHECK.NAME=VALUE",
                   help="set a check parameter (or search.NAME for the engine's); repeatable")
    p.add_argument("--threshold", type=float, default=DEFAULTS.threshold, metavar="COS",
                   help="cosine similarity at or above which two rows are near duplicates (default: %(default)s)")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="similarity search for pairs and neighbours (default: auto: exact for small stores, "
                        "else ivf; exact gives identical answers on every device; faiss when installed)")
    p.add_argument("--exact", action="store_true", help="alias of --engine exact")
    p.add_argument("--max-pairs", type=int, default=DEFAULTS.max_pairs, metavar="N",
                   help="the most near-duplicate pairs the scan may hold (default: a quarter of this machine's "
                        "memory at ~100 bytes a pair); more is an error that says to raise the threshold")
    p.add_argument("--near-duplicate-fraction", type=float, metavar="F",
                   help="choose the threshold: the lowest of the sweep's (0.90 .. 0.995) that leaves at most this "
                        "share of rows with a near duplicate (replaces --threshold; the summary says which)")
    p.add_argument("--exclude-by", choices=EXCLUDE_BY, default=DEFAULTS.exclude_by,
                   help="exclude flagged rows, or with --group-col every row of a flagged row's group "
                        "(default: %(default)s)")
    p.add_argument("--fail-on", metavar="CONDITIONS",
                   help="exit 3 after writing the report when a condition holds, e.g. "
                        "'leakage>0,label_error>2%%,near_duplicate>=1000' (counts or shares of the rows)")
    p.add_argument("--k", type=int, default=None, metavar="K",
                   help=f"neighbours per row in the shared neighbour graph (default: {DEFAULT_K})")
    p.add_argument("--references", metavar="STORE",
                   help="trusted examples per class (embeddings + labels): off_topic also flags rows unlike "
                        "their class's references (it finds junk clusters without them)")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS.precision,
                   help="storage of the normalised matrix (float16 halves memory)")
    p.add_argument("--projection", choices=PROJECTIONS, default=CLI_PROJECTION,
                   help="map of the embeddings for report.html (default: %(default)s: tamis' own UMAP, PCA for "
                        "stores under 8 rows; umap-learn: umap-learn's UMAP, for comparison)")
    p.add_argument("--no-projection", action="store_true", help="no map (same as --projection none)")
    p.add_argument("--projection-dims", type=int, choices=PROJECTION_DIMS, default=DEFAULTS.projection_dims,
                   help="2-D or 3-D map")
    p.add_argument("--plots", action="store_true", help="also write PNG plots (needs matplotlib)")
    p.add_argument("--image-root", metavar="DIR",
                   help="folder image paths are relative to and confined to, for image_properties and thumbnails "
                        "(default: the store's folder)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step")
    p.add_argument("--debug", action="store_true", help="show the traceback of internal errors")


def _engine(args: argparse.Namespace) -> str:
    if args.exact and args.engine not in (None, "exact"):
        raise ConfigError(f"--exact and --engine {args.engine} contradict each other; pass one of them")
    return "exact" if args.exact else (args.engine or DEFAULTS.engine)


def _parse_params(items: Sequence[str]) -> dict[str, dict]:
    params: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        check, dot, name = key.partition(".")
        if not sep or not dot or not check or not name:
            raise ConfigError(f"--param {item!r} is not CHECK.NAME=VALUE, e.g. class_imbalance.min_fraction=0.1")
        params.setdefault(check.strip(), {})[name.strip()] = coerce(value)
    return params


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    level = logging.ERROR if getattr(args, "quiet", False) else \
        logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="tamis: %(message)s", stream=sys.stderr)
    # a local Dask cluster logs every start and stop at INFO; read when Dask is first imported
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    previous = signal.signal(signal.SIGTERM, _terminated)   # SIGTERM unwinds like Ctrl-C: locks, staging
    try:
        return _dispatch(args)
    except TamisError as exc:
        print(f"tamis: error: {' '.join(str(exc).split())}", file=sys.stderr)   # one line, whatever the message
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated)
        print(f"tamis: {'terminated' if terminated else 'interrupted'}; the report folder holds one whole report "
              "(the previous one or this one) or none, never a mix", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as exc:  # noqa: BLE001 - the one place internal errors are turned into exit code 1
        if debug:
            raise
        print(f"tamis: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} (rerun with --debug "
              "for the traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so the same clean-up runs as for Ctrl-C."""


def _terminated(signum, frame) -> None:
    raise _Terminated()


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "index":
        return _index(args)
    if args.command == "checks":
        from .checks import REGISTRY

        for name, cls in REGISTRY.items():
            print(f"{name:<20} needs {', '.join(cls.requires) or 'nothing'}: {cls.description}")
        return 0
    from .pipeline import scan

    params = _parse_params(args.param)
    if args.command == "demo":
        from .demo import write_demo_store
        from .report.folder import check_destination

        check_destination(args.out, plots=args.plots, image_root=args.image_root)   # before the demo store is written
        store, references, _ = write_demo_store(Path(args.out))
        source, columns = str(store), None
        if args.references is None and (args.checks is None or "off_topic" in args.checks.split(",")):
            args.references = str(references)
    else:
        source = args.store
        columns = {"embedding": args.embedding_col, "label": args.label_col, "path": args.path_col,
                   "split": args.split_col, "id": args.id_col, "pred_probs": args.pred_probs_col,
                   "quality": args.quality_col, "group": args.group_col}
    if args.references is not None:
        params.setdefault("off_topic", {}).setdefault("references", args.references)
    cluster = {name: getattr(args, name, None) for name in ("workers", "scheduler", "partition_rows")}
    report = scan(source, **cluster, checks=args.checks, params=params, device=args.device, precision=args.precision,
                  k=args.k, max_pairs=args.max_pairs,
                  threshold=args.threshold, engine=_engine(args), search_params=params.pop("search", {}),
                  projection="none" if args.no_projection else args.projection,
                  projection_dims=args.projection_dims, plots=args.plots, image_root=args.image_root,
                  columns=columns, progress=not args.quiet and sys.stderr.isatty(), out=args.out,
                  fail_on=args.fail_on, near_duplicate_fraction=args.near_duplicate_fraction,
                  exclude_by=args.exclude_by, metadata_cols=getattr(args, "metadata_cols", None),
                  save_index=getattr(args, "save_index", False), against=getattr(args, "against", None))
    if not args.quiet:
        _print_summary(report, Path(args.out))
    failures = report.gate_failures()
    for line in failures:
        print(f"tamis: fail-on: {line}", file=sys.stderr)
    return 3 if failures else 0


def _index(args: argparse.Namespace) -> int:
    if args.index_command != "add":
        raise ConfigError("tamis index needs an action: tamis index add REPORT_DIR NEW (see tamis index --help)")
    from .pipeline import add_to_index

    columns = {name: getattr(args, f"{name}_col") for name in ("embedding", "label", "path", "split", "id")}
    done = add_to_index(args.report, args.store, columns=columns, device=args.device)
    if not args.quiet:
        left_out = f" ({done['rows_left_out']:,} rows with unusable embeddings left out)" \
            if done["rows_left_out"] else ""
        print(f"added {done['rows_added']:,} rows to the index of {done['folder']}{left_out}: {done['rows']:,} rows, "
              f"fingerprint {done['fingerprint']}")
    return 0


def _print_summary(report, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report.summary
    n = s["store"]["n_rows"]
    table = Table(title=f"tamis {s['tamis_version']}: {n:,} rows from {s['store']['source']}", title_justify="left")
    table.add_column("issue type")
    table.add_column("flagged", justify="right")
    table.add_column("% of rows", justify="right")
    for name, count in s["issues"].items():
        table.add_row(name, f"{count:,}", f"{100 * count / max(n, 1):.2f}")
    for skipped in s["checks_skipped"]:
        table.add_row(f"[dim]{skipped['check']}[/dim]", "[dim]skipped[/dim]", "")
    console = Console(soft_wrap=True)
    console.print(table)
    for skipped in s["checks_skipped"]:
        console.print(f"skipped {skipped['check']}: {skipped['reason']}", markup=False, highlight=False)
    reference = s.get("reference")
    if reference is not None:
        matches = reference["matches"] or {"n_pairs": 0, "n_rows": 0, "threshold": None}
        at = f" at {matches['threshold']:g}" if matches["threshold"] is not None else ""
        console.print(f"against: {reference['folder']} ({reference['rows']:,} rows, "
                      f"{reference['fingerprint'][:19]}...): {matches['n_rows']:,} batch rows match its rows "
                      f"({matches['n_pairs']:,} pairs{at}, reference_matches.parquet)", markup=False, highlight=False)
    if "index" in s:
        console.print(f"index: saved ({s['index']['rows']:,} rows, {s['index']['fingerprint'][:19]}...) in "
                      f"{out / 'index'}, for scans --against {out}", markup=False, highlight=False)
    device = s["device"]
    console.print(f"excluded: {s['n_excluded']:,} rows (exclude.txt)   device: {device['backend']} "
                  f"({device['name']})   time: {s['timings']['total']:.2f} s")
    console.print(f"report: {out.resolve()}  (open report.html in a browser)", markup=False, highlight=False)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
