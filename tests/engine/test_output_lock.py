"""ood_det.engine.output_lock: one writer per output folder; stale locks of dead processes."""
import json
import os
import socket
import subprocess
import sys

import pytest

from ood_det.engine.output_lock import LOCK_NAME, OutputDirLock, OutputDirLockedError


def test_second_writer_is_refused_with_the_holder_named(tmp_path):
    with OutputDirLock(str(tmp_path), "training"):
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(OutputDirLockedError) as e:
            OutputDirLock(str(tmp_path), "scoring").acquire()
        msg = str(e.value)
        assert f"process {os.getpid()}" in msg and "training" in msg and str(tmp_path) in msg
    assert not (tmp_path / LOCK_NAME).exists()  # released


def test_released_on_exception(tmp_path):
    with pytest.raises(KeyError):
        with OutputDirLock(str(tmp_path)):
            raise KeyError("boom")
    OutputDirLock(str(tmp_path)).acquire().release()


def test_stale_lock_of_a_dead_process_is_replaced(tmp_path, caplog):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that no longer runs
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(),
                                                  "what": "training", "started": "x"}))
    with OutputDirLock(str(tmp_path), "training"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text


def test_a_second_training_in_the_same_folder_is_refused(tmp_path):
    """Issue: a second training started in the same OUTPUT_DIR silently replaced the first's files."""
    from pathlib import Path

    from ood_det.apps.train import main

    smoke = str(Path(__file__).resolve().parents[2] / "configs" / "Digits-OOD" / "smoke.yaml")
    out = tmp_path / "out"
    with OutputDirLock(str(out), "training"):
        (out / "config.yaml").write_text("the first run's config")
        with pytest.raises(OutputDirLockedError, match="in use by another ood_det training"):
            main(["--config", smoke, "OUTPUT_DIR", str(out)])
        assert (out / "config.yaml").read_text() == "the first run's config"
        assert not (out / "log.txt").exists()
