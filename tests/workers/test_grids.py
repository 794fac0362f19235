"""Comparison grids: every tile plays its own cell in sync, pixel for pixel; the contact sheet shows the posters in
the same boxes; blank tiles, labels, even sizes; unreadable inputs fail cleanly, leaving no file behind."""

from __future__ import annotations

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from tests.mp4 import read_mp4
from workers.grids import BLANK_COLOR, MARGIN_COLOR, GridError, Tile, compose_grid
from workers.pipeline.video import png_bytes, write_mp4


def clip(count: int, height: int, width: int, *, color: tuple[int, int, int]) -> np.ndarray:
    """A tinted gradient with a white square moving left to right: each cell and each frame tells itself apart."""
    ramp = np.linspace(0.35, 1.0, width)[None, :, None] * np.array(color)[None, None, :]
    frames = np.broadcast_to(ramp, (count, height, width, 3)).astype(np.uint8).copy()
    side = max(6, height // 4)
    for index in range(count):
        left = 2 + index * (width - side - 4) // max(1, count - 1)
        frames[index, height // 3 : height // 3 + side, left : left + side] = 255
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture
def cells(tmp_path):
    """Three cells of one sweep at 8 fps: full size, a shorter one, a smaller one; the first has a poster."""
    red = write_mp4(clip(9, 48, 64, color=(230, 40, 40)), tmp_path / "red.mp4", fps=8)
    green = write_mp4(clip(5, 48, 64, color=(40, 230, 40)), tmp_path / "green.mp4", fps=8)
    blue = write_mp4(clip(9, 32, 40, color=(40, 40, 230)), tmp_path / "blue.mp4", fps=8)
    poster = np.zeros((48, 64, 3), np.uint8)
    poster[::4, :] = (250, 200, 0)  # stripes no frame of any cell has
    (tmp_path / "red.png").write_bytes(png_bytes(poster))
    return {"red": red, "green": green, "blue": blue, "red_poster": tmp_path / "red.png", "poster": poster}


def compose(cells, tmp_path, **overrides):
    arguments = {
        "tiles": [
            [Tile(cells["red"], poster=cells["red_poster"]), Tile(cells["green"])],
            [Tile(cells["blue"]), Tile(None, note="failed: RENDER_FAILED")],
        ],
        "row_labels": ["my_lora_000001000", "my_lora_000002000"],
        "column_labels": ["0.5", "1.0"],
        "title": "sks a person walking on a beach at sunset",
        "video_path": tmp_path / "grid.mp4",
        "image_path": tmp_path / "grid.png",
        "row_title": "checkpoint",
        "column_title": "multiplier",
    } | overrides
    return compose_grid(**arguments)


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    return image[..., y : y + h, x : x + w, :]


def test_each_tile_plays_its_own_cell_in_sync(cells, tmp_path):
    layout = compose(cells, tmp_path)
    grid, meta = read_mp4(tmp_path / "grid.mp4")
    assert grid.shape == (9, layout.height, layout.width, 3)  # the longest cell's length
    assert layout.num_frames == 9 and layout.fps == 8 and meta["fps"] == 8
    own = {key: read_mp4(cells[name])[0] for key, name in {(0, 0): "red", (0, 1): "green", (1, 0): "blue"}.items()}
    assert layout.boxes[(0, 0)][2:] == (64, 48) and layout.boxes[(1, 0)][2:] == (40, 32)  # no scaling

    for key, frames in own.items():
        tiles = crop(grid, layout.boxes[key])
        for index in range(9):
            expected = frames[min(index, len(frames) - 1)]  # a shorter cell holds its last frame
            assert psnr(tiles[index], expected) > 30, (key, index)
            if index < len(frames) - 2:  # the square has moved: the tile shows this frame, not another
                assert psnr(tiles[index], frames[index + 2]) < psnr(tiles[index], expected) - 5
            for other, other_frames in own.items():
                if other != key:
                    neighbour = other_frames[min(index, len(other_frames) - 1)]
                    h, w = min(neighbour.shape[0], tiles.shape[1]), min(neighbour.shape[1], tiles.shape[2])
                    assert psnr(tiles[index, :h, :w], neighbour[:h, :w]) < 20


def test_smaller_cell_sits_centred_on_a_dark_slot(cells, tmp_path):
    layout = compose(cells, tmp_path)
    grid, _ = read_mp4(tmp_path / "grid.mp4")
    x, y, w, h = layout.boxes[(1, 0)]
    slot_x, slot_y = layout.boxes[(0, 0)][0], layout.boxes[(1, 1)][1]
    assert (x - slot_x, y - slot_y) == ((64 - w) // 2, (48 - h) // 2)
    around = grid[0, slot_y : slot_y + 48, slot_x : slot_x + 64].copy()
    # blank out the cell and 2 px around it (the codec rings at its edges): the rest of the slot is dark
    around[y - slot_y - 2 : y - slot_y + h + 2, x - slot_x - 2 : x - slot_x + w + 2] = 0
    assert around.max() < 40


def test_contact_sheet_has_the_same_boxes_with_the_posters(cells, tmp_path):
    layout = compose(cells, tmp_path)
    sheet = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    assert sheet.shape == (layout.height, layout.width, 3)
    assert np.array_equal(crop(sheet, layout.boxes[(0, 0)]), cells["poster"])
    # without a poster, the cell's own first frame
    assert np.array_equal(crop(sheet, layout.boxes[(0, 1)]), read_mp4(cells["green"])[0][0])
    assert np.array_equal(crop(sheet, layout.boxes[(1, 0)]), read_mp4(cells["blue"])[0][0])
    grid, _ = read_mp4(tmp_path / "grid.mp4")
    margins = np.ones(sheet.shape[:2], bool)
    for x, y, w, h in layout.boxes.values():
        margins[y : y + h, x : x + w] = False
    assert psnr(grid[0][margins], sheet[margins]) > 30  # labels and margins drawn the same in both


def test_a_cell_without_video_is_a_grey_tile_with_its_note(cells, tmp_path):
    layout = compose(cells, tmp_path)
    assert layout.boxes[(1, 1)][2:] == (64, 48)  # the whole slot
    sheet_tile = crop(np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")), layout.boxes[(1, 1)])
    grey = (sheet_tile == BLANK_COLOR).all(axis=-1)
    assert 0.6 < grey.mean() < 1.0  # mid-grey, with the note written on it
    assert grey[:, :3].all() and grey[:, -3:].all() and grey[:2].all() and grey[-2:].all()
    video_tile = crop(read_mp4(tmp_path / "grid.mp4")[0], layout.boxes[(1, 1)])
    assert (np.abs(video_tile.astype(int) - 128).max(axis=-1) < 12).mean() > 0.6
    assert (video_tile < 64).all(axis=-1).any()  # the note's dark text

    silent = [[Tile(cells["red"]), Tile(None)]]
    layout = compose(cells, tmp_path, tiles=silent, row_labels=["a"], column_labels=["b", "c"])
    sheet_tile = crop(np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")), layout.boxes[(0, 1)])
    assert (sheet_tile == BLANK_COLOR).all()


def test_labels_are_drawn_in_the_margins(cells, tmp_path):
    layout = compose(cells, tmp_path)
    sheet = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    text = (sheet.astype(int) - MARGIN_COLOR).max(axis=-1) > 80
    top = min(y for _, y, _, _ in layout.boxes.values())
    left = min(x for x, _, _, _ in layout.boxes.values())
    for (row, column), (x, y, w, h) in layout.boxes.items():
        if row == 0 and w == 64:
            assert text[:top, x : x + w].any(), f"column {column} label"
        if column == 0:  # a row's label is centred on its row, as the box is
            assert text[y : y + h, :left].any(), f"row {row} label"
    title_rows = text[:top].any(axis=1).nonzero()[0]
    assert title_rows.min() < top // 3  # a title line above the header

    plain = compose(cells, tmp_path, title="", row_title="", column_title="")
    assert min(y for _, y, _, _ in plain.boxes.values()) < top  # fewer lines, less header


def test_long_labels_are_wrapped_or_shortened_not_widened(cells, tmp_path):
    names = ["run_" + "x" * 80 + "_000001000", "run_" + "x" * 80 + "_000002000"]
    layout = compose(cells, tmp_path, row_labels=names, column_labels=["0.5 " * 30, "1.0"])
    assert layout.width < 400  # shortened, not widened to fit 90 characters


@pytest.mark.parametrize("label", ["a", "ab", "abc", "abcd", "abcde"])
def test_odd_sizes_give_an_even_grid(tmp_path, label):
    odd = tmp_path / "odd.mp4"
    writer = imageio_ffmpeg.write_frames(
        str(odd), (33, 25), fps=8, codec="libx264", pix_fmt_out="yuv444p", macro_block_size=1, ffmpeg_log_level="error"
    )
    writer.send(None)
    for frame in clip(3, 25, 33, color=(200, 120, 40)):
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    tiles = [[Tile(odd), Tile(odd), Tile(None, note="canceled")]]
    layout = compose_grid(
        tiles,
        row_labels=[label],
        column_labels=["1", "2", "3"],
        title=label,
        video_path=tmp_path / "grid.mp4",
        image_path=tmp_path / "grid.png",
    )
    assert layout.width % 2 == 0 and layout.height % 2 == 0
    grid, _ = read_mp4(tmp_path / "grid.mp4")
    assert grid.shape == (3, layout.height, layout.width, 3)
    assert layout.boxes[(0, 0)][2:] == (33, 25)
    # the last row and column share their colour samples with the dark gap next to them
    assert psnr(crop(grid, layout.boxes[(0, 1)])[:, :-1, :-1], read_mp4(odd)[0][:, :-1, :-1]) > 30


def test_missing_or_corrupt_cell_fails_and_leaves_no_file(cells, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for broken in (tmp_path / "missing.mp4", corrupt):
        tiles = [[Tile(cells["red"]), Tile(broken)], [Tile(cells["blue"]), Tile(None)]]
        with pytest.raises(GridError, match=r"cell \(my_lora_000001000, 1\.0\)"):
            compose(cells, tmp_path, tiles=tiles)
        assert not (tmp_path / "grid.mp4").exists() and not (tmp_path / "grid.png").exists()


def test_a_failed_write_removes_the_partial_video(cells, tmp_path):
    with pytest.raises(GridError):
        compose(cells, tmp_path, image_path=tmp_path / "no-such-folder" / "grid.png")
    assert not (tmp_path / "grid.mp4").exists()


def test_a_grid_that_does_not_match_its_labels_is_refused(cells, tmp_path):
    with pytest.raises(GridError, match="row labels"):
        compose(cells, tmp_path, row_labels=["only one"])
    with pytest.raises(GridError, match="no cell"):
        compose(cells, tmp_path, tiles=[[Tile(None), Tile(None)]], row_labels=["a"])
    assert not (tmp_path / "grid.mp4").exists()
