"""ferflow analyze: photos, folders and real video clips through the server's recognition path."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ferflow.config import FERPLUS_EMOTIONS
from ferflow.footage import AnalyzeConfig, FootageError, Tracker, analyze, write_rows

VIDEO = Path(__file__).resolve().parents[2].parent / "shared" / "samples" / "video"
QUIET = AnalyzeConfig(progress=False)


@pytest.fixture(scope="module")
def clips() -> Path:
    if not (VIDEO / "single_face.mp4").is_file():
        pytest.skip(f"no sample clips at {VIDEO}")
    return VIDEO


def test_every_frame_has_its_container_time_one_track_and_smoothed_scores(clips: Path) -> None:
    rows = analyze(clips / "single_face.mp4", config=QUIET)
    assert len(rows) == 72 and list(rows["frame"]) == list(range(72))
    assert rows["time_s"].iloc[0] == 0.0
    np.testing.assert_allclose(np.diff(rows["time_s"]), 1 / 30, atol=2e-3)
    assert set(rows["track_id"]) == {0} and (rows["face_px"] > 100).all()
    classes = list(FERPLUS_EMOTIONS)
    assert set(classes) <= set(rows.columns)
    np.testing.assert_allclose(rows[[f"smooth_{c}" for c in classes]].sum(axis=1), 1.0, atol=1e-3)
    # neutral to smiling: the smoothed label turns later than the raw one, and both turn
    raw_turn = rows.index[rows["label"] == "happiness"][0]
    smooth_turn = rows.index[rows["smooth_label"] == "happiness"][0]
    assert 0 < raw_turn < smooth_turn < 72


def test_fps_start_and_end_pick_frames_by_their_real_time(clips: Path) -> None:
    rows = analyze(
        clips / "single_face.mp4", config=AnalyzeConfig(fps=10, start_s=0.5, end_s=2.0, progress=False)
    )
    times = rows["time_s"].to_numpy()
    assert times[0] >= 0.5 - 1e-6 and times[-1] <= 2.0 and 14 <= len(rows) <= 16
    assert (np.diff(times) >= 0.1 - 1e-6).all()
    np.testing.assert_allclose(times * 30, np.round(times * 30), atol=0.05)  # frame times, not a grid


def test_frames_and_photos_without_faces_get_an_empty_row(
    clips: Path, photos_dir: Path, tmp_path: Path
) -> None:
    rows = analyze(clips / "no_face.mp4", config=QUIET)
    frames = sorted(rows["frame"].unique())  # every decoded frame is in the table, face or not
    assert frames == list(range(len(frames))) and len(frames) >= 90
    empty = rows[rows["face"] == -1]
    assert len(empty) == len(frames) and (empty["track_id"] == -1).all()
    assert (empty["label"] == "").all() and empty["happiness"].isna().all()
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    first = sorted(photos_dir.glob("*.jpg"))[0]
    shutil.copy(first, folder / "nested" / first.name)
    Image.fromarray(np.full((120, 120, 3), 90, np.uint8)).save(folder / "wall.png")
    photos = analyze(folder, config=QUIET).set_index("source")
    assert photos.loc[str(folder / "wall.png"), "face"] == -1
    face = photos.loc[str(folder / "nested" / first.name)]
    assert face["face"] == 0 and face["label"] in face.index and face["w"] > 0


def test_the_group_photo_gives_its_five_faces_once_each(clips: Path) -> None:
    from ferflow.faces import box_overlaps

    rows = analyze(clips / "multi_face.jpg", config=QUIET)
    boxes = list(rows[["x", "y", "w", "h"]].itertuples(index=False))
    assert len(boxes) == 5 and list(rows["face"]) == [0, 1, 2, 3, 4]
    assert all(box_overlaps(a, b)[1] < 0.2 for a, b in itertools.combinations(boxes, 2))


def test_a_photo_pasted_into_a_video_keeps_the_photos_label(photos_dir: Path, tmp_path: Path) -> None:
    """A confident photo shown for 2 s between 1 s of empty wall: every frame that shows it
    gets the photo's own label, and no other frame gets a face."""
    import cv2

    photos = analyze(sorted(photos_dir.glob("*.jpg")), config=QUIET)
    classes = [c for c in FERPLUS_EMOTIONS if c in photos.columns]
    confident = photos[photos[classes].max(axis=1) >= 0.9].iloc[0]
    picture = cv2.resize(cv2.imread(str(confident["source"])), (300, 300))
    clip = tmp_path / "pasted.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 360))
    for i in range(100):  # frames 25-74 (1.0-3.0 s) show the photo
        frame = np.full((360, 640, 3), 128, np.uint8)
        if 25 <= i < 75:
            frame[30:330, 170:470] = picture
        writer.write(frame)
    writer.release()
    rows = analyze(clip, config=QUIET)
    shown = rows[rows["face"] >= 0]
    assert set(shown["frame"]) <= set(range(25, 75)) and shown["frame"].min() <= 27
    assert shown["track_id"].nunique() == 1
    assert (shown["label"] == confident["label"]).mean() >= 0.95, shown["label"].value_counts()
    assert (shown["smooth_label"] == confident["label"]).all()


