"""Comparison grids of a sweep: every cell's MP4 playing in sync in one labelled H.264 MP4, and a PNG contact
sheet of the cells' posters in the same layout.

Rows are the sweep's first axis, columns its second. A tile shows its cell's frames pixel for pixel (never
scaled, so a grid can be checked against its cells), centred in a slot the size of the largest cell; a shorter
cell holds its last frame until the longest one ends, and a cell with no video is a grey slot with a note.
Cells are decoded and the grid encoded one frame at a time, one ffmpeg reader per cell, so memory stays that
of a few frames however many frames a cell has. Nothing here imports Django: the sweeps app calls
`compose_grid` and moves the two files into storage.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from workers.pipeline.video import open_mp4_writer

MARGIN_COLOR = (24, 24, 24)
SLOT_COLOR = (8, 8, 8)  # behind a cell smaller than the slot
BLANK_COLOR = (128, 128, 128)
LABEL_COLOR = (236, 236, 236)
AXIS_COLOR = (150, 186, 230)  # the axis titles, apart from the values they name
NOTE_COLOR = (16, 16, 16)
ELLIPSIS = "\u2026"


class GridError(Exception):
    """A grid could not be composed (bad input, an unreadable cell, a failed write); no output file is left."""


@dataclass(frozen=True)
class Tile:
    video: Path | None  # the cell's MP4, or None for a cell with no video (failed, canceled, not rendered)
    poster: Path | None = None  # the cell's PNG poster (else the video's first frame is used for the sheet)
    note: str = ""  # text shown on a blank tile, e.g. "failed: RENDER_FAILED" or "canceled"


@dataclass(frozen=True)
class GridLayout:
    """Where everything landed, the same in the MP4 and the PNG. A box is the cell's own pixels: the size of its
    video, centred in its slot (the whole slot for a tile with no video)."""

    width: int
    height: int
    num_frames: int
    fps: int
    boxes: dict[tuple[int, int], tuple[int, int, int, int]]  # (row, column) -> (x, y, w, h)


@dataclass(frozen=True)
class _Plan:
    """The grid's geometry before any frame is read: canvas size, slot origins and the text drawn around them."""

    width: int
    height: int
    tile_size: tuple[int, int]
    slots: dict[tuple[int, int], tuple[int, int]]  # (row, column) -> (x, y) of the slot's top-left corner
    text_size: int
    pad: int
    label_width: int
    row_lines: list[list[str]]  # each row label, wrapped to the label column
    title_line: tuple[int, int] | None  # (y centre, size)
    column_title_y: int | None
    column_labels_y: int


