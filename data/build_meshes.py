"""Rebuild the LEGO-MAD meshes in data/meshes/ from an LDraw parts library.

    python data/build_meshes.py /path/to/ldraw            # e.g. Debian's ldraw-parts-free: /usr/share/ldraw
    python data/build_meshes.py /path/to/ldraw --out ../heldout --part 07Penguin=26074p01.dat:0   # any part

Needs the `ldraw` extra (`pip install ldraw2mesh`). Each class is one LDraw part in one colour. The script
writes a one-line LDraw model per class, converts it to glTF with ldraw2mesh (which stores linear-light
colours), then writes a binary PLY per class with z up, LDraw's sRGB colours per face and the smooth vertex
normals ldraw2mesh computed (split at hard edges), plus data/meshes/classes.json with the part titles, the
colours and the authors of every LDraw file used (the CC BY 4.0 attribution).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

# Class name -> (LDraw part file, LDraw colour code). The names follow MAD's "NNName" style.
CLASSES: dict[str, tuple[str, int]] = {
    "01Cat": ("13786p02.dat", 84),  # Medium Nougat, printed chest, muzzle and stripes
    "02Puppy": ("93088p02.dat", 15),  # White, printed eyes, nose and brown patch and spots
    "03Pig": ("87621p02.dat", 29),  # Bright Pink, printed eyes and black spots
    "04Owl": ("92084p01.dat", 70),  # Reddish Brown, printed beak, eyes and chest feathers
    "05Parrot": ("2546p02.dat", 4),  # Red, printed green wings and tail
    "06Turtle": ("67040p01.dat", 2),  # Green, printed eyes and shell
}

HERE = Path(__file__).resolve().parent


def _index(library: Path) -> dict[str, Path]:
    """Lower-case relative names ("s/13786s01.dat", "4-4cyli.dat") -> files, as LDraw resolves them."""
    index: dict[str, Path] = {}
    for sub in ("p", "parts", "models"):  # later folders win, so parts/ beats p/ for equal names
        root = library / sub
        for f in root.rglob("*.dat"):
            index[f.relative_to(root).as_posix().lower()] = f
    return index


def _authors(part: str, index: dict[str, Path]) -> tuple[str, list[str]]:
    """The part's title and the sorted authors of every file it references, recursively."""
    seen: set[str] = set()
    authors: set[str] = set()
    stack = [part.lower()]
    title = ""
    while stack:
        name = stack.pop()
        if name in seen or name not in index:
            continue
        seen.add(name)
        for line in index[name].read_text(errors="replace").splitlines():
            line = line.strip()
            if not title and name == part.lower() and line.startswith("0 "):
                title = line[2:].strip()
            m = re.match(r"0\s+Author:\s*(.+)", line)
            if m:
                authors.add(m.group(1).strip())
            if line.startswith("1 "):
                ref = line.split(maxsplit=14)[-1].replace("\\", "/").lower()
                stack.append(ref)
    return title, sorted(authors)


def _ldconfig_srgb(library: Path) -> dict[str, tuple[int, int, int]]:
    """LDraw colour name -> sRGB bytes, from LDConfig.ldr."""
    colours = {}
    for line in (library / "LDConfig.ldr").read_text(errors="replace").splitlines():
        m = re.match(r"0\s+!COLOUR\s+(\S+)\s+CODE\s+(\d+)\s+VALUE\s+#([0-9A-Fa-f]{6})", line.strip())
        if m:
            rgb = tuple(int(m.group(3)[i : i + 2], 16) for i in (0, 2, 4))
            colours[m.group(1)] = rgb
            colours[m.group(2)] = rgb
    return colours


def _linear_to_srgb_bytes(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=np.float64), 0, 1)
    s = np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)
    return np.rint(s * 255).astype(np.uint8)


