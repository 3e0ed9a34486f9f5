"""Image decoding and URL fetching: every bad input is a 4xx PrismError, never a crash."""

from __future__ import annotations

import base64
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from prism.backends._errors import InvalidImage, InvalidInput, PayloadTooLarge, PrismError
from prism.backends._images import decode_base64_image, fetch_image, is_public_address, load_image
from tests.backends.conftest import png_bytes

RGB = Image.new("RGB", (40, 30), (200, 30, 30))


# --- base64 ---------------------------------------------------------------------------------


def test_base64_forms_decode_to_the_same_bytes() -> None:
    data = png_bytes(RGB)
    plain = base64.b64encode(data).decode()
    assert decode_base64_image(plain) == data
    assert decode_base64_image("data:image/png;base64," + plain) == data
    assert decode_base64_image(plain.rstrip("=")) == data  # padding optional
    assert decode_base64_image(base64.urlsafe_b64encode(data).decode()) == data
    wrapped = "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76))
    assert decode_base64_image(wrapped) == data  # MIME line breaks


@pytest.mark.parametrize("text", ["", "   ", "not base64!", "abc$def", "data:image/png,rawbytes"])
def test_non_base64_is_invalid_image(text: str) -> None:
    with pytest.raises(InvalidImage) as info:
        decode_base64_image(text)
    assert info.value.status_code == 422
    assert info.value.errors and info.value.errors[0].path == "image.base64"


# --- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_supported_formats_decode(fmt: str) -> None:
    image = load_image(png_bytes(RGB, fmt), max_pixels=10_000)
    assert image.size == (40, 30)
    assert np.asarray(image.convert("RGB"))[5, 5, 0] > 150


def test_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = png_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = np.asarray(load_image(data, max_pixels=100).convert("RGB"))[1, 1]
    assert first[0] > 200 and first[2] < 50


def test_modes_are_kept_for_open_clips_transform() -> None:
    assert load_image(png_bytes(Image.new("RGBA", (4, 4))), max_pixels=100).mode == "RGBA"
    assert load_image(png_bytes(Image.new("L", (4, 4))), max_pixels=100).mode == "L"
    assert load_image(png_bytes(Image.new("I;16", (4, 4))), max_pixels=100).mode == "RGB"


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"GIF89a\x00"],
    ids=["empty", "text", "png-magic-only", "gif-header-only"],
)
def test_undecodable_bytes_are_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        load_image(data, max_pixels=10_000)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_images_are_invalid_image(fmt: str) -> None:
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")  # noise: no tiny compressed body
    data = png_bytes(noisy, fmt)
    with pytest.raises(InvalidImage):
        load_image(data[: len(data) // 2], max_pixels=10_000)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PPM"])
def test_unsupported_formats_are_refused(fmt: str) -> None:
    with pytest.raises(InvalidImage, match="unsupported image format"):
        load_image(png_bytes(RGB, fmt), max_pixels=10_000)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that *declares* width x height but carries almost no data: a bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidImage, match="over the limit"):
        load_image(png_bytes(RGB), max_pixels=40 * 30 - 1)
    bomb = _png_header_only(60_000, 60_000)  # 3.6 gigapixels = 10.8 GB if decoded
    started = time.perf_counter()
    with pytest.raises(InvalidImage, match="pixels"):
        load_image(bomb, max_pixels=40_000_000)
    # PIL's own guard (DecompressionBombError) too, when our limit is set above it
    with pytest.raises(InvalidImage, match="pixels"):
        load_image(bomb, max_pixels=10**12)
    assert time.perf_counter() - started < 1.0  # refused from the header, nothing decoded


# --- URL fetching: refusals -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("https://images.example.com/a.png", []),  # URL inputs off
        ("https://evil.example.com/a.png", ["images.example.com"]),  # unlisted host
        ("https://images.example.com.evil.net/a.png", ["images.example.com"]),
        ("ftp://images.example.com/a.png", ["images.example.com"]),
        ("file:///etc/passwd", ["images.example.com"]),
        ("https://user:pw@images.example.com/a.png", ["images.example.com"]),
        ("http://localhost:8080/a.png", ["localhost"]),  # loopback after resolution
        ("http://127.0.0.1/a.png", ["127.0.0.1"]),
        ("http://[::1]/a.png", ["::1"]),
        ("http://10.1.2.3/a.png", ["10.1.2.3"]),  # private
        ("http://192.168.0.10/a.png", ["192.168.0.10"]),
        ("http://172.16.5.5/a.png", ["172.16.5.5"]),
        ("http://169.254.169.254/latest/meta-data", ["169.254.169.254"]),  # link-local
        ("http://0.0.0.0/a.png", ["0.0.0.0"]),
        ("http://[::ffff:127.0.0.1]/a.png", ["::ffff:127.0.0.1"]),
        ("http://a..example.com/a.png", ["*.example.com"]),  # empty label: not resolvable
        ("http://" + "a" * 300 + ".example.com/a.png", ["*.example.com"]),  # label too long
    ],
)
async def test_fetch_refusals(url: str, allow: list[str]) -> None:
    with pytest.raises(InvalidInput) as info:
        await fetch_image(url, allow_hosts=allow, max_bytes=1000, timeout_s=2)
    assert 400 <= info.value.status_code < 500
    assert info.value.errors[0].path == "image.url"


