"""Command-line entry points: `datastore-node` (run a node) and `datastore-cli` (use a cluster from a shell)."""
import datetime
import json
import logging
import os
import re
import sys

from docopt import DocoptExit, docopt

from . import __version__, config as configmod, errors

NODE_USAGE = """Run one zmqstore node.

Usage:
  datastore-node [options]
  datastore-node -h | --help
  datastore-node --version

Options:
  --config FILE               INI or JSON file with [node], [cluster] and [peers]; flags override it.
  --node-id N                 This node's id, a positive integer unique in the cluster (required).
  --host HOST                 Address to bind and to send from [file or 127.0.0.1].
  --port PORT                 Client port (ROUTER) for requests [file or 9000].
  --pub-port PORT             PUB port for the change stream, peers only [file or PORT + 1000].
  --peer-port PORT            Peer port (ROUTER) for peer messages, peers only [file or PORT + 2000].
  --role ROLE                 primary|secondary; only bootstraps an empty leader-mode cluster.
  --mode MODE                 leader|dynamo [file or leader].
  --data-dir DIR              Data directory [file or ./data/node<N>].
  --join LIST                 Leader mode: ask these members (host:port,...) to add this node; no --peers.
  --peers JSON                Peers as '[{"node_id":2,"host":"127.0.0.1","port":9001}, ...]'.
  --election-interval SEC     Seconds without a primary before an election [file or 0.5].
  --replication-timeout SEC   Seconds a write waits for its quorum [file or 2.0].
  --replicas N                Dynamo mode: copies of each key, 0 for all; fixed at creation [file or 0].
  --log-level LEVEL           DEBUG, INFO, WARNING or ERROR [file or INFO].
  --log-format FORMAT         text, or json for one JSON object per line [file or text].
  --restore FILE              Seed a new data dir from a backup (datastore-cli backup); ignored once it has state.
  --metrics-port PORT         Serve /metrics, /healthz and /readyz over HTTP on this port [file or none].
  --metrics-host HOST         Address the metrics port binds to [file or HOST].
  --max-data-bytes N          Space quota on the data dir; past it writes get no_space [file or none].
  --min-free-bytes N          Free space floor of the data dir's file system, likewise [file or 67108864].
  --insecure                  Allow a non-loopback --host without keys (docs/SECURITY.md).
  --secret-key FILE           This node's secret key (NAME.key_secret): CurveZMQ on every socket.
  --node-keys DIR             Directory of every node's public key, node<ID>.key.
  --client-keys DIR           Directory of read-write clients' public keys.
  --readonly-keys DIR         Directory of read-only clients' public keys.
  -h --help                   Show this help.
  --version                   Show the version.
"""

CLI_USAGE = """Use a zmqstore cluster from a shell.

Usage:
  datastore-cli [options] get KEY [--stale | --read-index]
  datastore-cli [options] put KEY VALUE [--json-value]
  datastore-cli [options] delete KEY
  datastore-cli [options] scan [--prefix P] [--start S] [--end E] [--limit N]
  datastore-cli [options] versions KEY
  datastore-cli [options] watch [PREFIX] [--from SEQ | --snapshot] [--stale] [--count N]
  datastore-cli [options] status [--watch] [--interval SEC]
  datastore-cli [options] ping
  datastore-cli [options] members
  datastore-cli [options] add-member ID HOST:PORT [--pub-port P] [--peer-port P] [--key FILE]
  datastore-cli [options] remove-member ID
  datastore-cli [options] backup FILE
  datastore-cli [options] export FILE [--prefix P] [--jsonl]
  datastore-cli [options] import FILE
  datastore-cli keygen NAME [--dir DIR]
  datastore-cli -h | --help
  datastore-cli --version

Options:
  -e --endpoints LIST   Comma-separated host:port list, or ID@host:port with keys [default: 127.0.0.1:9000].
  --secret-key FILE     This client's secret key (NAME.key_secret): talk CurveZMQ (docs/SECURITY.md).
  --node-keys DIR       Directory of the nodes' public keys (node<ID>.key), with --secret-key.
  --dir DIR             Where keygen writes NAME.key and NAME.key_secret [default: .].
  --json                Print results as JSON.
  --json-value          Parse VALUE as JSON instead of storing it as a string.
  --stale               Read from the node talked to, without redirects.
  --read-index          get: a linearizable read served by the node talked to (leader mode: a
                        secondary asks its primary for the commit seq; docs/REPLICATION.md).
  --prefix P            Scan (or export) keys starting with P.
  --jsonl               export: JSON lines (tagged, exact) instead of msgpack.
  --watch               status: refresh the table in place until Ctrl-C.
  --interval SEC        status --watch: seconds between refreshes [default: 1.0].
  --start S             Scan from key S (inclusive).
  --end E               Scan up to key E (exclusive).
  --limit N             Return at most N items.
  --from SEQ            watch: the changes after log seq SEQ (default: from now).
  --snapshot            watch: first every key under PREFIX as it is now, then the changes.
  --count N             watch: stop after N changes (default: until Ctrl-C).
  --timeout SEC         Seconds to wait for each reply [default: 3.0].
  --pub-port P          add-member: the new node's change stream port (default PORT + 1000).
  --peer-port P         add-member: the new node's peer port (default PORT + 2000).
  --key FILE            add-member: the new node's public key file (NAME.key), with keys.
  -h --help             Show this help.
  --version             Show the version.

Exit status: 0 on success, 1 when a key is absent (get, delete), 2 on errors.
"""

