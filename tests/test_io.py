"""inference.io: output paths checked up front, files replaced atomically."""

from __future__ import annotations

import os

import pytest

from inference.io import OutputError, atomic_write, check_outputs


def test_check_outputs_refuses_existing_input_duplicate_and_uncreatable(tmp_path):
    data = tmp_path / "data.nc"
    data.write_text("data")
    new = tmp_path / "sub" / "deeper" / "out.nc"
    assert check_outputs([("--out", new)]) == [new]
    assert not new.parent.exists()  # checking creates nothing
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        check_outputs([("--out", data)])
    assert check_outputs([("--out", data)], overwrite=True) == [data]
    # never the input, not even with overwrite (also through another spelling of the path)
    for same in (data, tmp_path / "." / "data.nc"):
        with pytest.raises(OutputError, match="input"):
            check_outputs([("--out", same)], inputs=[data], overwrite=True)
    with pytest.raises(OutputError, match="same file"):
        check_outputs([("--out", new), ("--out-nc", new)])
    with pytest.raises(OutputError, match="directory"):
        check_outputs([("--out", tmp_path)], overwrite=True)
    with pytest.raises(OutputError, match="not a directory"):
        check_outputs([("--out", data / "x.nc")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_check_outputs_refuses_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_outputs([("--out", ro / "new" / "out.nc")])
    finally:
        ro.chmod(0o755)


def test_atomic_write_replaces_and_an_interrupted_write_keeps_the_old_file(tmp_path):
    dest = tmp_path / "out.nc"
    dest.write_text("old")

    def good(p):
        assert p.parent == dest.parent and p.suffix == ".nc" and p != dest
        p.write_text("new")

    def killed(p):
        p.write_text("half of the new fi")
        raise KeyboardInterrupt

    def failing(p):
        p.write_text("half")
        raise OSError("disk full")

    for writer, exc in ((killed, KeyboardInterrupt), (failing, OSError)):
        with pytest.raises(exc):
            atomic_write(dest, writer)
        assert dest.read_text() == "old"
        assert sorted(tmp_path.iterdir()) == [dest]  # no temporary file left behind
    atomic_write(dest, good)
    assert dest.read_text() == "new" and sorted(tmp_path.iterdir()) == [dest]
    # the folder is made on demand
    atomic_write(tmp_path / "a" / "b.txt", lambda p: p.write_text("x"))
    assert (tmp_path / "a" / "b.txt").read_text() == "x"