def compose_grid(
    tiles: list[list[Tile]],
    *,
    row_labels: list[str],
    column_labels: list[str],
    title: str,
    video_path: Path,
    image_path: Path,
    row_title: str = "",
    column_title: str = "",
) -> GridLayout:
    """Write the grid MP4 to `video_path` and its contact sheet PNG to `image_path`; return their shared layout.

    1. Check the grid's shape, labels and files, and load the posters.
    2. Open one reader per cell video; sizes fix the tile size, the first video's fps the grid's.
    3. Draw margins, labels and blank tiles once; the sheet is that plus each poster (or first frame).
    4. Stream: each grid frame takes every cell's next frame (or its last one) until the longest cell ends.
    On any error both paths are removed and GridError says which cell or step failed.
    """
    video_path, image_path = Path(video_path), Path(image_path)
    readers: dict[tuple[int, int], Iterator[bytes]] = {}
    writer = None
    try:
        posters = _check_inputs(tiles, row_labels=row_labels, column_labels=column_labels)
        cells = {(r, c): tile for r, row in enumerate(tiles) for c, tile in enumerate(row)}
        sizes: dict[tuple[int, int], tuple[int, int]] = {}
        fps = 0.0
        for key, tile in cells.items():
            if tile.video is None:
                continue
            reader = imageio_ffmpeg.read_frames(str(tile.video))
            readers[key] = reader
            meta = _read_cell(key, tile, lambda: next(reader), row_labels, column_labels)
            width, height = meta["size"]
            if width <= 0 or height <= 0:
                raise GridError(f"{_cell_name(key, row_labels, column_labels)}: {tile.video} has no picture")
            sizes[key] = (width, height)
            fps = fps or meta["fps"]
        if round(fps) <= 0:
            raise GridError(f"{_first_video(cells)} has no frame rate")

        plan = _plan(
            tiles_shape=(len(tiles), len(tiles[0])),
            tile_size=(max(w for w, _ in sizes.values()), max(h for _, h in sizes.values())),
            row_labels=row_labels,
            row_title=row_title,
            title=title,
            column_title=column_title,
        )
        boxes = {key: _box(plan, key, sizes.get(key)) for key in cells}
        canvas = _draw_base(
            plan,
            cells=cells,
            column_labels=column_labels,
            title=title,
            row_title=row_title,
            column_title=column_title,
        )

        frames: dict[tuple[int, int], np.ndarray] = {}
        for key, reader in readers.items():
            frame = _read_cell(key, cells[key], lambda: next(reader, None), row_labels, column_labels)
            if frame is None:
                raise GridError(f"{_cell_name(key, row_labels, column_labels)}: {cells[key].video} has no frames")
            frames[key] = _as_image(frame, sizes[key])
        sheet = canvas.copy()
        for key in readers:
            x, y, w, h = boxes[key]
            if key in posters:
                _paste_centred(sheet, posters[key], plan, key)
            else:
                sheet[y : y + h, x : x + w] = frames[key]

        writer = open_mp4_writer(video_path, width=plan.width, height=plan.height, fps=round(fps))
        live = set(readers)
        num_frames = 0
        while live:
            for key in live:
                x, y, w, h = boxes[key]
                canvas[y : y + h, x : x + w] = frames[key]
            writer.send(canvas)  # written before send returns: the canvas is reused for the next frame
            num_frames += 1
            for key in sorted(live):
                frame = _read_cell(key, cells[key], lambda: next(readers[key], None), row_labels, column_labels)
                if frame is None:
                    live.discard(key)  # the canvas keeps this cell's last frame
                else:
                    frames[key] = _as_image(frame, sizes[key])
        writer.close()
        writer = None
        Image.fromarray(sheet).save(image_path, format="PNG")
        return GridLayout(width=plan.width, height=plan.height, num_frames=num_frames, fps=round(fps), boxes=boxes)
    except BaseException as exc:
        if writer is not None:
            try:
                writer.close()
            except Exception:  # the original error is the one to report
                pass
        video_path.unlink(missing_ok=True)
        image_path.unlink(missing_ok=True)
        if isinstance(exc, GridError) or not isinstance(exc, Exception):
            raise
        raise GridError(f"cannot write the grid: {_last_line(exc)}") from exc
    finally:
        for reader in readers.values():
            reader.close()  # stops that cell's ffmpeg


def _first_video(cells: dict[tuple[int, int], Tile]) -> Path | None:
    return next((tile.video for tile in cells.values() if tile.video is not None), None)


def _check_inputs(
    tiles: list[list[Tile]], *, row_labels: list[str], column_labels: list[str]
) -> dict[tuple[int, int], np.ndarray]:
    """The grid is a non-empty rectangle with one label per row and column, at least one cell has a video, every
    named file exists; returns the posters of cells with a video, decoded to RGB."""
    if not tiles or not tiles[0]:
        raise GridError("the grid has no cells")
    if any(len(row) != len(tiles[0]) for row in tiles):
        raise GridError("every row of the grid needs the same number of cells")
    if len(row_labels) != len(tiles) or len(column_labels) != len(tiles[0]):
        raise GridError(
            f"{len(tiles)}x{len(tiles[0])} cells need {len(tiles)} row labels and {len(tiles[0])} column labels, "
            f"got {len(row_labels)} and {len(column_labels)}"
        )
    if all(tile.video is None for row in tiles for tile in row):
        raise GridError("no cell of the grid has a video")
    posters = {}
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            name = _cell_name((r, c), row_labels, column_labels)
            if tile.video is not None and not Path(tile.video).is_file():
                raise GridError(f"{name}: no video at {tile.video}")
            if tile.video is not None and tile.poster is not None:
                try:
                    with Image.open(tile.poster) as image:
                        posters[(r, c)] = np.asarray(image.convert("RGB"))
                except (OSError, ValueError) as exc:
                    raise GridError(f"{name}: cannot read the poster {tile.poster}: {_last_line(exc)}") from exc
    return posters


