"""Sweeps through the real queue: a GPU worker renders the cells on the tiny checkpoint, a CPU worker settles the
sweep and composes its grids, and the grid (MP4 and PNG) shows every cell's own video in the layout's boxes."""

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SMALL, wait_for
from tests.mp4 import read_mp4
from webapp.sweeps.models import Sweep
from webapp.sweeps.services import grid_plans
from workers.grids import BLANK_COLOR, Tile, compose_grid

URL = "/api/v1/sweeps/"
A, B = "job_a/job_a.safetensors", "job_b/job_b.safetensors"
PROMPT = {"prompt": "sks walking", **SMALL}


@pytest.fixture
def workers(start_worker):
    """A GPU worker to render the cells and a CPU worker to settle the sweep, as deployed."""
    start_worker("gpu")
    start_worker("cpu", queues="celery")


def create(api, axes) -> dict:
    # One scheduler for every cell ("auto" follows each LoRA's ai-toolkit version, and A's and B's differ).
    body = {"name": "strength", "prompts": [PROMPT], "axes": axes, "scheduler": "euler"}
    response = api.post(URL, body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def settled(api, sweep_id, until=lambda sweep: True) -> dict:
    def done():
        sweep = api.get(f"{URL}{sweep_id}/").json()
        return sweep["status"] in ("succeeded", "failed", "canceled") and until(sweep) and sweep

    sweep = wait_for(done, timeout=600, interval=0.5)
    assert sweep["status"] == "succeeded", sweep
    return sweep


def fetch(api, url: str) -> bytes:
    response = api.get(url)
    assert response.status_code == 200, url
    return b"".join(response.streaming_content)


def decoded(api, url: str, tmp_path: Path) -> np.ndarray:
    path = tmp_path / f"{abs(hash(url))}.mp4"
    path.write_bytes(fetch(api, url))
    return read_mp4(path)[0]


def png(api, url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(fetch(api, url))).convert("RGB"))


def layout_of(sweep_id: str):
    """The boxes the stored grid was laid out with: the sweep's own grid plan through the same layout rule."""
    sweep = Sweep.objects.get(pk=sweep_id)
    with tempfile.TemporaryDirectory() as tmp:
        plan = next(grid_plans(sweep, folder=Path(tmp)))
        return compose_grid(
            [[Tile(**tile) for tile in row] for row in plan.tiles],
            row_labels=plan.row_labels,
            column_labels=plan.column_labels,
            title=plan.title,
            video_path=Path(tmp) / "grid.mp4",
            image_path=Path(tmp) / "grid.png",
            row_title=plan.row_title,
            column_title=plan.column_title,
        )


def crop(frames: np.ndarray, box) -> np.ndarray:
    x, y, w, h = box
    return frames[..., y : y + h, x : x + w, :]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.django_db(transaction=True)
def test_two_loras_by_two_multipliers_render_four_cells_and_one_grid_of_them(api, workers, tmp_path):
    created = create(api, [{"field": "lora", "values": [A, B]}, {"field": "multiplier", "values": [0, 1]}])
    sweep = settled(api, created["id"])
    assert sweep["counts"]["succeeded"] == 4 and len(sweep["cells"]) == 4
    (grid,) = sweep["grids"]
    frames = decoded(api, grid["video_url"], tmp_path)
    assert (
        frames.shape == (grid["num_frames"], grid["height"], grid["width"], 3) == (9, grid["height"], grid["width"], 3)
    )
    sheet = png(api, grid["image_url"])
    assert sheet.shape == (grid["height"], grid["width"], 3)

    layout = layout_of(created["id"])
    assert (layout.width, layout.height) == (grid["width"], grid["height"])
    assert sorted(layout.boxes) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    cells = {}
    for cell in sweep["cells"]:
        (output,) = cell["outputs"]
        cells[cell["row"], cell["column"]] = (
            decoded(api, output["video_url"], tmp_path),
            png(api, output["poster_url"]),
        )
    for key, (video, poster) in cells.items():
        box = layout.boxes[key]
        assert box[2:] == (128, 128)
        assert psnr(crop(frames, box), video) > 30, key  # every tile plays its own cell...
        others = [other for other_key, (other, _) in cells.items() if not np.array_equal(other, video)]
        assert all(psnr(crop(frames, box), other) < psnr(crop(frames, box), video) for other in others), key
        assert np.array_equal(crop(sheet, box), poster), key  # ...and the sheet shows its poster exactly

    # Row = LoRA, column = multiplier: at 0 neither LoRA changes a thing, at 1 they differ.
    assert np.array_equal(cells[0, 0][0], cells[1, 0][0])
    assert not np.array_equal(cells[0, 1][0], cells[1, 1][0])


@pytest.mark.django_db(transaction=True)
def test_a_canceled_cell_is_a_blank_tile_until_a_retry_renders_it(api, workers, tmp_path):
    created = create(api, [{"field": "seed", "values": [7, 8]}])
    second = next(cell["job"] for cell in created["cells"] if cell["row"] == 1)
    assert api.post(f"/api/v1/jobs/{second}/cancel/").json()["status"] == "canceled"
    sweep = settled(api, created["id"])
    assert (sweep["counts"]["succeeded"], sweep["counts"]["canceled"]) == (1, 1)
    (grid,) = sweep["grids"]
    layout = layout_of(created["id"])
    blank = crop(png(api, grid["image_url"]), layout.boxes[1, 0])
    grey = (blank == BLANK_COLOR).all(axis=-1)
    assert 0.8 < grey.mean() < 1  # uniform grey apart from its note ("canceled")
    tile = crop(decoded(api, grid["video_url"], tmp_path), layout.boxes[1, 0])
    assert np.median(tile) == pytest.approx(128, abs=2)

    assert api.post(f"/api/v1/jobs/{second}/retry/").status_code == 200
    again = settled(api, created["id"], until=lambda s: s["counts"]["succeeded"] == 2 and s["grids"] != sweep["grids"])
    (grid,) = again["grids"]
    cell = next(c for c in again["cells"] if c["row"] == 1)
    video = decoded(api, cell["outputs"][0]["video_url"], tmp_path)
    assert psnr(crop(decoded(api, grid["video_url"], tmp_path), layout_of(created["id"]).boxes[1, 0]), video) > 30
