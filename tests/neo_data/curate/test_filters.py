"""Each curation filter gives its stable reason; the spec merges per-source overrides."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from neo_data.curate.filters import (  # noqa: E402
    DecodeBudget,
    Drop,
    ImageInfo,
    check_caption,
    check_image_size,
    check_language,
    check_text,
    decode_text,
    inspect_image,
)
from neo_data.manifest import ManifestError, parse_manifest  # noqa: E402
from neo_data.manifest.curate import CurateSpec, FilterSpec  # noqa: E402
from neo_data.synthetic.crawl import encode, images, png_header_only, smooth_image  # noqa: E402

F = FilterSpec(max_decode_pixels=4_000_000, languages=["en"])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (images()["corrupt"], "image_decode_error"),
        (b"", "image_decode_error"),
        (b"<html>not an image</html>", "image_decode_error"),
        (images()["bomb"], "decompression_bomb"),
        (png_header_only(3000, 3000), "decompression_bomb"),  # above our cap, below Pillow's
        (png_header_only(60_000, 60_000), "decompression_bomb"),  # above Pillow's too
        (encode(smooth_image(1, 20, 200), "PNG"), "image_too_small"),
        (encode(smooth_image(1, 40, 20), "PNG"), "image_too_small"),  # 800 px < min_pixels
        (encode(smooth_image(1, 600, 40), "PNG"), "aspect_ratio"),
    ],
)
def test_image_reasons(data, reason):
    got = inspect_image(data, F)
    assert isinstance(got, Drop) and got.reason == reason, got


def test_image_too_large_and_kinds_kept():
    big = FilterSpec(max_side=100)
    assert inspect_image(encode(smooth_image(1, 120, 90), "PNG"), big).reason == "image_too_large"
    few = FilterSpec(max_pixels=5000)
    assert inspect_image(encode(smooth_image(1, 90, 90), "PNG"), few).reason == "image_too_large"
    for name in ("jpeg", "png", "webp", "gif", "cmyk", "exif", "rgba", "png16", "large"):
        info = inspect_image(images()[name], F)
        assert isinstance(info, ImageInfo), (name, info)
        with Image.open(io.BytesIO(images()[name])) as im:
            assert (info.width, info.height) == im.size  # as stored


@pytest.mark.parametrize(
    ("caption", "reason"),
    [
        ("", "caption_empty"),
        (" \n\t ", "caption_empty"),
        ("cat", "caption_too_short"),
        ("x" * 5000, "caption_too_long"),
        ("wonderful", "caption_too_few_words"),
        (" ".join(["word"] * 700), "caption_too_many_words"),
        ("http://example.com/a/b.jpg", "caption_junk"),
        ("www.example.com/photo", "caption_junk"),
        ("holiday photo 2.JPEG", "caption_junk"),
        ("IMG 20240101", "caption_junk"),
        ("Image may contain: two people, smiling", "caption_junk"),
        ("a dog running on the beach at sunset", None),
    ],
)
def test_caption_reasons(caption, reason):
    got = check_caption(caption, F)
    assert (got.reason if got else None) == reason


def test_junk_check_can_be_turned_off():
    assert check_caption("http://example.com/a/b.jpg", FilterSpec(junk_captions=False)) is None


def test_not_utf8_and_text_lengths():
    assert decode_text("café".encode("latin-1")).reason == "caption_not_utf8"
    assert decode_text("café".encode()) == "café"
    assert decode_text(None) == ""
    assert check_text("short", F).reason == "text_too_short"
    assert check_text("   ", F).reason == "text_empty"
    assert check_text("y" * 60, FilterSpec(text_max_chars=50)).reason == "text_too_long"


def test_language():
    en = "The fishing boats come back to the harbour at noon with their catch."
    fr = "Les bateaux de pêche reviennent au port à midi avec leur prise du jour."
    assert check_language(en, F)[0] is None and check_language(en, F)[1].startswith("en:")
    assert check_language(fr, F)[0].reason == "language"
    assert check_language("bonjour", F) == (None, "too_short_to_judge")
    assert check_language(fr, FilterSpec()) == (None, "not_checked")
    strict = FilterSpec(languages=["en"], min_language_score=1.0)
    assert check_language(en, strict)[0].reason == "language"


def test_per_source_overrides_merge_over_the_section():
    spec = CurateSpec.model_validate(
        {
            "output": "/tmp/o",
            "filters": {"min_side": 10, "languages": ["en"]},
            "download": {"timeout_s": 3},
            "sources": [
                {"name": "a", "path": "a.parquet", "filters": {"languages": []}},
                {"name": "b", "path": "b.data", "format": "csv", "download": {"retries": 0}},
            ],
        }
    )
    a, b = spec.sources
    assert spec.source_filters(a).languages == [] and spec.source_filters(a).min_side == 10
    assert spec.source_filters(b).languages == ["en"]
    assert spec.source_download(b).retries == 0 and spec.source_download(b).timeout_s == 3


def test_bad_curate_sections_name_the_place():
    base = "name: x\ndata: {curated: [a], packed: b}\ncurate:\n  output: /tmp/o\n  sources:\n"
    cases = {
        "    - {name: a, path: a.txt}\n": "cannot infer the format",
        "    - {name: a, path: a.csv, paths: [b.csv]}\n": "exactly one of",
        "    - {name: a, path: a.csv}\n    - {name: a, path: b.csv}\n": "unique",
        "    - {name: a, path: a.csv, filters: {min_side: 0}}\n": "curate.sources[0].filters.min_side",
        "    - {name: a, path: a.csv, kind: video}\n": "curate.sources[0].kind",
        "    - {name: a, path: a.csv, colums: {}}\n": "unknown key",
    }
    for tail, needle in cases.items():
        with pytest.raises(ManifestError, match="m.yaml:") as e:
            parse_manifest(base + tail, "m.yaml")
        assert needle in str(e.value), str(e.value)


def test_ranges_are_checked_after_merging_overrides():
    base = {"output": "/tmp/o", "filters": {"min_side": 10}}
    ok = {**base, "sources": [{"name": "a", "path": "a.csv", "filters": {"max_side": 20}}]}
    spec = CurateSpec.model_validate(ok)  # 10 <= 20 once merged, though 32 (default) > 20
    assert spec.source_filters(spec.sources[0]).max_side == 20
    bad = {**base, "sources": [{"name": "a", "path": "a.csv", "filters": {"max_side": 5}}]}
    with pytest.raises(ValueError, match=r"sources\[0\] \(a\).*min_side 10 > max_side 5"):
        CurateSpec.model_validate(bad)
    with pytest.raises(ValueError, match="min_side 50 > max_side 40"):
        FilterSpec(min_side=50, max_side=40)
    section = {"output": "/tmp/o", "filters": {"min_side": 20_000}}
    with pytest.raises(ValueError, match="min_side 20000 > max_side 16384"):
        CurateSpec.model_validate({**section, "sources": [{"name": "b", "path": "b.csv"}]})


def test_every_size_and_length_bound_is_inclusive():
    """At each bound the row is kept; one past it, dropped with the bound's reason."""
    f = FilterSpec(
        min_side=32, min_pixels=32 * 40, max_side=400, max_pixels=400 * 300, max_aspect_ratio=10.0
    )
    assert check_image_size(32, 40, f) is None and check_image_size(40, 32, f) is None
    assert check_image_size(31, 60, f).reason == "image_too_small"
    assert check_image_size(60, 31, f).reason == "image_too_small"
    assert check_image_size(32, 39, f).reason == "image_too_small"  # 1248 px < 1280
    assert check_image_size(400, 300, f) is None and check_image_size(300, 400, f) is None
    assert check_image_size(401, 200, f).reason == "image_too_large"
    assert check_image_size(200, 401, f).reason == "image_too_large"
    assert check_image_size(400, 301, f).reason == "image_too_large"  # pixels
    assert check_image_size(320, 32, f) is None  # aspect exactly 10
    assert check_image_size(330, 32, f).reason == "aspect_ratio"
    assert check_image_size(32, 330, f).reason == "aspect_ratio"

    c = FilterSpec(caption_min_chars=5, caption_max_chars=11, caption_min_words=2,
                   caption_max_words=3, junk_captions=False)  # fmt: skip
    assert check_caption("ab cd", c) is None  # 5 chars, 2 words
    assert check_caption("ab c", c).reason == "caption_too_short"
    assert check_caption("abc def ghi", c) is None  # 11 chars, 3 words
    assert check_caption("abc def ghij", c).reason == "caption_too_long"
    assert check_caption("abcdef", c).reason == "caption_too_few_words"
    assert check_caption("a b c d", c).reason == "caption_too_many_words"
    t = FilterSpec(text_min_chars=3, text_max_chars=5)
    assert check_text("abc", t) is None and check_text("abcde", t) is None
    assert check_text("ab", t).reason == "text_too_short"
    assert check_text("abcdef", t).reason == "text_too_long"