def build_class(name: str, part: str, colour: int, library: Path, out_dir: Path, srgb: dict) -> dict:
    """Convert one part to data/meshes/<name>.ply and return its manifest entry."""
    import trimesh
    from ldraw2mesh import convert

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / f"{name.lower()}.ldr"  # ldraw2mesh lower-cases names
        model.write_text(f"0 {name}\n1 {colour} 0 0 0 1 0 0 0 1 0 0 0 1 {part}\n")
        glb = Path(tmp) / f"{name}.glb"
        convert(model, glb, ldraw_library=library)
        scene = trimesh.load(str(glb), process=False)
    verts, faces, cols, norms, offset = [], [], [], [], 0
    for node in scene.graph.nodes_geometry:
        transform, gname = scene.graph[node]
        geom = scene.geometry[gname]
        mat = geom.visual.material
        if getattr(mat, "name", None) in srgb:  # exact sRGB from LDConfig
            rgb = np.array(srgb[mat.name], dtype=np.uint8)
        else:  # glTF base colours are linear light
            rgb = _linear_to_srgb_bytes(np.asarray(mat.baseColorFactor[:3], dtype=np.float64) / 255.0)
        g = geom.copy()
        g.apply_transform(transform)
        verts.append(np.asarray(g.vertices))
        faces.append(np.asarray(g.faces) + offset)
        norms.append(np.asarray(g.vertex_normals))
        cols.append(np.tile(rgb, (len(g.faces), 1)))
        offset += len(g.vertices)
    v, f, c, n = map(np.concatenate, (verts, faces, cols, norms))
    used, f = np.unique(f, return_inverse=True)  # glTF primitives share vertices: keep the used ones
    v, n, f = v[used], n[used], f.reshape(-1, 3)
    rot = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # glTF y up -> z up
    v, n = v @ rot.T, n @ rot.T
    v = (v - 0.5 * (v.min(0) + v.max(0))) * 1000.0  # millimetres, centred
    mesh = trimesh.Trimesh(v.astype(np.float32), f, vertex_normals=n.astype(np.float32), process=False)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, face_colors=np.c_[c, np.full(len(c), 255, np.uint8)])
    out = out_dir / f"{name}.ply"
    out.write_bytes(trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=True))
    return {"name": name, "mesh": out.name, "faces": int(len(f)), "colour_code": colour}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", type=Path, help="LDraw library folder (holds LDConfig.ldr and parts/)")
    parser.add_argument("--out", type=Path, default=HERE / "meshes", help="output folder")
    parser.add_argument(
        "--part",
        action="append",
        default=[],
        metavar="NAME=PART:COLOUR",
        help="build this part in this LDraw colour code instead of the shipped classes (repeatable), "
        "e.g. 07Penguin=26074p01.dat:0",
    )
    args = parser.parse_args(argv)
    classes = CLASSES
    if args.part:
        classes = {}
        for spec in args.part:
            m = re.fullmatch(r"([^=]+)=([^:]+\.dat):(\d+)", spec.strip())
            if not m:
                example = "07Penguin=26074p01.dat:0"
                print(f"--part {spec!r}: expected NAME=PART.dat:COLOUR, e.g. {example}", file=sys.stderr)
                return 2
            classes[m.group(1)] = (m.group(2), int(m.group(3)))
    library = args.library.expanduser().resolve()
    if not (library / "LDConfig.ldr").is_file() or not (library / "parts").is_dir():
        print(f"{library}: not an LDraw library (needs LDConfig.ldr and parts/)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    index, srgb = _index(library), _ldconfig_srgb(library)
    manifest = []
    for name, (part, colour) in classes.items():
        if part.lower() not in index:
            print(f"{library / 'parts' / part}: part not found in the library", file=sys.stderr)
            return 2
        entry = build_class(name, part, colour, library, args.out, srgb)
        title, authors = _authors(part, index)
        entry.update(part=part, title=title, authors=authors, licence="CC BY 4.0 (LDraw.org Parts Library)")
        manifest.append(entry)
        print(f"{name}: {part} ({title}), {entry['faces']} faces, {len(authors)} authors")
    (args.out / "classes.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
