"""ood_det.engine.comm: single-process behaviour and device resolution."""
import pytest
import torch

from ood_det.engine import comm


def test_single_process_defaults():
    assert comm.get_world_size() == 1 and comm.get_rank() == 0 and comm.is_main_process()
    comm.synchronize()  # no-op without a process group
    out = comm.reduce_dict({"b": torch.tensor(2.5), "a": torch.tensor([1.0])})
    assert out == {"a": 1.0, "b": 2.5}
    assert comm.reduce_dict({}) == {}


def test_resolve_device():
    assert comm.resolve_device("cpu") == torch.device("cpu")
    auto = comm.resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="MODEL.DEVICE"):
            comm.resolve_device("cuda")
