"""Exports: the latent table as CSV and JSON, and a latent's page as a JSON record, read back independently."""

import csv
import json
from pathlib import Path

import pytest

from backend.errors import ExplorerError
from tests.test_ui_handlers import ex  # noqa: F401  (the tiny explorer fixture)
from ui import browse, export
from ui.latents import HEADERS


def test_the_table_as_csv_and_json_reads_back_to_the_bundles_numbers(ex, tmp_path):  # noqa: F811
    with open(export.export_table(ex, "csv", tmp_path), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    records = json.loads(Path(export.export_table(ex, "json", tmp_path)).read_text())
    n = len(ex.table.labels)
    assert len(rows) == len(records) == n and list(rows[0]) == export.TABLE_FIELDS
    for j in (0, n // 2, n - 1):
        assert int(rows[j]["latent"]) == records[j]["latent"] == j
        assert float(rows[j]["frequency"]) == records[j]["frequency"] == pytest.approx(float(ex.bundle.atlas["frequency"][j]))
        assert rows[j]["label"] == records[j]["label"] == ex.table.labels[j]
        assert int(rows[j]["peak_step"]) == ex.table.row(j)[HEADERS.index("peak")]  # the peak step column the app shows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents.csv", "latents.json"]  # no partial files


def test_a_latent_record_holds_what_its_page_shows(ex, tmp_path):  # noqa: F811
    j = 3
    record = json.loads(Path(export.export_latent(ex, str(j), tmp_path)).read_text())
    page = browse.latent_page(ex, j)
    assert record["latent"] == j and record["label"] == ex.table.labels[j]
    shown_ids = [int(caption.split()[1]) for _, caption in page.top_images]  # "image 12 · 2.93 · prompt"
    assert [top["image"] for top in record["top_images"]] == shown_ids
    assert [row[0] for row in page.similar] == [s["latent"] for s in record["similar_latents"]]
    profile = record["profile"]
    assert len(profile["trajectory_per_unit_code"]) == len(profile["recorded_steps"]) == len(ex.recorded_steps)
    assert profile["recorded_steps"][profile["trajectory_per_unit_code"].index(max(profile["trajectory_per_unit_code"]))] == record["peak_step"]


@pytest.mark.parametrize("bad", [-1, 10**6, "x", None])
def test_exporting_an_unknown_latent_is_explained_and_writes_nothing(ex, tmp_path, bad):  # noqa: F811
    with pytest.raises(ExplorerError, match="[Ll]atent"):
        export.export_latent(ex, bad, tmp_path)
    assert list(tmp_path.iterdir()) == []