@pytest.mark.parametrize(
    ("spec", "width", "height", "reason"),
    [
        (FilterSpec(max_pixels=1_000_000), 2000, 2000, "image_too_large"),
        (FilterSpec(max_side=1000), 1500, 200, "image_too_large"),
        (FilterSpec(), 16, 16, "image_too_small"),
        (FilterSpec(), 3000, 100, "aspect_ratio"),
    ],
)
def test_size_limits_hold_before_any_pixel_is_decoded(spec, width, height, reason):
    """A header claiming the size and no pixel data: the limits decide from the header (a
    decode would fail as image_decode_error, and cost width x height pixels first)."""
    got = inspect_image(png_header_only(width, height), spec)
    assert isinstance(got, Drop) and got.reason == reason, got


def test_a_tiny_file_of_huge_dimensions_is_not_decoded():
    """13000x13000 1-bit in a few KiB, under a decode cap that lets it through: max_pixels
    stops it from the header (a decode would cost ~170 MB of pixels and seconds)."""
    from neo_data.synthetic.hostile import hostile_images

    data = hostile_images()["huge-1bit.png"][0]
    assert len(data) < 64 << 10
    spec = FilterSpec(max_decode_pixels=200_000_000, max_pixels=50_000_000)
    budget = DecodeBudget(1 << 40)
    got = inspect_image(data, spec, budget)
    assert isinstance(got, Drop) and got.reason == "image_too_large"
    assert budget.peak == 0  # nothing was decoded