def _read_cell(key, tile: Tile, read, row_labels: list[str], column_labels: list[str]):
    """One step of a cell's reader, its failure named after the cell."""
    try:
        return read()
    except Exception as exc:
        name = _cell_name(key, row_labels, column_labels)
        raise GridError(f"{name}: cannot read {tile.video}: {_last_line(exc)}") from exc


def _cell_name(key: tuple[int, int], row_labels: list[str], column_labels: list[str]) -> str:
    r, c = key
    return f"cell ({row_labels[r]}, {column_labels[c]})"


def _last_line(exc: BaseException) -> str:
    # ffmpeg's reason is the last line of imageio-ffmpeg's messages (after its stderr banner).
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _as_image(frame: bytes, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    return np.frombuffer(frame, np.uint8).reshape(height, width, 3)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _line_height(font: ImageFont.FreeTypeFont, pad: int) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent + pad


def _fit(text: str, font: ImageFont.FreeTypeFont, width: float) -> str:
    """`text` on one line within `width` pixels, shortened in the middle when too long: sweep values such as
    checkpoint names share a prefix and differ at the end, so both ends stay readable."""
    text = " ".join(text.split())
    if font.getlength(text) <= width:
        return text
    for keep in range(len(text) - 1, 0, -1):
        head, tail = (keep + 1) // 2, keep // 2
        candidate = text[:head] + ELLIPSIS + text[len(text) - tail :]
        if font.getlength(candidate) <= width:
            return candidate
    return ELLIPSIS if font.getlength(ELLIPSIS) <= width else ""


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float, max_lines: int) -> list[str]:
    """`text` on at most `max_lines` lines within `width` pixels, broken at a space, else after one of `_-./` (file
    and checkpoint names have no spaces), else wherever the line is full; what is left over is shortened onto the
    last line."""
    lines: list[str] = []
    rest = " ".join(text.split())
    while len(lines) < max_lines - 1 and font.getlength(rest) > width:
        full = max(1, bisect.bisect_right(range(len(rest)), width, key=lambda n: font.getlength(rest[: n + 1])))
        cut = rest.rfind(" ", 0, full + 1)
        if cut <= 0:
            cut = max(rest.rfind(mark, 0, full) for mark in "_-./") + 1
        if cut <= full // 3:  # no break near the end of the line: fill it
            cut = full
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return [line for line in [*lines, _fit(rest, font, width)] if line]