_FLAG_TO_SETTING = {
    "--node-id": "node_id", "--host": "host", "--port": "port", "--pub-port": "pub_port",
    "--peer-port": "peer_port", "--role": "role", "--secret-key": "secret_key", "--node-keys": "node_keys",
    "--client-keys": "client_keys", "--readonly-keys": "readonly_keys",
    "--mode": "mode", "--data-dir": "data_dir", "--election-interval": "election_interval",
    "--replication-timeout": "replication_timeout", "--log-level": "log_level", "--join": "join",
    "--log-format": "log_format", "--restore": "restore",
    "--metrics-port": "metrics_port", "--metrics-host": "metrics_host", "--max-data-bytes": "max_data_bytes",
    "--min-free-bytes": "min_free_bytes", "--replicas": "replicas",
}


class _NodeContext(logging.Filter):
    """Adds node id, role and term to every log record (STYLE.md: one line per event, with those three)."""

    def __init__(self, node_id):
        super().__init__()
        self.node_id = node_id
        self.node = None

    def filter(self, record):
        record.node_id = self.node_id
        engine = getattr(self.node, "engine", None)
        record.role = engine.role if engine else "-"
        record.term = engine.storage.term if engine else "-"
        return True


class JsonLines(logging.Formatter):
    """--log-format json: one JSON object per line for log shippers: time (UTC, ISO 8601, ms), level,
    node_id, role, term, logger, message, and the traceback as `exc` when there is one."""

    def format(self, record):
        line = {"time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": record.levelname, "node_id": getattr(record, "node_id", None),
                "role": _known(getattr(record, "role", None)), "term": _known(getattr(record, "term", None)),
                "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _known(value):
    return None if value == "-" else value     # "-": the text format's "not known yet"


def _parse_args(usage, argv, prog):
    """docopt, but a bad command line gets one line (what is wrong) instead of the usage text."""
    try:
        return docopt(usage, argv=argv, version=__version__)
    except DocoptExit as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip() and not ln.startswith(("Usage", " "))]
        reason = lines[0] if lines else "the arguments do not match any usage"
        if "unmatched" in reason:
            names = re.findall(r"'([^']*)'", reason)
            reason = "unknown or repeated argument " + " ".join(names)
        print(f"{prog}: {reason}; see {prog} --help", file=sys.stderr)
        raise SystemExit(2) from None


