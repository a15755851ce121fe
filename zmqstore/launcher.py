"""Run several datastore-node processes in the foreground (`make run`): their output prefixed by node,
all stopped cleanly on Ctrl-C or SIGTERM, all stopped if one of them exits.

Usage: python -m zmqstore.launcher CONFIG [CONFIG ...]
"""
import os
import signal
import subprocess
import sys
import threading

STOP_TIMEOUT = 10.0


def _pump(name, stream, lock):
    for line in iter(stream.readline, b""):
        with lock:
            sys.stdout.write(f"[{name}] {line.decode('utf-8', 'replace')}")
            sys.stdout.flush()


def main(argv=None):
    configs = (argv if argv is not None else sys.argv[1:])
    if not configs:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    lock = threading.Lock()
    procs = []
    for path in configs:
        name = os.path.splitext(os.path.basename(path))[0]
        # Own session: the terminal's Ctrl-C reaches only the launcher, which stops every node in order.
        proc = subprocess.Popen([sys.executable, "-m", "zmqstore", "--config", path], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        threading.Thread(target=_pump, args=(name, proc.stdout, lock), daemon=True).start()
        procs.append((name, proc))
    failed = None
    while not stop.wait(0.2):
        failed = next(((n, p.returncode) for n, p in procs if p.poll() is not None), None)
        if failed:
            break
    for _, proc in procs:
        if proc.poll() is None:
            proc.terminate()
    code = 0
    for name, proc in procs:
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if failed and name == failed[0]:
            code = failed[1] or 1
    if failed:
        print(f"{failed[0]} exited with status {failed[1]}; stopped the others", file=sys.stderr)
    else:
        print("all nodes stopped", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
