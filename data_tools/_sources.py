"""Image sources for make_shards: a folder tree (FFHQ's layout included) or a zip file
(including a StyleGAN dataset-tool zip with dataset.json). Items are sorted by their path
relative to the root, which fixes every sample's index."""

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Source:
    root: str  # absolute path of the folder or the zip file
    kind: str  # "folder" or "zip"
    items: list[str]  # sorted posix paths relative to root
    labels: dict[str, object] = field(default_factory=dict)  # from a StyleGAN dataset.json

    def listing_sha256(self) -> str:
        return hashlib.sha256("\n".join(self.items).encode()).hexdigest()


def _is_image(name: str) -> bool:
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))
    return not hidden and name.lower().endswith(IMAGE_EXTENSIONS)


def _folder_items(root: Path) -> list[str]:
    items = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        rel_dir = Path(directory).relative_to(root)
        items += [(rel_dir / name).as_posix() for name in files if _is_image(name)]
    return sorted(items)


def _zip_labels(archive: zipfile.ZipFile) -> dict[str, object]:
    if "dataset.json" not in archive.namelist():
        return {}
    labels = json.loads(archive.read("dataset.json")).get("labels") or []
    return {name: label for name, label in labels}


def open_source(path: str) -> Source:
    """List the images under path; a clear error when it is missing, of the wrong kind or empty."""
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"--source {path}: no such file or folder")
    if root.is_dir():
        source = Source(str(root), "folder", _folder_items(root))
    elif zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as archive:
            names = sorted(n for n in archive.namelist() if not n.endswith("/") and _is_image(n))
            source = Source(str(root), "zip", names, _zip_labels(archive))
    else:
        raise ValueError(f"--source {path}: neither a folder nor a zip file")
    if not source.items:
        raise ValueError(
            f"--source {path}: no images ({', '.join(IMAGE_EXTENSIONS)}) found; "
            "point it at the folder or zip holding the images"
        )
    return source


_open_zips: dict[str, zipfile.ZipFile] = {}  # one handle per process (workers open their own)


def forget_open_zips() -> None:
    """Drop handles inherited through fork: a shared file offset would interleave reads."""
    _open_zips.clear()


def read_item(source: Source, name: str) -> bytes:
    """Raw bytes of one item; OSError/KeyError when it cannot be read."""
    if source.kind == "folder":
        return (Path(source.root) / name).read_bytes()
    if source.root not in _open_zips:
        _open_zips[source.root] = zipfile.ZipFile(source.root)
    return _open_zips[source.root].read(name)