def node_main(argv=None):
    args = _parse_args(NODE_USAGE, argv, "datastore-node")
    try:
        cfg = load_node_config(args)
    except errors.ConfigError as exc:
        print(f"datastore-node: {exc}", file=sys.stderr)
        return 2
    context = _NodeContext(cfg.node_id)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(context)
    handler.setFormatter(JsonLines() if cfg.log_format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s node=%(node_id)s role=%(role)s term=%(term)s %(name)s: %(message)s"))
    logging.basicConfig(level=cfg.log_level, handlers=[handler])
    from .node import Node
    os.umask(0o077)   # data files 0600 and dirs 0700: only this user may read the data (docs/SECURITY.md)
    _raise_file_limit(cfg)
    try:
        node = Node(cfg)
    except (errors.ConfigError, errors.DataDirError, errors.StorageError, errors.BadBackup) as exc:
        print(f"datastore-node: {exc}", file=sys.stderr)
        return 2
    context.node = node
    try:
        node.run()
    except errors.StorageError:
        return 1  # logged by the node
    return 0


# Open files a node needs beyond its client connections: RocksDB's files, peers' sockets, ZeroMQ's own.
FILES_BESIDES_CLIENTS = 256


def _raise_file_limit(cfg):
    """Raise the soft open-files limit to what max_connections needs (up to the hard limit), so a
    connection flood meets max_connections, not EMFILE in RocksDB (a storage failure stops the node)."""
    import resource
    need = cfg.max_connections + FILES_BESIDES_CLIENTS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
        if soft < need:
            logging.getLogger("zmqstore.node").warning(
                "the open-files limit (%d) is below max_connections + %d = %d: lower max_connections or raise "
                "ulimit -n, or a connection flood may leave RocksDB unable to open files", soft,
                FILES_BESIDES_CLIENTS, need)


def load_node_config(args):
    file_settings = configmod.load_file(args["--config"]) if args["--config"] else None
    flags = {setting: args[flag] for flag, setting in _FLAG_TO_SETTING.items()}
    flags["insecure"] = True if args["--insecure"] else None   # absent: the file's setting, else False
    if args["--peers"] is not None:
        flags["peers"] = configmod.parse_peers_json(args["--peers"])
    return configmod.resolve(file_settings, flags)


# ---------------------------------------------------------------- datastore-cli

def cli_main(argv=None):
    args = _parse_args(CLI_USAGE, argv, "datastore-cli")
    from .client import Client, Retry
    try:
        if args["keygen"]:
            return _keygen(args)
        timeout = float(args["--timeout"])
        # A watch and the bulk commands ride out failovers and restarts (each outage up to a minute);
        # other commands fail fast.
        long_running = args["watch"] or args["import"] or args["export"] or args["backup"]
        retry = Retry(max_tries=600, max_delay=1.0, deadline=60.0) if long_running else Retry(max_tries=2)
        with Client(args["--endpoints"], timeout=timeout, retry=retry, **_client_keys(args)) as db:
            return _run_command(db, args)
    except KeyboardInterrupt:
        if args["import"]:
            print(f"datastore-cli: import interrupted; run it again to resume ({args['FILE']}.progress)",
                  file=sys.stderr)
            return 130
        return 130 if args["export"] or args["backup"] else 0
    except OSError as exc:
        print(f"datastore-cli: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except (errors.ZmqstoreError, ValueError) as exc:
        code = getattr(exc, "code", "error")
        print(f"datastore-cli: {code}: {exc}", file=sys.stderr)
        return 2


def _client_keys(args) -> dict:
    return {"secret_key": args["--secret-key"], "node_keys": args["--node-keys"]} if args["--secret-key"] else {}


def _keygen(args):
    """Write a key pair in ZeroMQ's certificate format (docs/SECURITY.md: node keys are named nodeID)."""
    from .keys import keygen
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args["NAME"]):
        raise ValueError(f"key name {args['NAME']!r}: use letters, digits, '_', '.' and '-'")
    public, secret = keygen(args["--dir"], args["NAME"])
    print(f"wrote {public} (public: give it to whoever must accept this key) and {secret} (secret, 0600)")
    return 0


def _show(args, value):
    if args["--json"]:
        print(json.dumps(value, default=_json_default, sort_keys=True))
    elif isinstance(value, str):
        print(value)
    else:
        print(json.dumps(value, default=_json_default))


def _json_default(obj):
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    return repr(obj)


def _run_command(db, args):
    missing = object()
    if args["get"]:
        value = db.get(args["KEY"], default=missing, stale=args["--stale"], read_index=args["--read-index"])
        if value is missing:
            print("(absent)" if not args["--json"] else "null", file=sys.stdout)
            return 1
        _show(args, value)
    elif args["put"]:
        value = args["VALUE"]
        if args["--json-value"]:
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"VALUE is not JSON: {exc}") from None
        db.put(args["KEY"], value)
        _show(args, "OK")
    elif args["delete"]:
        existed = db.delete(args["KEY"])
        _show(args, existed if args["--json"] else ("deleted" if existed else "(absent)"))
        return 0 if existed else 1
    elif args["scan"]:
        limit = int(args["--limit"]) if args["--limit"] else None
        rows = db.scan(prefix=args["--prefix"], start=args["--start"], end=args["--end"], limit=limit)
        if args["--json"]:
            print(json.dumps([[k, v] for k, v in rows], default=_json_default))
        else:
            for key, value in rows:
                print(f"{_json_default(key) if isinstance(key, bytes) else key}\t"
                      f"{json.dumps(value, default=_json_default)}")
    elif args["watch"]:
        _watch(db, args)
    elif args["versions"]:
        versions = db.get_versions(args["KEY"])
        if args["--json"]:
            print(json.dumps({"siblings": [v._asdict() for v in versions.siblings],
                              "context": versions.context.hex()}, default=_json_default))
        else:
            winner = versions.winner
            for v in versions.siblings:
                shown = "(deleted)" if v.deleted else json.dumps(v.value, default=_json_default)
                print(f"{shown}\tnode {v.node_id}, seq {v.seq}, hlc {v.hlc}{'  <- get' if v is winner else ''}")
            print(f"context {versions.context.hex()}" if versions.siblings else "(absent)")
        return 0 if versions.siblings else 1
    elif args["status"]:
        from .cli_status import show_status
        show_status(args, db)
    elif args["ping"]:
        node_id = db.ping()
        _show(args, {"node_id": node_id, "endpoint": db.endpoint} if args["--json"] else
              f"PONG from node {node_id} at {db.endpoint}")
    elif args["members"]:
        members = db.members()
        if args["--json"]:
            _show(args, members)
        else:
            for m in members:
                print(f"{m['node_id']}\t{m['host']}:{m['port']}\t{'voter' if m['voter'] else 'learner'}\t"
                      f"pub {m['pub_port']}, peer {m['peer_port']}{', key ' + m['key'] if m.get('key') else ''}")
    elif args["backup"] or args["export"] or args["import"]:
        from . import cli_ops
        cli_ops.COMMANDS[next(c for c in cli_ops.COMMANDS if args[c])](args, db)
    elif args["add-member"] or args["remove-member"]:
        return _change_members(db, args)
    return 0


