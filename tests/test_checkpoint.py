import pickle

import pytest
import torch
from torch import nn

from mmdiff import checkpoint as C
from mmdiff.errors import UserError


def make_checkpoint(step=3):
    model = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(step):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    g = torch.Generator().manual_seed(7)
    g.manual_seed(7)
    ckpt = C.Checkpoint(config={"model": {"channels": 8}, "x": [1, 2]}, data={"shape": [1, 4], "class_names": ["a"]},
                        step=step, samples_seen=5 * step, model=model.state_dict(),
                        ema={k: v + 1 for k, v in model.state_dict().items()}, optimizer=opt.state_dict(),
                        rng={"train": g.get_state()})
    return ckpt, model, opt


def test_round_trip_keeps_everything(tmp_path):
    ckpt, model, opt = make_checkpoint()
    path = C.save_checkpoint(tmp_path / "last.safetensors", ckpt)
    back = C.load_checkpoint(path)
    assert back.config == ckpt.config and back.data == ckpt.data
    assert (back.step, back.samples_seen) == (3, 15)
    for k, v in ckpt.model.items():
        assert torch.equal(back.model[k], v) and torch.equal(back.ema[k], v + 1)
    assert torch.equal(back.rng["train"], ckpt.rng["train"])
    # the optimizer state loads into a fresh optimizer and continues identically
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back.optimizer)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for key in s1["state"][i]:
            assert torch.equal(s1["state"][i][key], s2["state"][i][key])


def test_a_folder_means_its_last_checkpoint(tmp_path):
    C.save_checkpoint(tmp_path / "last.safetensors", make_checkpoint()[0])
    assert C.load_checkpoint(tmp_path).step == 3


def test_a_crash_during_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    C.save_checkpoint(path, make_checkpoint(step=1)[0])

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(C, "save_file", crash)
    with pytest.raises(OSError):
        C.save_checkpoint(path, make_checkpoint(step=2)[0])
    assert C.load_checkpoint(path).step == 1


class Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_pickles_are_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "evil.safetensors"
    raw.write_bytes(pickle.dumps(Payload()))
    torch_file = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2), "x": Payload()}, torch_file)
    for path in (raw, torch_file):
        with pytest.raises(UserError, match="never unpickles"):
            C.load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_a_header_length_whose_first_byte_looks_like_a_pickle_still_loads(tmp_path):
    # regression: safetensors files begin with their header length; a low byte of 0x80 is the pickle opcode
    ckpt = make_checkpoint()[0]
    for pad in range(0, 512):
        ckpt.data["pad"] = "x" * pad
        path = C.save_checkpoint(tmp_path / "last.safetensors", ckpt)
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert C.load_checkpoint(path).data["pad"] == ckpt.data["pad"]


def test_truncated_and_foreign_files_are_reported(tmp_path):
    path = C.save_checkpoint(tmp_path / "last.safetensors", make_checkpoint()[0])
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        C.load_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="corrupt or truncated"):
        C.load_checkpoint(tmp_path / "empty.safetensors")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="not an mmdiff checkpoint"):
        C.load_checkpoint(tmp_path / "other.safetensors")


def test_missing_paths_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="does not exist: pass checkpoint=PATH"):
        C.load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(UserError, match="without last.safetensors"):
        C.load_checkpoint(tmp_path)
    with pytest.raises(UserError, match="no checkpoint given"):
        C.load_checkpoint(None)