def test_concurrent_decodes_are_bounded_by_pixels():
    from concurrent.futures import ThreadPoolExecutor

    data = images()["large"]  # 1600x1200 JPEG, decoded at 1/8 scale (200x150) for the hash
    png = encode(smooth_image(3, 800, 600), "PNG")  # 480,000 pixels, decoded whole
    budget = DecodeBudget(1_000_000)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda d: inspect_image(d, F, budget), [data, png] * 8))
    assert all(isinstance(g, ImageInfo) for g in got)
    assert 480_000 <= budget.peak <= 1_000_000 and budget.in_use == 0
    alone = DecodeBudget(100)  # smaller than one image: it still decodes, alone
    assert isinstance(inspect_image(png, F, alone), ImageInfo) and alone.peak == 480_000


@pytest.mark.parametrize(
    ("caption", "lang"),
    [("一只黑色的猫坐在窗台上看着外面的雨", "zh"), ("窓辺に座っている黒い猫が雨を見ている", "ja"),
     ("แมวดำนั่งอยู่บนขอบหน้าต่างมองดูฝน", "th")],
)  # fmt: skip
def test_captions_without_spaces_count_their_characters_as_words(caption, lang):
    spec = FilterSpec(languages=[lang], caption_min_words=2)
    assert check_caption(caption, spec) is None
    assert check_language(caption, spec)[0] is None
    assert check_caption("猫", FilterSpec(caption_min_chars=1)).reason == "caption_too_few_words"
    two = check_caption("東京 tower", FilterSpec(caption_max_words=2))
    assert two.reason == "caption_too_many_words" and "3 words" in two.detail  # 東, 京, tower


def test_damaged_images_of_every_format_are_rejected_not_raised():
    """Random bytes flipped and cuts in each image the crawl server serves (AVIF's decoder
    raises RuntimeError, TIFF's struct.error, ...): every result is an ImageInfo or a Drop."""
    import random

    from neo_data.synthetic.hostile import hostile_images

    rng = random.Random(0)
    pool = [v for k, v in images().items() if k not in ("bomb", "large")]
    pool += [v for k, (v, _) in hostile_images().items() if k != "huge-1bit.png"]
    spec = FilterSpec(min_side=8, min_pixels=64, max_decode_pixels=4_000_000)
    reasons = set()
    for data in pool:
        for _ in range(25):
            b = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            got = inspect_image(
                bytes(b[: rng.randrange(len(b))] if rng.random() < 0.3 else b), spec
            )
            assert isinstance(got, ImageInfo | Drop)
            reasons.add(got.reason if isinstance(got, Drop) else "kept")
    assert {"kept", "image_decode_error"} <= reasons
