"""Tests of the scoring tool (ood_det/apps/score.py, media.py, draw.py).

Most tests drive ``main()`` with a deterministic stub predictor (the I/O pipeline is what is
tested); ``test_real_model_*`` score a generated DigitsOOD video with the tiny trained model of
the shared session fixture.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from ood_det.apps import score as score_app
from ood_det.apps.draw import UNKNOWN_COLOR, draw_detections
from ood_det.apps.media import collect_sources

FPS = 10.0
W, H = 80, 64


# ------------------------------------------------------------------------------------ helpers
class StubPredictor:
    """Deterministic detections: per image two boxes whose OOD scores follow the image's mean
    intensity, so that they straddle any threshold in (0, 1) across frames."""

    score = "energy"
    score_names = ("msp", "energy")

    def __init__(self, stored_threshold=0.5, interrupt_on_call=None):
        self.class_names = ["zero", "one", "two"]
        self.stored = stored_threshold
        self.calls = 0
        self.batch_sizes = []
        self.interrupt_on_call = interrupt_on_call

    def threshold(self, score=None, required=True):
        if self.stored is None and required:
            raise LookupError("no stored threshold: run evaluation or pass --threshold")
        return self.stored

    def __call__(self, images, score=None):
        self.calls += 1
        self.batch_sizes.append(len(images))
        if self.interrupt_on_call is not None and self.calls == self.interrupt_on_call:
            raise KeyboardInterrupt
        out = []
        for im in images:
            assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3
            m = float(im.mean()) / 255.0
            h, w = im.shape[:2]
            out.append({
                "boxes": np.array([[2, 3, w / 2, h / 2], [w / 3, h / 3, w - 2, h - 2]], np.float32),
                "labels": np.array([0, 2]),
                "scores": np.array([0.9, 0.3], np.float32),  # the second is below 0.5 conf
                "ood_scores": np.array([m, 1.0 - m], np.float32),
            })
        return out


def frame_image(i: int) -> np.ndarray:
    """BGR frame i: grey level 37 * i mod 256 plus a marker so that frames differ."""
    img = np.full((H, W, 3), (37 * i) % 256, np.uint8)
    cv2.rectangle(img, (5 + i, 5), (25 + i, 25), (0, 0, 255), -1)
    return img


def write_video(path, n, fps=FPS, fourcc="MJPG"):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    assert w.isOpened()
    for i in range(n):
        w.write(frame_image(i))
    w.release()
    return str(path)


def count_frames(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    n, size = 0, None
    while True:
        ok, f = cap.read()
        if not ok:
            break
        n += 1
        size = f.shape[:2]
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return n, size, fps


def read_jsonl(out):
    with open(os.path.join(out, "detections.jsonl"), encoding="utf-8") as f:
        text = f.read()
    assert text == "" or text.endswith("\n"), "the JSON-lines file ends mid-line"
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def stub(monkeypatch):
    holder = {"pred": StubPredictor(), "loads": 0}

    def load(args):
        holder["loads"] += 1
        return holder["pred"]

    monkeypatch.setattr(score_app, "_load_predictor", load)
    return holder


def run_main(*args):
    return score_app.main(["--config", "unused.yaml", "--weights", "unused.pth",
                           "--no-progress", *map(str, args)])


# -------------------------------------------------------------------------------------- tests
def test_video_jsonl_and_output_video(tmp_path, stub):
    vid = write_video(tmp_path / "clip.avi", 7)
    out = tmp_path / "out"
    rc = run_main("--input", vid, "--output", out, "--batch-size", 3)
    assert rc == 0
    recs = read_jsonl(out)
    assert [r["frame"] for r in recs] == list(range(7))
    assert [r["timestamp"] for r in recs] == pytest.approx([i / FPS for i in range(7)])
    assert all(r["file"] == vid and r["output"] == "clip.avi" for r in recs)
    assert all((r["width"], r["height"]) == (W, H) for r in recs)
    # conf filter 0.5 keeps the first stub box only; is_ood exactly ood_score < stored 0.5
    flags = []
    for r in recs:
        assert len(r["detections"]) == 1
        d = r["detections"][0]
        assert d["class"] == "zero" and d["label"] == 0 and d["confidence"] == pytest.approx(0.9)
        assert d["is_ood"] == (d["ood_score"] < 0.5)
        flags.append(d["is_ood"])
    assert any(flags) and not all(flags), "the test video should straddle the threshold"
    n, size, fps = count_frames(out / "clip.avi")
    assert (n, size, fps) == (7, (H, W), FPS)
    cap = cv2.VideoCapture(str(out / "clip.avi"))  # frame i of the output is input frame i
    for i in range(7):
        ok, f = cap.read()
        assert ok and abs(int(f[55, 70].mean()) - (37 * i) % 256) < 12
    cap.release()
    # batches of 3: 3 + 3 + 1
    assert stub["pred"].batch_sizes == [3, 3, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 7 and summary["videos"] == 1 and summary["skipped"] == []
    assert summary["boxes"] == 7 and summary["unknown_boxes"] == sum(flags)


def test_threshold_override_and_conf_thresh(tmp_path, stub):
    vid = write_video(tmp_path / "clip.mp4", 6, fourcc="mp4v")
    out = tmp_path / "out"
    rc = run_main("--input", vid, "--output", out, "--threshold", 0.25, "--conf-thresh", 0.1)
    assert rc == 0
    recs = read_jsonl(out)
    assert len(recs) == 6
    dets = [d for r in recs for d in r["detections"]]
    assert len(dets) == 12  # both stub boxes pass conf 0.1
    assert all(d["is_ood"] == (d["ood_score"] < 0.25) for d in dets)
    assert any(d["is_ood"] for d in dets) and not all(d["is_ood"] for d in dets)
    assert json.loads((out / "summary.json").read_text())["threshold"] == 0.25
    assert count_frames(out / "clip.mp4")[:2] == (6, (H, W))


def test_no_stored_threshold_is_a_setup_error(tmp_path, stub, capsys):
    stub["pred"].stored = None
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), frame_image(1))
    rc = run_main("--input", img, "--output", tmp_path / "out")
    assert rc == score_app.EXIT_SETUP
    assert "--threshold" in capsys.readouterr().err
    assert not (tmp_path / "out" / "detections.jsonl").exists()


def test_images_folder_glob_mixed_and_missing(tmp_path, stub, capsys):
    d = tmp_path / "folder"
    d.mkdir()
    for i in range(2):
        cv2.imwrite(str(d / f"f{i}.png"), frame_image(i))
    (d / "notes.txt").write_text("not an image")
    g = tmp_path / "globbed"
    g.mkdir()
    for i in range(3):
        cv2.imwrite(str(g / f"g{i}.jpg"), frame_image(i + 3))
    single = tmp_path / "single.bmp"
    cv2.imwrite(str(single), frame_image(7))
    vid = write_video(tmp_path / "v.avi", 3)
    out = tmp_path / "out"
    rc = run_main("--input", single, d, str(g / "*.jpg"), vid, tmp_path / "missing.png",
                  "--output", out, "--batch-size", 4)
    assert rc == score_app.EXIT_PARTIAL  # one input was skipped
    recs = read_jsonl(out)
    assert [r["output"] for r in recs] == ["single.bmp", "f0.png", "f1.png", "g0.jpg", "g1.jpg",
                                           "g2.jpg", "v.avi", "v.avi", "v.avi"]
    assert all(r["timestamp"] is None and r["frame"] == 0 for r in recs[:6])
    for name in ["single.bmp", "f0.png", "f1.png", "g0.jpg", "g1.jpg", "g2.jpg"]:
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape == (H, W, 3)
    assert count_frames(out / "v.avi")[0] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 6 and summary["videos"] == 1 and summary["frames"] == 9
    assert [s["input"] for s in summary["skipped"]] == [str(tmp_path / "missing.png")]
    assert "not found" in summary["skipped"][0]["reason"]
    err = capsys.readouterr().err
    assert "missing.png" in err and "not found" in err


def test_unreadable_image_is_skipped_others_scored(tmp_path, stub):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 this is no jpeg")
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), frame_image(2))
    out = tmp_path / "out"
    rc = run_main("--input", bad, good, "--output", out)
    assert rc == score_app.EXIT_PARTIAL
    assert [r["file"] for r in read_jsonl(out)] == [str(good)]
    skipped = json.loads((out / "summary.json").read_text())["skipped"]
    assert skipped[0]["input"] == str(bad) and "cannot be read" in skipped[0]["reason"]
    assert not (out / "bad.jpg").exists()


def test_unsupported_and_empty_pattern(tmp_path, stub):
    txt = tmp_path / "a.txt"
    txt.write_text("x")
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), frame_image(0))
    out = tmp_path / "out"
    rc = run_main("--input", txt, str(tmp_path / "*.gif"), img, "--output", out)
    assert rc == score_app.EXIT_PARTIAL
    reasons = {s["input"]: s["reason"] for s in
               json.loads((out / "summary.json").read_text())["skipped"]}
    assert "unsupported file type '.txt'" in reasons[str(txt)]
    assert "pattern matches no image or video" in reasons[str(tmp_path / "*.gif")]
    assert len(read_jsonl(out)) == 1


def test_truncated_video_scored_up_to_damage(tmp_path, stub):
    full = write_video(tmp_path / "full.avi", 30)
    data = open(full, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    rc = run_main("--input", cut, "--output", out, "--batch-size", 4)
    assert rc == score_app.EXIT_PARTIAL
    recs = read_jsonl(out)
    n = len(recs)
    assert 0 < n < 30
    assert [r["frame"] for r in recs] == list(range(n))
    assert count_frames(out / "cut.avi")[0] == n  # the annotated video holds what was scored
    (sk,) = json.loads((out / "summary.json").read_text())["skipped"]
    assert sk["input"] == str(cut) and sk["frames_scored"] == n
    assert f"after {n} of the 30 frames" in sk["reason"]


def test_zero_frame_video(tmp_path, stub):
    empty = write_video(tmp_path / "empty.avi", 0)
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), frame_image(0))
    out = tmp_path / "out"
    rc = run_main("--input", empty, img, "--output", out)
    assert rc == score_app.EXIT_PARTIAL
    (sk,) = json.loads((out / "summary.json").read_text())["skipped"]
    assert sk["input"] == empty and "no frames" in sk["reason"]
    assert not (out / "empty.avi").exists()
    assert [r["file"] for r in read_jsonl(out)] == [str(img)]


@pytest.mark.parametrize("kind", ["is_a_file", "parent_is_a_file"])
def test_unwritable_output_fails_before_any_work(tmp_path, stub, capsys, kind):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if kind == "is_a_file" else blocker / "sub"
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), frame_image(0))
    rc = run_main("--input", img, "--output", out)
    assert rc == score_app.EXIT_SETUP
    assert stub["loads"] == 0, "the model must not be loaded before the output is checked"
    err = capsys.readouterr().err
    assert str(out) in err and ("not a folder" in err or "cannot be written" in err)


def test_keyboard_interrupt_closes_outputs(tmp_path, stub):
    stub["pred"] = StubPredictor(interrupt_on_call=3)
    vid = write_video(tmp_path / "long.mp4", 40, fourcc="mp4v")
    out = tmp_path / "out"
    rc = run_main("--input", vid, "--output", out, "--batch-size", 2)
    assert rc == score_app.EXIT_INTERRUPTED
    recs = read_jsonl(out)  # complete lines only
    assert [r["frame"] for r in recs] == [0, 1, 2, 3]  # two batches of 2 before the interrupt
    n, size, _ = count_frames(out / "long.mp4")  # playable: mp4 index written on close
    assert (n, size) == (4, (H, W))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["frames"] == 4
    assert summary["skipped"][0]["reason"] == "interrupted"


def test_model_error_closes_outputs_and_raises(tmp_path, stub):
    class Boom(StubPredictor):
        def __call__(self, images, score=None):
            if self.calls == 1:
                raise RuntimeError("model exploded")
            return super().__call__(images, score)

    stub["pred"] = Boom()
    vid = write_video(tmp_path / "v.mp4", 10, fourcc="mp4v")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="model exploded"):
        run_main("--input", vid, "--output", out, "--batch-size", 2)
    assert len(read_jsonl(out)) == 2
    assert count_frames(out / "v.mp4")[0] == 2
    skipped = json.loads((out / "summary.json").read_text())["skipped"]
    assert "model exploded" in skipped[0]["reason"]


def test_output_names_collide_and_never_overwrite_inputs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for d in (a, b):
        cv2.imwrite(str(d / "x.png"), frame_image(0))
    sources, skipped = collect_sources([str(a), str(b), str(a / "x.png")], str(tmp_path / "o"))
    assert [s.output for s in sources] == ["x.png", "x_2.png"]  # a/x.png given twice: once
    # --output is the folder of an input: the output takes the next free name, never the input's
    sources, skipped = collect_sources([str(a)], str(a))
    assert [s.output for s in sources] == ["x_2.png"] and not skipped
    # issue: --input A B --output B wrote the annotated A/x.png over the original B/x.png
    sources, skipped = collect_sources([str(a), str(b)], str(b))
    assert [s.output for s in sources] == ["x_2.png", "x_3.png"] and not skipped


def test_no_output_replaces_an_input_end_to_end(tmp_path, stub):
    """--input A B --output B: both originals survive byte for byte, both are scored."""
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    cv2.imwrite(str(a / "x.png"), frame_image(1))
    cv2.imwrite(str(b / "x.png"), frame_image(2))
    before = {p: p.read_bytes() for p in (a / "x.png", b / "x.png")}
    assert run_main("--input", a, b, "--output", b) == 0
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(x.name for x in b.iterdir() if x.suffix == ".png") == ["x.png", "x_2.png", "x_3.png"]
    assert [r["output"] for r in read_jsonl(b)] == ["x_2.png", "x_3.png"]


def test_non_finite_threshold_is_refused_and_json_is_strict(tmp_path, stub, capsys):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), frame_image(3))
    out = tmp_path / "out"
    for bad in ("nan", "inf", "-inf"):
        assert run_main("--input", img, "--output", out, f"--threshold={bad}") == score_app.EXIT_SETUP
        assert "--threshold must be a finite number" in capsys.readouterr().err
    assert not (out / "summary.json").exists()
    # a model that returns a NaN score: the files stay strict JSON (null)
    orig = StubPredictor.__call__

    def nan_scores(self, images, score=None):
        res = orig(self, images, score)
        for r in res:
            r["ood_scores"] = np.array([np.nan, 0.5], np.float32)
        return res

    stub["pred"].__class__ = type("NanStub", (StubPredictor,), {"__call__": nan_scores})
    assert run_main("--input", img, "--output", out, "--conf-thresh", 0.1) == 0
    for text in ((out / "summary.json").read_text(), (out / "detections.jsonl").read_text()):
        assert "NaN" not in text and "Infinity" not in text
    rec = read_jsonl(out)[0]
    assert rec["detections"][0]["ood_score"] is None


def test_stored_confidence_threshold_is_the_default(tmp_path, stub, capsys):
    """The evaluation stores the F1-optimal box confidence; the tool uses it unless --conf-thresh."""
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), frame_image(3))
    stub["pred"].conf_thresh = 0.2  # both stub boxes (0.9, 0.3) pass
    out = tmp_path / "o1"
    assert run_main("--input", img, "--output", out) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["conf_thresh"] == 0.2 and s["conf_thresh_source"].startswith("checkpoint") and s["boxes"] == 2
    assert run_main("--input", img, "--output", tmp_path / "o2", "--conf-thresh", 0.5) == 0
    s = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert s["conf_thresh"] == 0.5 and s["conf_thresh_source"] == "--conf-thresh" and s["boxes"] == 1
    stub["pred"].conf_thresh = None  # an older checkpoint: 0.5 with a warning
    assert run_main("--input", img, "--output", tmp_path / "o3") == 0
    assert "stores no box-confidence threshold" in capsys.readouterr().err
    assert json.loads((tmp_path / "o3" / "summary.json").read_text())["conf_thresh"] == 0.5


def test_second_scoring_run_into_the_same_folder_is_refused(tmp_path, stub, capsys):
    from ood_det.engine.output_lock import OutputDirLock

    img = tmp_path / "a.png"
    cv2.imwrite(str(img), frame_image(3))
    out = tmp_path / "out"
    with OutputDirLock(str(out), "scoring"):
        assert run_main("--input", img, "--output", out) == score_app.EXIT_SETUP
        err = capsys.readouterr().err
        assert "in use by another ood_det scoring" in err and str(os.getpid()) in err
    assert not (out / "detections.jsonl").exists()
    assert run_main("--input", img, "--output", out) == 0  # released: the next run works


def test_draw_marks_unknown_boxes_distinctly():
    img = np.zeros((60, 220, 3), np.uint8)
    boxes = np.array([[5, 20, 50, 55], [110, 20, 200, 55]], np.float64)
    draw_detections(img, boxes, np.array([0, 1]), np.array([0.9, 0.8]), np.array([2.0, -3.0]),
                    np.array([False, True]), ["a", "b"])
    left, right = img[:, :100], img[:, 105:]
    magenta = np.all(img == np.array(UNKNOWN_COLOR, np.uint8), axis=-1)
    assert magenta[:, 105:].sum() > 50 and magenta[:, :100].sum() == 0
    # dashed: the bottom edge of the unknown box has gaps, the known box's edge has none
    assert not np.all(np.any(right[54:57, 5:50] != 0, axis=(0, 2)))
    assert np.all(np.any(left[54:57, 5:50] != 0, axis=(0, 2)))


def test_camera_input(tmp_path, stub, monkeypatch):
    from ood_det.apps import media

    class FakeCamera:
        def __init__(self, index):
            assert index == 0
            self.n = 0

        def isOpened(self):
            return True

        def get(self, prop):
            return 15.0 if prop == cv2.CAP_PROP_FPS else 0.0

        def read(self):
            self.n += 1
            return (True, frame_image(self.n)) if self.n <= 5 else (False, None)

        def release(self):
            pass

    monkeypatch.setattr(media.cv2, "VideoCapture", FakeCamera)
    out = tmp_path / "out"
    rc = run_main("--input", "cam:0", "--output", out)
    monkeypatch.undo()
    assert rc == 0
    recs = read_jsonl(out)
    assert [r["frame"] for r in recs] == list(range(5))
    assert {r["file"] for r in recs} == {"cam:0"} and recs[0]["timestamp"] == 0.0
    ts = [r["timestamp"] for r in recs]
    assert ts == sorted(ts)
    assert count_frames(out / "cam0.mp4")[:3] == (5, (H, W), 15.0)


# ------------------------------------------------------------------ the tiny trained model
@pytest.fixture(scope="module")
def digits_video(tmp_path_factory):
    """A 6-frame, 5 fps MJPG video of DigitsOOD ``mixed`` images (ID and OOD digits)."""
    from ood_det.data.digits_ood import (DigitsOODConfig, load_source_digits, render_image,
                                         split_sources)

    cfg = DigitsOODConfig(seed=3)
    sources, targets = load_source_digits()
    test = split_sources(targets, cfg.seed, cfg.source_fractions)["test"]
    pools = {d: test[targets[test] == d] for d in range(10)}
    path = tmp_path_factory.mktemp("digits_video") / "digits.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (128, 128))
    for i in range(6):
        grey, objs = render_image(cfg, "mixed", i, sources, pools)
        assert {o["digit"] < 5 for o in objs} == {True, False}  # ID and OOD digits
        w.write(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    w.release()
    return str(path)


def test_real_model_video(smoke_run, digits_video, tmp_path, monkeypatch):
    from ood_det.apps.predictor import Predictor

    out = tmp_path / "out"
    rc = score_app.main(["--config", smoke_run.config, "--weights", smoke_run.weights,
                         "--input", digits_video, "--output", str(out), "--batch-size", "4",
                         "--conf-thresh", "0.0", "--device", "cpu", "--no-progress"])
    assert rc == 0
    recs = read_jsonl(out)
    assert [r["frame"] for r in recs] == list(range(6))
    assert [r["timestamp"] for r in recs] == pytest.approx([i / 5.0 for i in range(6)])
    n, size, fps = count_frames(out / "digits.avi")
    assert (n, size, fps) == (6, (128, 128), 5.0)

    pred = Predictor.from_checkpoint(smoke_run.config, smoke_run.weights)
    thr = pred.threshold()
    dets = [d for r in recs for d in r["detections"]]
    assert dets, "the smoke model should detect something at --conf-thresh 0"
    assert all(d["is_ood"] == (d["ood_score"] < thr) for d in dets)
    assert all(d["class"] == pred.class_names[d["label"]] for d in dets)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"] == thr and summary["score"] == pred.score
    assert summary["unknown_boxes"] == sum(d["is_ood"] for d in dets)

    # the tool's detections are the model's on the decoded frames (order and batching kept)
    cap = cv2.VideoCapture(digits_video)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    direct = pred(frames)
    for r, d in zip(recs, direct):
        np.testing.assert_allclose(np.array([x["box"] for x in r["detections"]]).reshape(-1, 4),
                                   d["boxes"], rtol=1e-4, atol=1e-2)
        np.testing.assert_allclose([x["ood_score"] for x in r["detections"]], d["ood_scores"],
                                   rtol=1e-4, atol=1e-5)

    # --threshold override: flags follow it exactly (same model, loaded once)
    monkeypatch.setattr(score_app, "_load_predictor", lambda args: pred)
    mid = float(np.median([d["ood_score"] for d in dets]))
    out2 = tmp_path / "out2"
    rc = score_app.main(["--config", smoke_run.config, "--weights", smoke_run.weights,
                         "--input", digits_video, "--output", str(out2), "--threshold", str(mid),
                         "--conf-thresh", "0.0", "--no-progress"])
    assert rc == 0
    dets2 = [d for r in read_jsonl(out2) for d in r["detections"]]
    assert len(dets2) == len(dets)
    assert all(d["is_ood"] == (d["ood_score"] < mid) for d in dets2)


def test_real_model_checkpoint_mismatch_is_setup_error(smoke_run, tmp_path, capsys):
    import torch

    ck = torch.load(smoke_run.weights, map_location="cpu", weights_only=True)
    ck["ood_det"] = {**ck["ood_det"], "num_classes": 7}
    bad = tmp_path / "other.pth"
    torch.save(ck, bad)
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), frame_image(0))
    rc = score_app.main(["--config", smoke_run.config, "--weights", str(bad), "--input", str(img),
                         "--output", str(tmp_path / "out"), "--no-progress"])
    assert rc == score_app.EXIT_SETUP
    err = capsys.readouterr().err
    assert "num_classes" in err and "7" in err and "5" in err and str(bad) in err
    assert not (tmp_path / "out" / "detections.jsonl").exists()


def test_real_sigint_mid_run(tmp_path, stub):
    """A real SIGINT (not an exception raised by the model) lands wherever the main thread is."""
    import signal
    import threading
    import time

    class Slow(StubPredictor):
        def __call__(self, images, score=None):
            time.sleep(0.05)
            return super().__call__(images, score)

    stub["pred"] = Slow()
    vid = write_video(tmp_path / "long.avi", 150)
    out = tmp_path / "out"
    # a process started in the background by a non-interactive shell inherits SIGINT ignored
    # (and Python then keeps it ignored): install Python's own handler for this test
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.6, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        rc = run_main("--input", vid, "--output", out, "--batch-size", 2)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert rc == score_app.EXIT_INTERRUPTED
    recs = read_jsonl(out)
    assert 0 < len(recs) < 150
    assert [r["frame"] for r in recs] == list(range(len(recs)))
    assert count_frames(out / "long.avi")[0] == len(recs)
    assert json.loads((out / "summary.json").read_text())["frames"] == len(recs)


def test_bad_arguments_are_setup_errors(tmp_path, stub, capsys):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), frame_image(0))
    out = tmp_path / "out"
    assert run_main("--input", img, "--output", out, "--score", "nope") == score_app.EXIT_SETUP
    assert "'nope' is not supported" in capsys.readouterr().err
    assert run_main("--input", img, "--output", out, "--batch-size", 0) == score_app.EXIT_SETUP
    assert run_main("--input", img, "--output", out, "--conf-thresh", 2) == score_app.EXIT_SETUP
    assert run_main("--input", tmp_path / "none.png", "--output", out) == score_app.EXIT_SETUP
    assert "no input to score" in capsys.readouterr().err
    assert not (out / "detections.jsonl").exists()