def _watch(db, args):
    """One line per change, flushed at once: `SEQ<tab>KEY<tab>VALUE as JSON` (`(deleted)` for a
    delete), or a JSON object per line with --json (docs/WATCH.md)."""
    count = _int_arg("--count", args["--count"]) if args["--count"] else None
    from_seq = _int_arg("--from", args["--from"]) if args["--from"] else None
    with db.watch(args["PREFIX"] or b"", from_seq=from_seq, snapshot=args["--snapshot"], stale=args["--stale"]) as w:
        for shown, event in enumerate(w, 1):
            key = _json_default(event.key) if isinstance(event.key, bytes) else event.key
            if args["--json"]:
                line = json.dumps({"seq": event.seq, "key": key, "value": event.value, "deleted": event.deleted},
                                  default=_json_default, sort_keys=True)
            else:
                line = f"{event.seq}\t{key}\t{'(deleted)' if event.deleted else json.dumps(event.value, default=_json_default)}"
            print(line, flush=True)
            if count is not None and shown >= count:
                return


def _change_members(db, args):
    """add-member and remove-member: the membership entry's seq once committed."""
    node_id = _int_arg("ID", args["ID"])
    if args["remove-member"]:
        seq = db.remove_member(node_id)
        _show(args, {"removed": node_id, "seq": seq} if args["--json"] else
              f"node {node_id} removed ({'record counter' if _dynamo(db) else 'entry'} {seq})")
        return 0
    host, _, port = args["HOST:PORT"].rpartition(":")
    if not host:
        raise ValueError(f"HOST:PORT {args['HOST:PORT']!r} is not host:port")
    ports = {flag: None if args[flag] is None else _int_arg(flag, args[flag]) for flag in ("--pub-port", "--peer-port")}
    key = None
    if args["--key"]:
        from .keys import load_public
        key = load_public(args["--key"]).decode()
    seq = db.add_member(node_id, host, _int_arg("PORT", port), ports["--pub-port"], ports["--peer-port"], key)
    if args["--json"]:
        _show(args, {"added": node_id, "seq": seq})
    elif _dynamo(db):
        _show(args, f"node {node_id} added (record counter {seq}); the other members hear it within a heartbeat or two")
    else:
        _show(args, f"node {node_id} added as a learner (entry {seq}); the primary makes it a voter once it has "
                    f"caught up")
    return 0


def _dynamo(db) -> bool:
    """Whether the node asked runs dynamo mode: a membership change's number is then its record's
    counter, not a log entry's seq."""
    return db.status().get("mode") == "dynamo"


def _int_arg(name, text) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, not {text!r}") from None


def node_entry():
    sys.exit(node_main())


def cli_entry():
    sys.exit(cli_main())
