"""Uploads: formats, pixel limits read from the header before decoding, and broken files, each with a clear message."""

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from backend.errors import ExplorerError
from ui.uploads import MAX_PIXELS, NOT_AN_IMAGE, open_upload


def png_bytes(width=8, height=8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims width × height pixels (its CRC recomputed, so only the size lies)."""
    data = bytearray(png_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def write(tmp_path, name, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_supported_formats_open_as_rgb(tmp_path, fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (10, 200, 10)).save(buffer, fmt)
    image = open_upload(write(tmp_path, f"a.{fmt.lower()}", buffer.getvalue()))
    assert image.mode == "RGB" and image.size == (20, 10)


BROKEN = {
    "empty": b"",
    "random bytes": bytes(range(256)) * 4,
    "text": b"hello, this is not an image\n",
    "truncated PNG": png_bytes(64, 64)[:60],
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_uploads_get_one_clear_message(tmp_path, case):
    with pytest.raises(ExplorerError) as err:
        open_upload(write(tmp_path, "upload.png", BROKEN[case]))
    assert str(err.value) == NOT_AN_IMAGE


def test_other_image_formats_are_refused(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF")
    with pytest.raises(ExplorerError, match="PNG, JPEG"):
        open_upload(write(tmp_path, "a.tiff", buffer.getvalue()))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", [(60000, 60000), (10000, 10000), (4097, 4096)])
def test_images_over_the_pixel_limit_are_refused_from_their_header(tmp_path, size):
    path = write(tmp_path, "big.png", png_declaring(*size))
    with pytest.raises(ExplorerError, match="pixels") as err:
        open_upload(path)
    assert "scale it down" in str(err.value).lower()


def test_the_largest_allowed_image_is_read(tmp_path):
    side = int(MAX_PIXELS**0.5)
    assert open_upload(write(tmp_path, "edge.png", png_bytes(side, side))).size == (side, side)


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    from tests.test_ui_api import app_url
    from tests.test_ui_handlers import one_thread

    with one_thread():
        yield Client(app_url(), verbose=False)


# each upload endpoint's arguments after the file: no prompt, then an edit of latents 3 and 5 everywhere, or latent 3 added
UPLOAD_ENDPOINTS = {
    "/inspect_upload": ("",),
    "/edit_upload": ("", 0, 5, None, "3, 5", False, "(none)", "", "everywhere", 6, False),
    "/steer_upload": ("", 0, 5, "everywhere", [], "3", 0.5, "add"),
}


@pytest.mark.parametrize("endpoint", sorted(UPLOAD_ENDPOINTS))
@pytest.mark.parametrize("case", ["random bytes", "empty", "truncated PNG"])
def test_served_broken_uploads_get_the_message(client, tmp_path, case, endpoint):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not an image this app can read"):
        client.predict(handle_file(write(tmp_path, "upload.png", BROKEN[case])), *UPLOAD_ENDPOINTS[endpoint], api_name=endpoint)


@pytest.mark.parametrize("endpoint", sorted(UPLOAD_ENDPOINTS))
def test_served_uploads_over_the_size_limit_are_refused_and_a_good_one_works_after(client, tmp_path, endpoint):
    from gradio_client import handle_file

    big = write(tmp_path, "big.png", png_bytes() + b"\0" * (17 * 2**20))
    with pytest.raises(Exception, match="(?i)size|large"):
        client.predict(handle_file(big), *UPLOAD_ENDPOINTS[endpoint], api_name=endpoint)
    image, *rest = client.predict(handle_file(write(tmp_path, "ok.png", png_bytes(16, 16))), *UPLOAD_ENDPOINTS[endpoint], api_name=endpoint)
    assert Path(image).is_file() and len(rest) == {"/inspect_upload": 2, "/edit_upload": 5, "/steer_upload": 3}[endpoint]
    assert endpoint != "/inspect_upload" or rest[0]["headers"] == ["latent", "label", "sum", "max", "kind"]


def test_multi_picture_jpegs_from_phones_are_read(tmp_path):
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (12, 8), (200, 30, 30)), Image.new("RGB", (12, 8), (30, 30, 200))]
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    path = write(tmp_path, "phone.jpg", buffer.getvalue())
    assert Image.open(path).format == "MPO"
    assert open_upload(path).size == (12, 8)


@pytest.mark.parametrize("value", [{"path": "x"}, 7, ["a.png"]])
def test_an_upload_value_that_is_no_path_gets_the_message(value):
    with pytest.raises(ExplorerError, match="not an image"):
        open_upload(value)
