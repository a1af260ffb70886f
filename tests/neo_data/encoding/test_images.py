import io
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    smart_resize as qwen_smart_resize,
)

from neo_data.encoding.images import ImageEncoding, ImageRejected, prepare_image, smart_resize
from neo_data.manifest import STAGE_PIXELS


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 20000), st.integers(1, 20000), st.sampled_from(sorted(STAGE_PIXELS.values())))
def test_smart_resize_equals_the_qwen2_vl_peer_at_factor_32(h, w, budget):
    lo, hi = budget
    if max(h, w) / min(h, w) > 200:
        with pytest.raises(ImageRejected, match="aspect_ratio_too_extreme"):
            smart_resize(h, w, lo, hi)
        return
    got = smart_resize(h, w, lo, hi)
    if round(h / 32) and round(w / 32):  # no side rounds to 0: transformers' copy agrees there
        assert got == qwen_smart_resize(h, w, factor=32, min_pixels=lo, max_pixels=hi)
    assert got[0] % 32 == 0 and got[1] % 32 == 0 and min(got) >= 32
    assert got[0] * got[1] <= hi


def test_a_side_below_16_px_rounds_up_to_32_as_the_doc_and_qwen_vl_utils_say():
    # transformers' smart_resize rounds 15 px to 0 and then upscales the whole image;
    # the architecture doc (and qwen-vl-utils) take at least one 32 px row.
    assert smart_resize(15, 2048, 65536, 4194304) == (32, 2048)
    assert smart_resize(15, 1000, 65536, 4194304)[0] >= 32


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1))


CASES = {
    "jpeg": lambda: _encode(_gradient(300, 200), "JPEG"),
    "png": lambda: _encode(_gradient(300, 200), "PNG"),
    "webp": lambda: _encode(_gradient(300, 200), "WEBP"),
    "gif": lambda: _encode(_gradient(300, 200).convert("P"), "GIF"),
    "cmyk_jpeg": lambda: _encode(_gradient(300, 200).convert("CMYK"), "JPEG"),
    "rgba_png": lambda: _encode(_gradient(300, 200).convert("RGBA"), "PNG"),
    "grey16_png": lambda: _encode(
        Image.fromarray((np.arange(200 * 300).reshape(200, 300) % 65536).astype(np.uint16)), "PNG"
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_common_format_becomes_an_rgb_image_of_the_target_size(name):
    out = prepare_image(CASES[name](), 65536, 4194304, ImageEncoding())
    assert (out.height, out.width) == smart_resize(200, 300, 65536, 4194304)
    with Image.open(io.BytesIO(out.data)) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (out.width, out.height)


def test_exif_rotation_is_applied_before_resizing():
    img = _gradient(320, 160)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = prepare_image(_encode(img, "JPEG", exif=exif), 1024, 4194304, ImageEncoding())
    assert (out.height, out.width) == (320, 160)  # upright: taller than wide


def test_a_jpeg_already_at_its_target_size_keeps_its_bytes():
    data = _encode(_gradient(512, 256), "JPEG", quality=90)
    out = prepare_image(data, 65536, 4194304, ImageEncoding())
    assert out.data == data and (out.height, out.width) == (256, 512)


def test_a_truncated_jpeg_at_its_target_size_is_rejected_not_passed_through():
    data = _encode(_gradient(512, 256), "JPEG", quality=90)
    with pytest.raises(ImageRejected) as e:
        prepare_image(data[: len(data) * 2 // 3], 65536, 4194304, ImageEncoding())
    assert e.value.reason == "image_decode_error"


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([127 + 60 * np.sin(xx / 37 + c) * np.cos(yy / 53 - c) for c in range(3)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_jpeg_decoded_in_draft_mode_matches_the_full_decode(orientation):
    """Target at most half the source: DCT-domain downscale first, >= 40 dB against decoding
    everything and resizing (the peer: Pillow without draft), sides upright."""
    img = _photo(1600, 1200)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(img, "JPEG", quality=92, exif=exif)
    out = prepare_image(data, 1024, 256 * 256, ImageEncoding("png"))
    full = Image.open(io.BytesIO(data))
    full = ImageOps.exif_transpose(full).convert("RGB")
    assert (out.height > out.width) == (orientation == 6)
    ref = np.asarray(full.resize((out.width, out.height), Image.Resampling.BICUBIC), np.float64)
    back = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"), dtype=np.float64)
    psnr = 10 * np.log10(255**2 / ((back - ref) ** 2).mean())
    assert 40 < psnr < 80  # draft really ran (not bit-identical) and stays faithful


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(40, 900),
    h=st.integers(40, 900),
    budget=st.sampled_from([(1024, 4096), (32 * 32, 96 * 96), (96 * 64, 96 * 96), (9216, 9216)]),
)
def test_a_draft_decoded_jpeg_ends_at_the_target_of_the_full_image(w, h, budget):
    """The draft decode is smaller than the image; the result must still be the smart-resize
    target of the full image's size (a target recomputed from the draft's size rounds to
    another grid: 101x203 at 1024..4096 px drafted and came out 32x128 instead of 32x96)."""
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "JPEG")
    lo, hi = budget
    out = prepare_image(buf.getvalue(), lo, hi, ImageEncoding())
    assert (out.height, out.width) == smart_resize(h, w, lo, hi)
    with Image.open(io.BytesIO(out.data)) as im:
        assert im.size == (out.width, out.height)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_encodings_round_trip_with_high_fidelity(fmt):
    img = _gradient(640, 480)
    out = prepare_image(_encode(img, "PNG"), 65536, 4194304, ImageEncoding(fmt, 95))
    back = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"), dtype=np.float64)
    ref = np.asarray(
        img.resize((out.width, out.height), Image.Resampling.BICUBIC), dtype=np.float64
    )
    mse = ((back - ref) ** 2).mean()
    psnr = float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)
    assert psnr > 40


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "image_empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image_decode_error"),
        (b"<html>not found</html>", "image_decode_error"),
        (_encode(_gradient(64, 64), "JPEG")[:200], "image_decode_error"),
        (_encode(_gradient(4020, 10), "PNG"), "aspect_ratio_too_extreme"),
    ],
)
def test_bad_images_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected) as e:
        prepare_image(data, 65536, 4194304, ImageEncoding())
    assert e.value.reason == reason


