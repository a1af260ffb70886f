"""The T/H/W layout of a pack as a picture: one cell per token, coloured by sample.

Text tokens are laid out as runs, one cell per token, left to right; the tokens of an image
(which share one T) are laid out as the image's H x W token grid at that point of the run, so
the picture shows how many positions each image takes and where T does not advance. Each sample
starts a new line, labelled with its number and the T of its first token; lines wrap at
:data:`COLUMNS` cells without splitting an image. :func:`layout` computes the geometry (pure,
tested); the page renders it as SVG.
"""

from __future__ import annotations

from dataclasses import dataclass

from neo_data.encoding.tokens import IGNORE_INDEX

COLUMNS = 96  # cells per line before wrapping
CELL = 9  # px per cell, including a 1 px gap
GUTTER = 84  # px left of the cells for the line labels
SAMPLE_GAP = 6  # px between samples


@dataclass(frozen=True)
class Cell:
    pos: int  # token position in the pack
    sample: int
    x: int  # px
    y: int
    t: int
    h: int
    w: int
    image: int  # image ordinal, -1 for a text token
    target: bool  # this token is followed by a supervised target (labels[pos] != -100)


@dataclass(frozen=True)
class LineLabel:
    x: int
    y: int
    text: str


@dataclass(frozen=True)
class ImageLabel:
    x: int
    y: int
    image: int
    t: int
    rows: int
    cols: int


@dataclass(frozen=True)
class Layout:
    cells: list[Cell]
    lines: list[LineLabel]
    images: list[ImageLabel]
    width: int  # px
    height: int

    def hue(self, sample: int) -> int:
        """Hue of a sample's cells: golden-angle steps, so neighbours differ clearly."""
        return round(sample * 137.508) % 360


def layout(pack: dict) -> Layout:
    """Place every token of ``pack`` (see the module docstring); one :class:`Cell` per token."""
    cu = pack["cu_seqlens"]
    cells: list[Cell] = []
    lines: list[LineLabel] = []
    images: list[ImageLabel] = []
    row = 0  # grid row of the current line
    max_cols = 0
    for k in range(len(cu) - 1):
        col, line_h = 0, 1

        def px(c: int, r: int, k: int = k) -> tuple[int, int]:
            return GUTTER + c * CELL, r * CELL + k * SAMPLE_GAP

        lines.append(LineLabel(0, px(0, row)[1], f"s{k}  T{pack['t_index'][cu[k]]}"))
        i = cu[k]
        while i < cu[k + 1]:
            o = pack["image_ordinal"][i]
            end = i + 1
            while o >= 0 and end < cu[k + 1] and pack["image_ordinal"][end] == o:
                end += 1
            rows = max(pack["h_index"][i:end]) + 1 if o >= 0 else 1
            cols = max(pack["w_index"][i:end]) + 1 if o >= 0 else 1
            if col > 0 and col + cols > COLUMNS:  # wrap; an image is never split
                row, col, line_h = row + line_h, 0, 1
                lines.append(LineLabel(0, px(0, row)[1], f"    T{pack['t_index'][i]}"))
            for j in range(i, end):
                dc, dr = (pack["w_index"][j], pack["h_index"][j]) if o >= 0 else (0, 0)
                cells.append(_cell(pack, k, j, *px(col + dc, row + dr)))
            if o >= 0:
                images.append(ImageLabel(*px(col, row), o, pack["t_index"][i], rows, cols))
            col += cols
            line_h = max(line_h, rows)
            max_cols = max(max_cols, col)
            i = end
        row += line_h
    n_samples = len(cu) - 1
    height = row * CELL + max(0, n_samples - 1) * SAMPLE_GAP
    return Layout(cells, lines, images, width=GUTTER + max_cols * CELL, height=height)


def _cell(pack: dict, k: int, j: int, x: int, y: int) -> Cell:
    return Cell(
        pos=j,
        sample=k,
        x=x,
        y=y,
        t=pack["t_index"][j],
        h=pack["h_index"][j],
        w=pack["w_index"][j],
        image=pack["image_ordinal"][j],
        target=pack["labels"][j] != IGNORE_INDEX,
    )
