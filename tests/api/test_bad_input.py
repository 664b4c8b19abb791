"""Every bad input of a feature-map request: a clear 4xx in the one error shape.

Never a 500, never a hang (the client times out). Each test names one bad input.
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import zlib
from typing import Any

import h11
import httpx
import numpy as np
from PIL import Image

from tests.api.conftest import MAX_BODY_BYTES, REQUEST_TIMEOUT

URL = "/v1/models/tiny/feature-maps"
LAYERS = {"layers": ["conv"]}


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The problem+json body of ``response``, checked against the expected status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"] == f"urn:cnnviz:error:{code}" and body["title"] and body["detail"]
    return body


def upload(http: httpx.Client, data: bytes, url: str = URL, **fields: Any) -> httpx.Response:
    return http.post(
        url,
        files={"image": ("upload", data, "application/octet-stream")},
        data={**LAYERS, **fields},
    )


def image_file(fmt: str, size: tuple[int, int] = (8, 8)) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width×height`` with no pixel data: a bomb's first bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))


def test_unknown_model(http: httpx.Client) -> None:
    response = http.post("/v1/models/resnet9000/feature-maps", json={"sample": "star", **LAYERS})
    body = problem(response, 404, "unknown_model")
    assert "'resnet9000'" in body["detail"] and "shapes" in body["detail"]


def test_unknown_layer_with_suggestions(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/shapes/feature-maps", json={"sample": "star", "layers": ["block1.cnv"]}
    )
    body = problem(response, 422, "unknown_layer")
    assert "'block1.cnv'" in body["detail"] and "'block1.conv'" in body["detail"]
    assert "GET /v1/models/shapes/layers" in body["detail"]


def test_undecodable_image(http: httpx.Client) -> None:
    body = problem(upload(http, b"GIF89a but not really" * 3), 422, "invalid_image")
    assert "PNG, JPEG, WebP, BMP or GIF" in body["detail"]


def test_truncated_image(http: httpx.Client) -> None:
    data = image_file("PNG", (64, 64))
    body = problem(upload(http, data[: len(data) // 2]), 422, "invalid_image")
    assert "truncated" in body["detail"]


def test_unsupported_image_format(http: httpx.Client) -> None:
    body = problem(upload(http, image_file("TIFF")), 422, "invalid_image")
    assert "unsupported image format TIFF" in body["detail"]


def raw_post(base_url: str, headers: dict[str, str], parts: list[bytes]) -> httpx.Response:
    """POST with h11 over a plain socket: the headers, the body ``parts``, then the answer.

    An ordinary client keeps sending a body the server has refused; the server then closes
    with bytes unread, and the kernel may reset the connection before the client reads the
    413. Here the client sends its parts and reads the answer.
    """
    url = httpx.URL(base_url)
    conn = h11.Connection(our_role=h11.CLIENT)
    request = h11.Request(method="POST", target=URL, headers=[("Host", url.host), *headers.items()])
    with socket.create_connection((url.host, url.port), timeout=REQUEST_TIMEOUT) as sock:
        sock.sendall(conn.send(request))
        for part in parts:
            sock.sendall(conn.send(h11.Data(data=part)))
        if parts:
            sock.sendall(conn.send(h11.EndOfMessage()))
        response: h11.Response | None = None
        content = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                content += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    assert response is not None, "no response"
    return httpx.Response(response.status_code, headers=response.headers, content=content)


def test_body_over_the_byte_limit_with_content_length(base_url: str) -> None:
    # Only the headers are sent, as a client waiting for "100 Continue" does: the declared
    # length alone must get the 413.
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(MAX_BODY_BYTES + 1),
        "Expect": "100-continue",
    }
    body = problem(raw_post(base_url, headers, []), 413, "body_too_large")
    assert str(MAX_BODY_BYTES) in body["detail"]


def test_an_ordinary_client_sending_too_much_reads_the_413(http: httpx.Client) -> None:
    # httpx sends the whole body without waiting: the server drains it, then answers, so the
    # client reads a 413 rather than a connection reset.
    files = {"image": ("big.png", b"\0" * (3 * MAX_BODY_BYTES), "image/png")}
    response = http.post(URL, files=files, data={"layers": "block1.conv"})
    problem(response, 413, "body_too_large")


def test_body_over_the_byte_limit_chunked(base_url: str) -> None:
    # No Content-Length: bytes are counted as they are read; the very last byte is one too many.
    parts = [b" " * 16_384] * (MAX_BODY_BYTES // 16_384) + [b" "]
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    problem(raw_post(base_url, headers, parts), 413, "body_too_large")


def test_too_many_pixels_checked_before_decoding(http: httpx.Client) -> None:
    # The pixel data is missing: a decoder would call it truncated, so 413 proves none ran.
    body = problem(upload(http, png_header_only(2000, 1000)), 413, "image_too_large")
    assert "2000×1000" in body["detail"] and "1000000" in body["detail"]


def test_decompression_bomb(http: httpx.Client) -> None:
    # 900 megapixels declared in a 60-byte file, past Pillow's own bomb limit too.
    problem(upload(http, png_header_only(30_000, 30_000)), 413, "image_too_large")


def test_channel_out_of_range(http: httpx.Client) -> None:
    response = http.post(URL, json={"sample": "star", **LAYERS, "channels": [1, 3]})
    body = problem(response, 422, "invalid_argument")
    assert "channel 3" in body["detail"] and "0..2" in body["detail"]


def test_empty_upload(http: httpx.Client) -> None:
    body = problem(upload(http, b""), 422, "invalid_image")
    assert "empty" in body["detail"]


def test_wrong_content_type(http: httpx.Client) -> None:
    response = http.post(URL, content=b"layers=conv", headers={"Content-Type": "text/plain"})
    body = problem(response, 415, "unsupported_media_type")
    assert "application/json" in body["detail"] and "multipart/form-data" in body["detail"]


def test_invalid_base64(http: httpx.Client) -> None:
    response = http.post(URL, json={"image": "not base64!", **LAYERS})
    assert "base64" in problem(response, 422, "invalid_image")["detail"]


def test_malformed_json(http: httpx.Client) -> None:
    response = http.post(URL, content=b'{"layers": [', headers={"Content-Type": "application/json"})
    problem(response, 422, "invalid_request")


def test_missing_and_conflicting_fields(http: httpx.Client) -> None:
    image = base64.b64encode(image_file("PNG")).decode()
    for payload in (
        {"sample": "star"},  # no layers
        LAYERS,  # no image
        {"sample": "star", "image": image, **LAYERS},  # two images
        {"sample": "star", "channels": [0], "top_k": 1, **LAYERS},
        {"sample": "star", "scale": 99, **LAYERS},
        {"sample": "star", "layer": "conv", **LAYERS},  # a typo
    ):
        body = problem(http.post(URL, json=payload), 422, "invalid_request")
        assert body["errors"], payload


def test_unknown_colormap_and_sample(http: httpx.Client) -> None:
    response = http.post(URL, json={"sample": "star", "colormap": "virdis", **LAYERS})
    assert "'viridis'" in problem(response, 422, "invalid_argument")["detail"]
    response = http.post(URL, json={"sample": "pentagon", **LAYERS})
    assert "triangle" in problem(response, 422, "invalid_argument")["detail"]


def test_a_text_field_where_the_file_belongs(http: httpx.Client) -> None:
    response = http.post(URL, data={"image": "picture.png", **LAYERS}, files={"x": b""})
    assert "file field" in problem(response, 422, "invalid_request")["detail"]


def test_accept_png_with_several_layers(http: httpx.Client) -> None:
    response = http.post(
        URL,
        json={"sample": "star", "layers": ["conv", "relu"]},
        headers={"Accept": "image/png"},
    )
    assert "2 layers" in problem(response, 406, "not_acceptable")["detail"]


def test_nothing_acceptable(http: httpx.Client) -> None:
    response = http.post(URL, json={"sample": "star", **LAYERS}, headers={"Accept": "text/csv"})
    problem(response, 406, "not_acceptable")


def test_a_grid_too_large_to_draw(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/shapes/feature-maps",
        json={"sample": "star", "layers": ["block1.conv"], "scale": 16, "padding": 32},
    )
    assert "over the limit" in problem(response, 422, "invalid_argument")["detail"]
