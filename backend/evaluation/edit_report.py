"""docs/EDITS.md: the edit tables of generated (edits.py) and uploaded (uploads.py) images, with their goals."""

from pathlib import Path

from backend.evaluation import edits, uploads
from backend.io import atomic_path

KEPT = "<!-- Notes below this line are kept when the table above is measured again. -->"


def write_edit_report(table: dict[str, dict[str, dict]], upload_cells: dict[str, dict[str, dict]], command: str, device: str, path) -> None:
    """docs/EDITS.md: the edit tables of generated and uploaded images, their goals, the command that made them and the
    machine; notes after KEPT stay."""
    path = Path(path)
    notes = path.read_text().split(KEPT, 1)[1] if path.exists() and KEPT in path.read_text() else "\n"
    text = f"""# Concept edits on the shipped bundle

Made by `{command}` on {device}. {edits.__doc__.split(chr(10), 1)[1].strip()}

{edits.markdown(table)}

Goals (issue 25):

{chr(10).join(edits.goal_lines(table))}

## Edits of uploaded images

{uploads.__doc__.split(chr(10), 1)[1].strip()}

{edits.markdown(upload_cells)}

Goals (issue 28):

{chr(10).join(uploads.upload_goal_lines(upload_cells))}

{KEPT}{notes}"""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
