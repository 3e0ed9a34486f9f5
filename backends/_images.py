"""Safe image input: base64 decoding, bounded PIL decoding, and opt-in URL fetching.

Every failure is a caller's mistake and becomes a 4xx :class:`PrismError`: undecodable,
truncated or unsupported images and non-base64 text are :class:`InvalidImage` (422); a URL
outside the allow-list or resolving to a non-public address is :class:`InvalidInput` (422); a
download over its size limit is :class:`PayloadTooLarge` (413).

Decompression bombs are refused from the header: PIL's ``Image.open`` reads only the header,
so the pixel count is checked before ``load()`` decodes anything.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
import warnings
from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from ._errors import FieldError, InvalidImage, InvalidInput, PayloadTooLarge

#: what callers may send (GIF and animated WebP: the first frame is used)
SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF"})
#: modes open_clip's transform handles as they are; others (I;16, CMYK, ...) become RGB first
_PASSTHROUGH_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "1"})


def decode_base64_image(data: str) -> bytes:
    """The bytes of a base64 string (standard or URL-safe alphabet, padding optional).

    A ``data:image/...;base64,`` prefix is accepted; whitespace (MIME line breaks) is ignored.
    Raises :class:`InvalidImage` when ``data`` is not base64.
    """
    text = data.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidImage(
                "a data URL must be base64-encoded (data:image/png;base64,...)",
                errors=[FieldError("image.base64", "not a base64 data URL")],
            )
    text = "".join(text.split())
    if not text:
        raise InvalidImage("the image is empty", errors=[FieldError("image.base64", "empty")])
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(
            "the image is not valid base64",
            errors=[FieldError("image.base64", "not valid base64")],
        ) from exc


def load_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode one image (PNG, JPEG, WebP or GIF's first frame), refusing bombs and broken files.

    ``max_pixels`` bounds width x height; it is checked from the header, before decoding.
    The image keeps its mode (RGB, RGBA, L, P...), so open_clip's own transform sees exactly
    what it would see from ``Image.open``; exotic modes (I;16, CMYK...) are converted to RGB.
    """
    if not data:
        raise InvalidImage("the image is empty")
    try:
        # PIL warns between its own two limits; our max_pixels check below decides instead
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"the image has too many pixels (limit {max_pixels})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage("the image cannot be decoded (not a PNG, JPEG, WebP or GIF)") from exc
    if image.format not in SUPPORTED_FORMATS:
        raise InvalidImage(f"unsupported image format {image.format}; send PNG, JPEG, WebP or GIF")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidImage(
            f"the image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels}"
        )
    try:
        image.load()  # the real decode: truncated or corrupt data fails here
        if image.mode not in _PASSTHROUGH_MODES:
            image = image.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"the image has too many pixels (limit {max_pixels})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage("the image is truncated or corrupt") from exc
    return image


# --- URL fetching (off unless a spec lists hosts) ---------------------------------------------


def _host_allowed(host: str, allow_hosts: Sequence[str]) -> bool:
    """Exact host names (case-insensitive), or ``*.example.com`` for any subdomain."""
    host = host.lower().rstrip(".")
    for pattern in allow_hosts:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
        if host == pattern:
            return True
    return False


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(message, errors=[FieldError("image.url", message)])


def check_url(url: str, allow_hosts: Sequence[str]) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an allowed http(s) URL; raises :class:`InvalidInput`."""
    if not allow_hosts:
        raise _refuse("image URLs are not accepted here; send the image as base64")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _refuse("the image URL is malformed") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refuse("the image URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise _refuse("the image URL must not carry credentials")
    if not _host_allowed(parts.hostname, allow_hosts):
        raise _refuse(f"host {parts.hostname!r} is not in this model's allowed image hosts")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def is_public_address(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved and unspecified addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return ip.is_global and not ip.is_multicast


async def _resolve(host: str, port: int, allow_private: bool) -> str:
    """One address of ``host``, after checking that *every* address it resolves to is public."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # UnicodeError: an empty or over-long label
        raise _refuse(f"the image host {host!r} cannot be resolved") from exc
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise _refuse(f"the image host {host!r} cannot be resolved")
    if not allow_private:
        for address in addresses:
            if not is_public_address(address):
                raise _refuse(f"the image host {host!r} resolves to a non-public address")
    return addresses[0]


async def fetch_image(
    url: str,
    *,
    allow_hosts: Sequence[str],
    max_bytes: int = 10_000_000,
    timeout_s: float = 5.0,
    max_redirects: int = 3,
    allow_private: bool = False,
) -> bytes:
    """Download an image from an allowed host, within ``max_bytes`` and ``timeout_s`` overall.

    The host must be listed in ``allow_hosts``, and every address it resolves to must be
    public (unless ``allow_private``, meant for tests and private image servers). The
    connection goes to the address that was checked (Host header and TLS SNI keep the name),
    so a DNS answer that changes between check and connect cannot reach an internal address.
    Redirects are followed up to ``max_redirects`` times, each hop checked the same way.
    """
    try:
        async with (
            asyncio.timeout(timeout_s),
            httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=timeout_s) as client,
        ):
            for _ in range(max_redirects + 1):
                scheme, host, port = check_url(url, allow_hosts)
                address = await _resolve(host, port, allow_private)
                pinned = httpx.URL(url).copy_with(host=address)
                default_port = 443 if scheme == "https" else 80
                headers = {"Host": host if port == default_port else f"{host}:{port}"}
                extensions = {"sni_hostname": host} if scheme == "https" else {}
                request = client.build_request(
                    "GET", pinned, headers=headers, extensions=extensions
                )
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise InvalidImage(
                            f"the image URL answered HTTP {response.status_code}",
                            errors=[FieldError("image.url", "not fetchable")],
                        )
                    return await _read_limited(response, max_bytes)
                finally:
                    await response.aclose()
            raise _refuse(f"the image URL redirected more than {max_redirects} times")
    except TimeoutError as exc:
        raise InvalidImage(
            f"fetching the image URL took longer than {timeout_s} s",
            errors=[FieldError("image.url", "timed out")],
        ) from exc
    except httpx.HTTPError as exc:
        raise InvalidImage(
            f"the image URL could not be fetched ({type(exc).__name__})",
            errors=[FieldError("image.url", "not fetchable")],
        ) from exc


async def _read_limited(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the image at the URL is over {max_bytes} bytes")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:  # the header may lie or be absent
            raise PayloadTooLarge(f"the image at the URL is over {max_bytes} bytes")
    return bytes(body)
