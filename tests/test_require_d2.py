"""tests/require_d2.py: with OOD_DET_REQUIRE_D2=1 a skipped detectron2 test fails the run; without
it the skip stays a skip. Run on a tiny temporary test tree in a subprocess."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _tree(tmp_path):
    (tmp_path / "d2").mkdir()
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(HERE)!r})\nfrom require_d2 import *  # noqa\n")
    (tmp_path / "d2" / "test_needs_d2.py").write_text(
        "import pytest\npytest.importorskip('no_such_module_detectron2', reason='detectron2 is not installed')\n"
        "def test_x():\n    pass\n")
    (tmp_path / "test_plain.py").write_text(
        "import pytest\ndef test_ok():\n    pass\n@pytest.mark.skip(reason='unrelated')\ndef test_skip():\n    pass\n")


def _run(tmp_path, env_value):
    env = {k: v for k, v in os.environ.items() if k != "OOD_DET_REQUIRE_D2"}
    if env_value is not None:
        env["OOD_DET_REQUIRE_D2"] = env_value
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("value,code", [(None, 0), ("0", 0), ("1", 1)])
def test_skipped_detectron2_tests_fail_only_when_required(tmp_path, value, code):
    _tree(tmp_path)
    r = _run(tmp_path, value)
    assert r.returncode == code, r.stdout + r.stderr
    if code:
        assert "detectron2 test(s) skipped: failing the run" in r.stdout
        assert "test_needs_d2.py" in r.stdout and "test_plain.py" not in r.stdout.split("!!")[-1]
