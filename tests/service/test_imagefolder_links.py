"""No symlink leaves an image folder (issue 13).

The service checks that an ``imagefolder:`` path lies inside a data root, but the scan below it
followed every symlink: a class folder (or one image) linked to elsewhere on the machine was read
as data. Links that stay inside the folder still work, and a link back up the tree ends.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from structsearch.data import load_data
from structsearch.errors import DataError, one_line


def _write_png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, value, value)).save(path)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """An image folder with classes ``a`` and ``b``, and an image folder outside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for i, name in enumerate("ab"):
        _write_png(root / name / "0.png", 10 * i)
    _write_png(outside / "secret" / "0.png", 200)
    return root, outside


def _error(spec: str) -> str:
    with pytest.raises(DataError) as e:
        load_data(spec)
    return one_line(e.value)


def test_a_class_folder_linked_outside_is_refused(folders: tuple[Path, Path]) -> None:
    root, outside = folders
    (root / "c").symlink_to(outside / "secret", target_is_directory=True)
    assert _error(f"imagefolder:{root}") == (
        f"DataError: imagefolder {root}: 'c' is a symlink that leads outside the folder; "
        "copy the files in, or point the spec at the folder it leads to"
    )


def test_an_image_or_subfolder_linked_outside_is_refused(folders: tuple[Path, Path]) -> None:
    root, outside = folders
    (root / "b" / "1.png").symlink_to(outside / "secret" / "0.png")
    assert "'b/1.png' is a symlink that leads outside the folder" in _error(f"imagefolder:{root}?size=4x4")
    (root / "b" / "1.png").unlink()
    (root / "a" / "deep").symlink_to(outside, target_is_directory=True)
    assert "'a/deep' is a symlink that leads outside the folder" in _error(f"imagefolder:{root}?size=5x5")


def test_links_inside_the_folder_are_followed_once(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    (root / "b" / "also").symlink_to(root / "a", target_is_directory=True)  # inside: followed
    (root / "a" / "again").symlink_to(root / "a", target_is_directory=True)  # a loop: walked once
    data = load_data(f"imagefolder:{root}")
    assert data.y.tolist() == [0, 1, 1]
    assert data.x[:, 0, 0, 0].tolist() == [0, 10, 0]  # b's own image, then a's through the link
