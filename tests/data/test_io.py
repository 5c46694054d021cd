import cv2
import numpy as np
import pytest

from ood_det.data.io import ImageReadError, read_image, try_read_image


def test_png_is_read_as_rgb(tmp_path):
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 30  # B, G, R
    cv2.imwrite(str(tmp_path / "x.png"), bgr)
    img = read_image(tmp_path / "x.png")
    assert img.dtype == np.uint8 and img.shape == (5, 7, 3)
    assert img[0, 0].tolist() == [30, 20, 10]
    assert img.flags["C_CONTIGUOUS"]


def test_grey_and_rgba_become_three_channels(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    img = read_image(tmp_path / "g.png")
    assert img.shape == (3, 4, 3)
    np.testing.assert_array_equal(img[..., 0], grey)
    np.testing.assert_array_equal(img[..., 2], grey)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 200, 255  # red in BGRA
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 0]


@pytest.mark.parametrize("content,reason", [(None, "no such file"), (b"", "empty"),
                                            (b"not an image at all", "not a decodable image")])
def test_bad_files_raise_naming_the_file(tmp_path, content, reason):
    p = tmp_path / "bad.jpg"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert str(p) in str(e.value) and reason in str(e.value)
    assert e.value.path == str(p)
    assert isinstance(e.value, OSError)


def test_truncated_jpeg_is_refused(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    (tmp_path / "full.jpg").write_bytes(buf.tobytes())
    (tmp_path / "cut.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
    assert read_image(tmp_path / "full.jpg").shape == (64, 64, 3)
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        read_image(tmp_path / "cut.jpg")


def test_jpeg_tail_and_thumbnail_markers(tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    (tmp_path / "tail.jpg").write_bytes(jpg + b"\x00" * 5000)  # bytes after the end marker are fine
    assert read_image(tmp_path / "tail.jpg").shape == (32, 48, 3)
    # an application segment holding FF D9 (as an EXIF thumbnail does) before the scan
    payload = b"thumb\xff\xd8\x00\xff\xd9"
    app = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    full = jpg[:2] + app + jpg[2:]
    (tmp_path / "app.jpg").write_bytes(full)
    np.testing.assert_array_equal(read_image(tmp_path / "app.jpg"), read_image(tmp_path / "tail.jpg"))
    (tmp_path / "app_cut.jpg").write_bytes(full[: len(full) - 200])
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        read_image(tmp_path / "app_cut.jpg")
    (tmp_path / "header_cut.jpg").write_bytes(full[:40])
    with pytest.raises(ImageReadError, match="app_cut|header_cut"):
        read_image(tmp_path / "header_cut.jpg")


def test_directory_and_try_read(tmp_path, caplog):
    with pytest.raises(ImageReadError, match=str(tmp_path)):
        read_image(tmp_path)
    assert try_read_image(tmp_path / "missing.png") is None
    assert "missing.png" in caplog.text
