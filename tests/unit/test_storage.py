"""Storage on tmp_path: atomic batches, reopen, scans, log trimming, and data dir checks."""
import json
import os
import types

import pytest

from zmqstore import storage
from zmqstore.errors import DataDirError
from zmqstore.datadir import CREATING, DB_DIR, MARKER
from zmqstore.storage import META_FIRST_SEQ, META_LAST_SEQ, RECYCLE_WAL_MIN_FS, Storage


def write(st, seq, key, value):
    b = st.batch()
    b.append(seq, b"entry%d" % seq)
    b.put(key, value)
    b.set_meta(META_LAST_SEQ, seq)
    st.commit(b)


def test_batch_is_applied_and_survives_reopen(tmp_path):
    st = Storage.open(tmp_path / "d", 1, "leader")
    write(st, 1, b"a", b"1")
    write(st, 2, b"b", b"2")
    b = st.batch()
    b.delete(b"a")
    st.commit(b)
    st.close()
    st = Storage.open(tmp_path / "d", 1, "leader")
    assert st.get(b"a") is None and st.get(b"b") == b"2"
    assert st.last_seq == 2
    assert list(st.log_entries(1)) == [(1, b"entry1"), (2, b"entry2")]
    st.close()
    st.close()  # closing twice is safe


@pytest.mark.parametrize("size, reused", [(RECYCLE_WAL_MIN_FS - 4096, 0), (RECYCLE_WAL_MIN_FS, 1)])
def test_a_wal_file_is_kept_for_reuse_only_on_a_file_system_of_a_gibibyte_or_more(tmp_path, monkeypatch, size, reused):
    """The rule of storage.recycled_wal_files, and that RocksDB is opened with it (its own LOG says
    which recycle_log_file_num it runs with). The size is what statvfs reports: a small file
    system needs root to mount (tests/cluster/test_disk_space.py checks it on real ones)."""
    monkeypatch.setattr(storage.os, "statvfs", lambda path: types.SimpleNamespace(f_blocks=size // 4096, f_frsize=4096))
    st = Storage.open(tmp_path / "d", 1, "leader")
    try:
        assert st.recycled_wal_files == reused
        with open(os.path.join(st.path, DB_DIR, "LOG")) as f:
            assert f"Options.recycle_log_file_num: {reused}" in f.read()
    finally:
        st.close()


def test_scan_bounds_prefix_and_paging(tmp_path):
    st = Storage.open(tmp_path / "d", 1, "leader")
    b = st.batch()
    for k in (b"a1", b"a2", b"a3", b"b1", b"c"):
        b.put(k, b"v" + k)
    st.commit(b)
    assert [k for k, _ in st.scan(None, None, b"a", 100, 1 << 20)[0]] == [b"a1", b"a2", b"a3"]
    assert st.scan(b"a2", b"b1", None, 100, 1 << 20) == ([(b"a2", b"va2"), (b"a3", b"va3")], None)
    items, nxt = st.scan(None, None, None, 2, 1 << 20)
    assert [k for k, _ in items] == [b"a1", b"a2"] and nxt == b"a3"
    items, nxt = st.scan(None, None, None, 100, 1)  # byte budget fills after one item
    assert len(items) == 1 and nxt == b"a2"
    assert st.scan(b"zz", None, None, 10, 100) == ([], None)
    st.close()


def test_trim_log(tmp_path):
    st = Storage.open(tmp_path / "d", 1, "leader")
    for seq in range(1, 11):
        write(st, seq, b"k", b"%d" % seq)
    b = st.batch()
    b.trim_log(st.first_seq, 8, 1)
    st.commit(b)
    assert st.first_seq == 8 and st.trim_term == 1
    assert [s for s, _ in st.log_entries(1)] == [8, 9, 10]
    st.close()
    st = Storage.open(tmp_path / "d", 1, "leader")
    assert st.first_seq == 8 and [s for s, _ in st.log_entries(0, 9)] == [8, 9]
    st.close()


def test_refuses_other_node_and_mode(tmp_path):
    Storage.open(tmp_path / "d", 1, "leader").close()
    with pytest.raises(DataDirError, match="belongs to node 1"):
        Storage.open(tmp_path / "d", 2, "leader")
    with pytest.raises(DataDirError, match="leader mode"):
        Storage.open(tmp_path / "d", 1, "dynamo")


def test_refuses_foreign_missing_parent_and_damage(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "something").write_text("x")
    with pytest.raises(DataDirError, match="not written by zmqstore"):
        Storage.open(foreign, 1, "leader")
    with pytest.raises(DataDirError, match="parent"):
        Storage.open(tmp_path / "no" / "such" / "dir", 1, "leader")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataDirError, match="not a directory"):
        Storage.open(tmp_path / "file", 1, "leader")
    lost = tmp_path / "lost"
    lost.mkdir()
    (lost / "zmqstore.json").write_text(json.dumps({"format": 1, "node_id": 1, "mode": "leader"}))
    with pytest.raises(DataDirError, match="data was lost"):
        Storage.open(lost, 1, "leader")
    (lost / "zmqstore.json").write_text("{nonsense")
    with pytest.raises(DataDirError, match="damaged"):
        Storage.open(lost, 1, "leader")


def test_a_creation_cut_short_is_created_again_and_nothing_else_is(tmp_path):
    """A start killed after it made db/ but before the marker (seen in a fault campaign: the node was
    refused as foreign ever after) leaves zmqstore.creating: the next start creates the dir again.
    Without that file, or beside a file zmqstore does not write, the dir is refused as before."""
    d = tmp_path / "d"
    st = Storage.open(d, 1, "leader")
    assert st.created and not (d / CREATING).exists()
    write(st, 1, b"k", b"v")
    st.close()
    (d / MARKER).rename(d / (MARKER + ".tmp"))      # as if killed between the db and the marker's rename
    (d / CREATING).write_bytes(b"")
    st = Storage.open(d, 1, "leader")
    try:
        assert st.created and st.get(b"k") is None and (d / MARKER).exists() and not (d / CREATING).exists()
    finally:
        st.close()
    st = Storage.open(d, 1, "leader")
    st.close()
    assert not st.created                               # and it is an ordinary dir from then on

    half = tmp_path / "half"
    Storage.open(half, 1, "leader").close()
    (half / MARKER).unlink()
    with pytest.raises(DataDirError, match="not written by zmqstore"):
        Storage.open(half, 1, "leader")             # no creating file: not known to be ours
    (half / CREATING).write_bytes(b"")
    (half / "notes.txt").write_text("someone's")
    with pytest.raises(DataDirError, match="not written by zmqstore"):
        Storage.open(half, 1, "leader")
    assert (half / "notes.txt").exists() and (half / "db").is_dir()     # nothing removed

    done = tmp_path / "done"
    Storage.open(done, 1, "leader").close()
    (done / CREATING).write_bytes(b"")               # killed after the marker, before the removal
    st = Storage.open(done, 1, "leader")
    st.close()
    assert not st.created and not (done / CREATING).exists()


def test_a_creation_under_way_is_not_taken_for_an_interrupted_one_by_a_second_start(tmp_path):
    """The data dir is flocked before it is judged: a second start while the first is between its
    creating file and its marker is refused as in use and removes nothing (review of 626ee83: it
    deleted the first one's db/, LOCK and all, and both ran on one dir)."""
    d = tmp_path / "d"
    first = Storage.open(d, 1, "leader")
    try:
        write(first, 1, b"k", b"v")
        (d / MARKER).unlink()                  # the first as it was mid-creation
        (d / CREATING).write_bytes(b"")
        with pytest.raises(DataDirError, match="in use"):
            Storage.open(d, 1, "leader")
        assert first.get(b"k") == b"v" and (d / "db" / "CURRENT").exists()
    finally:
        first.close()
    only = tmp_path / "only"                   # killed before db/ existed
    only.mkdir()
    (only / CREATING).write_bytes(b"")
    st = Storage.open(only, 1, "leader")
    st.close()
    assert st.created and (only / MARKER).exists() and not (only / CREATING).exists()


def test_refuses_dir_in_use(tmp_path):
    st = Storage.open(tmp_path / "d", 1, "leader")
    try:
        with pytest.raises(DataDirError, match="in use"):
            Storage.open(tmp_path / "d", 1, "leader")
    finally:
        st.close()


def test_meta_first_seq_defaults_to_one(tmp_path):
    st = Storage.open(tmp_path / "d", 1, "leader")
    assert (st.first_seq, st.last_seq, st.applied_seq, st.term) == (1, 0, 0, 0)
    assert META_FIRST_SEQ == b"first_seq"
    st.close()


def test_a_data_snapshot_reads_the_data_as_it_was_whatever_is_written_after(tmp_path):
    """Watch snapshots, backups and peer snapshots page through data_snapshot over many loop
    iterations while writes go on: every page must read the data as of the snapshot (rocksdict's
    own Snapshot does not, for a column family's iterators)."""
    st = Storage.open(str(tmp_path / "d"), 1, "leader")
    try:
        batch = st.batch()
        for key in (b"a", b"c", b"e"):
            batch.put(key, b"old")
        st.commit(batch)
        view = st.data_snapshot()
        first, cursor = st.snapshot_page(view, None, 1, 1 << 20)
        batch = st.batch()
        batch.put(b"b", b"new")
        batch.put(b"c", b"new")
        batch.delete(b"e")
        batch.put(b"f", b"new")
        st.commit(batch)
        rest, _ = st.snapshot_page(view, cursor, 100, 1 << 20)
        assert first + rest == [[b"a", b"old"], [b"c", b"old"], [b"e", b"old"]]
        scanned, _ = st.scan(None, None, b"", 100, 1 << 20, snapshot=view)
        assert scanned == [(b"a", b"old"), (b"c", b"old"), (b"e", b"old")]
        assert [k for k, _ in st.scan(None, None, b"", 100, 1 << 20)[0]] == [b"a", b"b", b"c", b"f"]
    finally:
        st.close()