def test_a_track_survives_a_short_miss_and_not_a_long_one() -> None:
    tracker = Tracker(min_iou=0.3, max_gap_s=0.5)
    box, other = (10.0, 10.0, 50.0, 50.0), (200.0, 10.0, 50.0, 50.0)
    assert tracker.update([box, other], 0.0) == [0, 1]
    assert tracker.update([other, (12.0, 11.0, 50.0, 50.0)], 0.1) == [1, 0]  # order does not matter
    assert tracker.update([], 0.3) == []
    assert tracker.update([box], 0.5) == [0]  # 0.4 s unseen: the same person
    assert tracker.update([box], 1.2) == [2]  # 0.7 s unseen: a new track


def test_outputs_by_extension_and_bad_options(clips: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ferflow.cli import app

    rows = [{"source": "a", "face": 0, "happiness": 0.5}, {"source": "b", "face": -1, "happiness": None}]
    for suffix in (".csv", ".parquet", ".jsonl"):
        written = write_rows(rows, tmp_path / f"out{suffix}")
        back = (
            pd.read_json(written, lines=True)
            if suffix == ".jsonl"
            else getattr(pd, f"read_{suffix[1:]}")(written)
        )
        assert len(back) == 2 and list(back["source"]) == ["a", "b"]
    with pytest.raises(FootageError, match=r"use \.csv, \.parquet or \.jsonl"):
        write_rows(rows, tmp_path / "out.xlsx")

    out = tmp_path / "clip.csv"
    res = CliRunner().invoke(
        app, ["analyze", str(clips / "single_face.mp4"), "--out", str(out), "--smooth", "soon"]
    )
    assert res.exit_code == 2 and "--smooth 'soon'" in res.output


def test_cli_writes_the_table_and_the_python_api_matches_it(clips: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import ferflow
    from ferflow.cli import app

    out = tmp_path / "clip.jsonl"
    res = CliRunner().invoke(
        app, ["analyze", str(clips / "single_face.mp4"), "--out", str(out), "--fps", "5"]
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    api = ferflow.analyze(clips / "single_face.mp4", config=AnalyzeConfig(fps=5, progress=False))
    assert len(lines) == len(api) and [r["label"] for r in lines] == list(api["label"])


def test_summary_and_timeline_plot_per_track(clips: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ferflow.cli import app

    summary, plots = tmp_path / "summary.json", tmp_path / "plots"
    args = ["analyze", str(clips / "single_face.mp4"), "--out", str(tmp_path / "t.csv")]
    res = CliRunner().invoke(app, [*args, "--summary", str(summary), "--window", "1", "--plot", str(plots)])
    assert res.exit_code == 0, res.output
    ((key, track),) = json.loads(summary.read_text()).items()
    assert key.endswith("single_face.mp4#0") and track["seconds"] == pytest.approx(72 / 30, abs=0.01)
    assert sum(track["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert [w["start_s"] for w in track["windows"]] == [0.0, 1.0, 2.0]
    # neutral to smiling: the last onset is the smile, and it is the last window's emotion
    assert track["onsets"][0] == {"time_s": 0.0, "emotion": "neutral"}
    assert track["onsets"][-1]["emotion"] == "happiness" == track["windows"][-1]["dominant"]
    (png,) = plots.glob("*.png")
    assert png.name == "single_face_track0.png" and png.stat().st_size > 20_000


def test_detecting_every_third_frame_keeps_the_labels_and_sees_a_cut_within_two_frames(clips: Path) -> None:
    every = analyze(clips / "single_face.mp4", config=AnalyzeConfig(detect_every=1, progress=False))
    third = analyze(clips / "single_face.mp4", config=QUIET)
    assert third["detected"].sum() == 24 and (third["frame"][third["detected"]] % 3 == 0).all()
    assert (every["label"] == third["label"]).mean() >= 0.95
    cut_every = analyze(clips / "face_noface.mov", config=AnalyzeConfig(detect_every=1, progress=False))
    cut_third = analyze(clips / "face_noface.mov", config=QUIET)
    cut = cut_every.loc[cut_every["face"] == -1, "frame"].min()
    assert cut > 0
    assert cut_third.loc[(cut_third["face"] == -1) & (cut_third["frame"] >= cut), "frame"].min() <= cut + 2


def test_annotate_writes_the_video_with_boxes_and_refuses_several_videos(clips: Path, tmp_path: Path) -> None:
    import cv2
    from typer.testing import CliRunner

    from ferflow.cli import app

    drawn = tmp_path / "drawn.mp4"
    args = [
        "analyze",
        str(clips / "single_face.mp4"),
        "--out",
        str(tmp_path / "t.csv"),
        "--annotate",
        str(drawn),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    boxes = pd.read_csv(tmp_path / "t.csv")
    capture = cv2.VideoCapture(str(drawn))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 72
    ok, frame = capture.read()
    x, y, w = (int(boxes.loc[0, k]) for k in ("x", "y", "w"))
    green = frame[y, x + w // 2]  # the top edge of the first box
    assert ok and green[1] > 150 and green[0] < 100 and green[2] < 100, green
    assert not list(tmp_path.glob(".drawn*"))
    two = [
        "analyze",
        str(clips / "single_face.mp4"),
        str(clips / "no_face.mp4"),
        "--out",
        str(tmp_path / "u.csv"),
    ]
    res = CliRunner().invoke(app, [*two, "--annotate", str(tmp_path / "x.mp4")])
    assert res.exit_code == 2 and "draws one video" in res.output and not (tmp_path / "u.csv").exists()


def _mjpeg(path: Path, size: tuple[int, int], frames: int) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 40 * i, np.uint8))
    writer.release()
    return path


def _bad_video(kind: str, tmp_path: Path, clips: Path) -> Path:
    """A real file of each kind of bad video, made here."""
    import wave

    path = tmp_path / f"{kind}.avi"
    if kind == "text":
        (path := tmp_path / "notes.mp4").write_text("not a video")
    elif kind == "truncated":
        (path := tmp_path / "cut.mp4").write_bytes((clips / "single_face.mp4").read_bytes()[:4000])
    elif kind == "audio":
        with wave.open(str(path := tmp_path / "voice.mp4"), "wb") as sound:  # a WAV renamed .mp4
            sound.setnchannels(1), sound.setsampwidth(2), sound.setframerate(8000)
            sound.writeframes(bytes(16000))
    elif kind == "zero_frames":
        _mjpeg(path, (64, 64), 0)
    elif kind == "codec":  # a stream whose codec tag no FFmpeg decoder claims
        path.write_bytes(_mjpeg(tmp_path / "ok.avi", (96, 64), 3).read_bytes().replace(b"MJPG", b"ZQZQ"))
    elif kind == "huge":
        _mjpeg(path, (8000, 6000), 1)
    elif kind == "tiny":
        _mjpeg(path, (8, 8), 3)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text", "not a readable video"),
        ("truncated", "not a readable video"),
        ("audio", "no video stream (the file holds audio)"),
        ("zero_frames", "holds no frames"),
        ("codec", "codec is not supported"),
        ("huge", "8000x6000 are over the limit"),
        ("tiny", "8x8 are too small"),
    ],
)
def test_each_bad_video_is_a_one_line_error_naming_it_and_nothing_is_written(
    kind: str, message: str, clips: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ferflow.cli import app

    bad = _bad_video(kind, tmp_path, clips)
    out = tmp_path / "rows.csv"
    res = CliRunner().invoke(app, ["analyze", str(bad), "--out", str(out)])
    assert res.exit_code == 2, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert str(bad) in line and message in line, res.output
    assert not out.exists() and not list(tmp_path.glob(".rows.csv.*"))


def test_a_folder_of_mixed_files_warns_per_skipped_file_and_exits_1_on_failures(
    clips: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ferflow.cli import app

    folder = tmp_path / "mixed"
    (folder / "session").mkdir(parents=True)
    shutil.copy(clips / "multi_face.jpg", folder / "group.jpg")
    shutil.copy(clips / "single_face.mp4", folder / "session" / "clip.mp4")
    junk = [folder / "notes.txt", folder / "broken.jpg", folder / "session" / "broken.mp4"]
    for path in junk:
        path.write_text("junk")
    out = tmp_path / "rows.csv"
    res = CliRunner().invoke(app, ["analyze", str(folder), "--out", str(out)])
    assert res.exit_code == 1, res.output
    warned = [ln for ln in res.output.splitlines() if ln.startswith(f"warning: {folder}")]
    assert len(warned) == 3 and all(any(str(j) in w for w in warned) for j in junk), res.output
    assert "2 photo(s) or video(s) failed" in res.output  # notes.txt is skipped, not failed
    for path in junk[1:]:
        path.unlink()
    res = CliRunner().invoke(app, ["analyze", str(folder), "--out", str(out)])
    assert res.exit_code == 0 and "notes.txt: skipped" in res.output, res.output
    rows = pd.read_csv(out)
    assert set(rows["source"]) == {str(folder / "group.jpg"), str(folder / "session" / "clip.mp4")}
    for path in (folder / "group.jpg", folder / "session" / "clip.mp4"):
        path.unlink()
    for path in junk[1:]:
        path.write_text("junk")
    res = CliRunner().invoke(app, ["analyze", str(folder), "--out", str(tmp_path / "none.csv")])
    assert res.exit_code == 2 and "none of the 2 photos and videos" in res.output
    assert not (tmp_path / "none.csv").exists()


class SyntheticCamera:
    """A 640x480 live source made of a real clip's frames, ending after ``frames`` reads, or
    raising KeyboardInterrupt there (Ctrl-C) with ``interrupt``."""

    def __init__(self, clip: Path, frames: int, interrupt: bool = False) -> None:
        import cv2

        self.capture, self.left, self.interrupt = cv2.VideoCapture(str(clip)), frames, interrupt

    def read(self):
        import cv2

        if self.left == 0:
            if self.interrupt:
                raise KeyboardInterrupt
            return False, None
        self.left -= 1
        ok, frame = self.capture.read()
        return ok, cv2.resize(frame, (640, 480)) if ok else None


def test_a_live_source_streams_tracked_rows_until_it_ends_or_ctrl_c(clips: Path) -> None:
    from ferflow.footage import _recognizer, live_rows

    recognizer = _recognizer(None)
    rows = list(live_rows("camera:test", SyntheticCamera(clips / "single_face.mp4", 30), recognizer, QUIET))
    assert [r["frame"] for r in rows] == list(range(30))
    assert all(b["time_s"] > a["time_s"] for a, b in itertools.pairwise(rows))
    assert {r["track_id"] for r in rows} == {0} and all(r["smooth_label"] for r in rows)
    stopped = live_rows(
        "camera:test", SyntheticCamera(clips / "single_face.mp4", 9, interrupt=True), recognizer, QUIET
    )
    assert len(list(stopped)) == 9  # Ctrl-C ends the session; the rows so far are kept


def test_cli_webcam_without_a_camera_is_a_one_line_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ferflow.cli import app

    res = CliRunner().invoke(app, ["analyze", "--webcam", "7", "--out", str(tmp_path / "live.csv")])
    assert res.exit_code == 2 and "camera 7: not available" in res.output
    assert not (tmp_path / "live.csv").exists()
    res = CliRunner().invoke(app, ["analyze", "--out", str(tmp_path / "live.csv")])
    assert res.exit_code == 2 and "give INPUTS" in res.output