def _plan(
    *,
    tiles_shape: tuple[int, int],
    tile_size: tuple[int, int],
    row_labels: list[str],
    row_title: str,
    title: str,
    column_title: str,
) -> _Plan:
    """Text scales with the tile (30 px on a 480-high tile, 12 px at least); even sides come from the margins.

    Every box starts on an even pixel: yuv420p shares one colour sample between 2x2 pixels, so a cell placed on
    the same 2x2 grid as its own video keeps its colours up to its edges instead of bleeding into the margin."""
    rows, columns = tiles_shape
    tile_w, tile_h = tile_size
    size = min(48, max(12, round(tile_h / 16)))
    pad, gap = _even(max(4, size // 2)), _even(max(2, size // 4))
    font, title_font = _font(size), _font(size * 4 // 3)
    label_cap = max(tile_w // 2, 6 * size)
    row_lines = [_wrap(text, font, label_cap, max(1, tile_h // _line_height(font, 2))) for text in row_labels]
    widest = max(font.getlength(line) for line in [*sum(row_lines, []), _fit(row_title, font, label_cap)])
    label_width = _even(int(widest) + 1)

    y = pad
    title_line = None
    if title.strip():
        title_h = _even(_line_height(title_font, pad))
        title_line = (y + title_h // 2, size * 4 // 3)
        y += title_h
    line_h = _even(_line_height(font, pad))
    column_title_y = None
    if column_title.strip():
        column_title_y = y + line_h // 2
        y += line_h
    column_labels_y = y + line_h // 2
    y += line_h

    left = pad + label_width + pad
    step_x, step_y = _even(tile_w + gap), _even(tile_h + gap)
    slots = {(r, c): (left + c * step_x, y + r * step_y) for r in range(rows) for c in range(columns)}
    width = left + (columns - 1) * step_x + tile_w + pad
    height = y + (rows - 1) * step_y + tile_h + pad
    return _Plan(
        width=width + width % 2,
        height=height + height % 2,
        tile_size=tile_size,
        slots=slots,
        text_size=size,
        pad=pad,
        label_width=label_width,
        row_lines=row_lines,
        title_line=title_line,
        column_title_y=column_title_y,
        column_labels_y=column_labels_y,
    )


def _box(plan: _Plan, key: tuple[int, int], size: tuple[int, int] | None) -> tuple[int, int, int, int]:
    x, y = plan.slots[key]
    tile_w, tile_h = plan.tile_size
    if size is None:
        return (x, y, tile_w, tile_h)
    w, h = size
    return (x + _inset(tile_w, w), y + _inset(tile_h, h), w, h)


def _even(n: int) -> int:
    """`n` rounded up to an even number."""
    return n + n % 2


def _inset(outer: int, inner: int) -> int:
    """Where a picture `inner` wide starts to sit centred in `outer`, on an even pixel (see `_plan`)."""
    return (outer - inner) // 4 * 2


def _draw_base(
    plan: _Plan,
    *,
    cells: dict[tuple[int, int], Tile],
    column_labels: list[str],
    title: str,
    row_title: str,
    column_title: str,
) -> np.ndarray:
    """Everything that does not move: margins, title, axis labels, dark slots and the blank tiles' notes."""
    image = Image.new("RGB", (plan.width, plan.height), MARGIN_COLOR)
    draw = ImageDraw.Draw(image)
    font = _font(plan.text_size)
    tile_w, tile_h = plan.tile_size
    pad = plan.pad
    columns = 1 + max(c for _, c in plan.slots)
    grid_left = plan.slots[(0, 0)][0]
    grid_right = plan.slots[(0, columns - 1)][0] + tile_w

    if plan.title_line is not None:
        y, size = plan.title_line
        title_font = _font(size)
        text = _fit(title, title_font, plan.width - 2 * pad)
        draw.text((pad, y), text, font=title_font, fill=LABEL_COLOR, anchor="lm")
    if plan.column_title_y is not None:
        text = _fit(column_title, font, grid_right - grid_left)
        draw.text(((grid_left + grid_right) // 2, plan.column_title_y), text, font=font, fill=AXIS_COLOR, anchor="mm")
    if row_title.strip():
        text = _fit(row_title, font, plan.label_width)
        draw.text((pad, plan.column_labels_y), text, font=font, fill=AXIS_COLOR, anchor="lm")
    for c in range(columns):
        x = plan.slots[(0, c)][0] + tile_w // 2
        text = _fit(column_labels[c], font, tile_w - pad)
        draw.text((x, plan.column_labels_y), text, font=font, fill=LABEL_COLOR, anchor="mm")
    label_h = _line_height(font, 2)
    for r, lines in enumerate(plan.row_lines):
        top = plan.slots[(r, 0)][1] + tile_h // 2 - label_h * (len(lines) - 1) // 2
        for i, line in enumerate(lines):
            draw.text((pad + plan.label_width, top + i * label_h), line, font=font, fill=LABEL_COLOR, anchor="rm")

    note_font = _font(min(plan.text_size, max(10, tile_h // 4)))
    note_h = _line_height(note_font, 2)
    for key, tile in cells.items():
        x, y = plan.slots[key]
        blank = tile.video is None
        draw.rectangle((x, y, x + tile_w - 1, y + tile_h - 1), fill=BLANK_COLOR if blank else SLOT_COLOR)
        if blank and tile.note.strip():
            lines = _wrap(tile.note, note_font, tile_w - pad, max(1, (tile_h - 4) // note_h))
            top = y + tile_h // 2 - note_h * (len(lines) - 1) // 2
            for i, line in enumerate(lines):
                draw.text((x + tile_w // 2, top + i * note_h), line, font=note_font, fill=NOTE_COLOR, anchor="mm")
    return np.array(image)


def _paste_centred(canvas: np.ndarray, picture: np.ndarray, plan: _Plan, key: tuple[int, int]) -> None:
    """A poster centred in its slot, cropped to the slot if it is larger than the cell's video."""
    x, y = plan.slots[key]
    tile_w, tile_h = plan.tile_size
    h, w = picture.shape[:2]
    top, left = max(0, (h - tile_h) // 2), max(0, (w - tile_w) // 2)
    picture = picture[top : top + tile_h, left : left + tile_w]
    h, w = picture.shape[:2]
    x, y = x + _inset(tile_w, w), y + _inset(tile_h, h)
    canvas[y : y + h, x : x + w] = picture