def _png_header_only(width: int, height: int) -> bytes:
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_pixel_bomb_is_refused_before_decoding():
    with pytest.raises(ImageRejected) as e:
        prepare_image(
            _png_header_only(50000, 50000), 65536, 4194304, ImageEncoding(), max_decode_pixels=10**8
        )
    assert e.value.reason == "image_too_many_pixels"


@pytest.mark.parametrize(("value", "expected"), [(0x8040, 0x80), (200, 200)])
def test_16_bit_grey_keeps_its_top_8_bits_unless_it_fits_in_8(value, expected):
    """A 16-bit grey image becomes grey RGB of its top byte (Pillow alone would clip at 255);
    one whose values all fit in 8 bits keeps them."""
    grey = Image.fromarray(np.full((64, 64), value, dtype=np.uint16))
    out = prepare_image(_encode(grey, "PNG"), 1024, 65536, ImageEncoding("png"))
    pixels = np.asarray(Image.open(io.BytesIO(out.data)))
    assert pixels.shape == (64, 64, 3) and (pixels == expected).all()


@settings(max_examples=600, deadline=None)
@given(
    st.integers(1, 20000),
    st.integers(1, 20000),
    st.integers(1024, 4_194_304),
    st.floats(0.0, 1.0),
)
def test_smart_resize_never_exceeds_max_pixels_for_any_budget(h, w, hi, lo_fraction):
    """Any size and aspect (up to 200), any budget with ``min_pixels <= max_pixels``: the target
    is multiples of 32, at least 32 a side and never above ``max_pixels`` -- the 32 px clamp of a
    thin image and the ceil of an upscale used to end above it, where no bucket fits. Where the
    Qwen2-VL peer stays within the budget (and rounds no side to 0), ours equals it."""
    lo = max(1, int(hi * lo_fraction))
    if max(h, w) / min(h, w) > 200:
        return
    got = smart_resize(h, w, lo, hi)
    assert got[0] % 32 == 0 and got[1] % 32 == 0 and min(got) >= 32
    assert got[0] * got[1] <= hi, (h, w, lo, hi, got)
    if round(h / 32) and round(w / 32):
        peer = qwen_smart_resize(h, w, factor=32, min_pixels=lo, max_pixels=hi)
        if peer[0] * peer[1] <= hi:
            assert got == peer


def test_the_clamp_and_ceil_cases_that_went_above_max_pixels():
    # a 20 x 4000 px strip at 64 tokens: the short side clamps to 32 px, the long side was
    # floored for the unclamped scale (113 tokens); and an upscale to min_pixels == max_pixels
    # rounded both sides up (6144 > 4096 px)
    h, w = smart_resize(20, 4000, 4096, 65536)
    assert h == 32 and h * w <= 65536
    h, w = smart_resize(33, 50, 4096, 4096)
    assert h * w <= 4096 and h % 32 == 0 and w % 32 == 0


def test_max_decode_pixels_above_pillows_warning_limit_is_honoured():
    """A 10000 x 9000 px image (90M px, above Pillow's 89.5M warning) decodes under a cap of
    100M px and is refused under 80M px, by our cap and reason either way."""
    from neo_data.encoding.images import open_image

    data = _encode(Image.new("L", (10000, 9000)), "PNG", compress_level=1)
    img = open_image(data, max_decode_pixels=100_000_000)
    assert img.size == (10000, 9000)
    with pytest.raises(ImageRejected) as e:
        open_image(data, max_decode_pixels=80_000_000)
    assert e.value.reason == "image_too_many_pixels" and "80000000" in e.value.detail
    # a cap above twice the warning limit (Pillow's own error) holds too, header only
    with pytest.raises(ImageRejected, match="above the decode cap of 300000000"):
        open_image(_png_header_only(18000, 17000), max_decode_pixels=300_000_000)
