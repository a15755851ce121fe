# Set-up and everyday commands. `make run` and `make test` work on a fresh machine (Python 3.11 + venv).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: run run-dynamo run-single test bench bench-compare bench-ab bench-trace bench-profile bench-elections chaos clean distclean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): setup.py $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: install and start the seed's 3-node leader cluster from conf/leader/ in the foreground,
## output prefixed by node; Ctrl-C stops all three
run: $(STAMP)
	mkdir -p data
	$(PY) -m zmqstore.launcher conf/leader/node1.ini conf/leader/node2.ini conf/leader/node3.ini

## run-dynamo: the seed's 2-node dynamo cluster from conf/dynamo/ (every node accepts writes)
run-dynamo: $(STAMP)
	mkdir -p data
	$(PY) -m zmqstore.launcher conf/dynamo/node1.ini conf/dynamo/node2.ini

## run-single: one standalone node from conf/single.ini (Ctrl-C stops it)
run-single: $(STAMP)
	mkdir -p data
	$(VENV)/bin/datastore-node --config conf/single.ini

## test: install with the test extra and run every test
test: $(STAMP)
	$(PY) -m pytest

## bench: benchmarks against real nodes; prints figures (see docs/BENCHMARKS.md)
bench: $(STAMP)
	$(PY) bench/run.py

## chaos: a randomised fault campaign (kill -9, SIGSTOP, iptables partitions when root) with a
## linearizability check (leader mode) or a convergence and no-lost-write check (dynamo mode);
## make chaos SECONDS=300 SEED=42 NODES=5 MODE=dynamo KEYS=1 (KEYS=1: CurveZMQ on every socket;
## REPLICAS=3: dynamo mode keeps each key on 3 of the nodes, docs/PARTITIONING.md)
SECONDS ?= 300
NODES ?= 3
MODE ?= leader
chaos: $(STAMP)
	$(PY) -m zmqstore.testing.chaos --mode $(MODE) --seconds $(SECONDS) --nodes $(NODES) --clients $(NODES) \
		$(if $(SEED),--seed $(SEED)) $(if $(KEYS),--keys) $(if $(REPLICAS),--replicas $(REPLICAS))

## bench-compare: zmqstore beside Redis (2 replicas) and etcd (3 members), from Debian's packages,
## installed when missing; YCSB A-F and put workloads, alternated round by round (docs/BENCHMARKS.md);
## QUICK=1: a tiny run that checks the scripts; ONLY=redis,etcd: those systems (and zmqstore leader);
## WORKLOADS=C,seq_put: those workloads; BASELINE=<git rev>: also leader mode as of that revision
BENCH_STAMP = $(VENV)/.installed-bench
$(BENCH_STAMP): setup.py $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench-compare: $(BENCH_STAMP)
	$(PY) bench/compare.py $(if $(QUICK),--quick) $(if $(ONLY),--only $(ONLY)) \
		$(if $(WORKLOADS),--workloads $(WORKLOADS)) $(if $(BASELINE),--baseline $(BASELINE))

## bench-ab: pipelined puts, this tree against BASELINE=<git rev> (nodes and client from each),
## alternated round by round, with each process's CPU per put; MODE=dynamo for dynamo mode
bench-ab: $(BENCH_STAMP)
	$(PY) bench/ab_puts.py $(BASELINE) --mode $(MODE)

## bench-trace: the timeline of a sequential replicated put, stage by stage across client and nodes,
## with each stage's CPU (bench/trace_puts.py; docs/BENCHMARKS.md)
bench-trace: $(STAMP)
	$(PY) bench/trace_puts.py

## bench-profile: where a replicated put's time goes: a 3-node leader cluster with two nodes under
## py-spy, sequential then pipelined puts; a per-put budget beside the floor (docs/BENCHMARKS.md)
bench-profile: $(BENCH_STAMP)
	$(PY) bench/profile_puts.py

## bench-elections: 10 minutes of steady load on a 3-node cluster; counts elections (target: none)
bench-elections: $(STAMP)
	$(PY) bench/quiet.py --seconds 600

clean:
	rm -rf data .pytest_cache build *.egg-info

distclean: clean
	rm -rf $(VENV)
