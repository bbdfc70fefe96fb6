"""ccrcc_grade.io.images: exported slice images and what is refused."""

from __future__ import annotations

import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.io.images import read_gray


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + chunk(b"IEND", b"")
    )


def test_gray_reader_rgb_and_truncated(tmp_path):
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_gray(tmp_path / "rgb.png")[0, 0] == 76  # ITU-R 601 luma of pure red
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "g.bmp")
    assert read_gray(tmp_path / "g.bmp")[7, 7] == 63
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(tmp_path / "full.png")
    b = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(b[: len(b) - 30])
    with pytest.raises(CcrccError, match=r"cut\.png: unreadable or truncated image"):
        read_gray(tmp_path / "cut.png")


def test_decompression_bomb_image(refused, slices_cohort, tmp_path, capsys):
    c = tmp_path / "c"
    shutil.copytree(slices_cohort, c)
    j = sorted((c / "SYN002" / "plain").glob("*.json"))[0]  # an annotated slice: it is decoded
    img = j.parent / json.loads(j.read_text())["imagePath"]
    img.write_bytes(_png_header(20000, 20000))
    refused(capsys, ["ingest", c, "--out", tmp_path / "w"], img.name, "decompression bomb")
