"""datastore-cli's operator commands (docs/OPERATIONS.md): backup, export and import, with progress
on stderr (a rich progress bar on a terminal, a plain line every second otherwise)."""
import json
import sys
import time

from . import bulk
from .api import encode_key
from .backup import take_backup


class Progress:
    """Keys and bytes so far, on stderr: rich's bar and rates on a terminal, plain lines otherwise."""

    def __init__(self, what, total=None):
        self.what, self.total = what, total
        self._bar = self._task = None
        self._last = 0.0
        self._started = time.monotonic()
        if sys.stderr.isatty():
            from rich.progress import (BarColumn, DownloadColumn, Progress as Bar, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[keys]:,} keys"),
                            TextColumn("{task.fields[rate]:,.0f} keys/s"), DownloadColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(what, total=total, keys=0, rate=0.0)

    def __call__(self, keys, size):
        now = time.monotonic()
        rate = keys / max(now - self._started, 1e-6)
        if self._bar is not None:
            self._bar.update(self._task, completed=size, keys=keys, rate=rate)
        elif now - self._last >= 1.0:
            self._last = now
            print(f"{self.what}: {keys:,} keys, {size:,} bytes, {rate:,.0f} keys/s", file=sys.stderr, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.stop()


def backup(args, db):
    progress = Progress(f"backup to {args['FILE']}")
    try:
        summary = take_backup(db, args["FILE"], progress)
    finally:
        progress.close()
    if args["--json"]:
        print(json.dumps({k: v for k, v in summary.items() if k != "members"}, sort_keys=True))
    else:
        print(f"wrote {args['FILE']}: {summary['count']:,} keys at seq {summary['seq']} (term {summary['term']}) "
              f"from node {summary['source']}, {summary['bytes']:,} bytes in {summary['seconds']:.1f} s, "
              f"sha256 {summary['sha256']}")


def export(args, db):
    progress = Progress(f"export to {args['FILE']}")
    try:
        summary = bulk.export(db, args["FILE"], encode_key(args["--prefix"] or b""), args["--jsonl"], progress)
    finally:
        progress.close()
    _report(args, summary, f"wrote {args['FILE']}: {summary['count']:,} keys ({summary['format']}) at "
                           f"{summary['seq']} from node {summary['source']}, {summary['bytes']:,} bytes")


def import_(args, db):
    progress = Progress(f"import of {args['FILE']}")
    try:
        summary = bulk.import_file(db, args["FILE"], progress)
    finally:
        progress.close()
    _report(args, summary, f"imported {summary['count']:,} keys from {args['FILE']} in {summary['batches']:,} "
                           f"batches" + (f" (resumed after {summary['skipped']:,})" if summary["skipped"] else ""))


def _report(args, summary, line):
    print(json.dumps(summary, sort_keys=True, default=str) if args["--json"] else line)


COMMANDS = {"backup": backup, "export": export, "import": import_}