def test_public_address_classification() -> None:
    assert is_public_address("8.8.8.8") and is_public_address("2606:4700::1111")
    for address in ["127.0.0.1", "10.0.0.1", "172.31.1.1", "192.168.1.1", "169.254.1.1",
                    "::1", "fe80::1", "fc00::1", "224.0.0.1", "0.0.0.0", "100.64.0.1"]:  # fmt: skip
        assert not is_public_address(address), address


# --- URL fetching against a real loopback server (allow_private: a private image server) ------


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = png_bytes(RGB)
        if self.path == "/img.png":
            self._send(200, body, {"Content-Type": "image/png"})
        elif self.path == "/big":
            self._send(200, b"x" * 5000, {})
        elif self.path == "/big-chunked":  # no Content-Length: the limit applies while reading
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/slow":
            time.sleep(1.5)
            self._send(200, body, {})
        elif self.path == "/hop":
            self._send(302, b"", {"Location": "/img.png"})
        elif self.path == "/away":
            self._send(302, b"", {"Location": "http://not-allowed.example/x.png"})
        elif self.path == "/loop":
            self._send(302, b"", {"Location": "/loop"})
        else:
            self._send(404, b"nope", {})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def _fetch(url: str, **kw: object) -> bytes:
    options: dict[str, object] = {"max_bytes": 2000, "timeout_s": 1.0, "allow_private": True}
    options.update(kw)
    return await fetch_image(url, allow_hosts=["localhost"], **options)  # type: ignore[arg-type]


async def test_fetch_from_an_allowed_private_server(image_server: str) -> None:
    assert await _fetch(f"{image_server}/img.png") == png_bytes(RGB)
    assert await _fetch(f"{image_server}/hop") == png_bytes(RGB)  # same-host redirect
    # the same server, without allow_private: loopback is refused
    with pytest.raises(InvalidInput, match="non-public"):
        await _fetch(f"{image_server}/img.png", allow_private=False)


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/big", PayloadTooLarge),
        ("/big-chunked", PayloadTooLarge),
        ("/slow", InvalidImage),
        ("/missing", InvalidImage),
        ("/away", InvalidInput),
        ("/loop", InvalidInput),
    ],
)
async def test_fetch_limits(image_server: str, path: str, error: type[PrismError]) -> None:
    with pytest.raises(error) as info:
        await _fetch(image_server + path)
    assert 400 <= info.value.status_code < 500
