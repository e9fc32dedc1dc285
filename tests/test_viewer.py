import base64
import html
import json
import math
import re
import socket
import time
import urllib.request

import numpy as np
import pytest
import torch

from splatlab.cameras import perturb_viewmat, ring_rig, viewmat_to_opengl_c2w
from splatlab.splats import random_splats, save_ply
from splatlab.viz.display import viewmat_to_pose
from splatlab.viz.viewer import SplatViewer, free_port, open_run, view_cli


def small_rig(width=32, height=24):
    return ring_rig(elevations_deg=(0.0, 30.0), azimuth_step_deg=90.0, width=width, height=height)


def assert_port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))  # raises OSError if the server still holds it


def decode_embed(html):
    """The messages of the scene recorded in viser's standalone HTML (base64 → zstd → msgpack)."""
    import msgspec
    import zstandard

    raw = base64.b64decode(re.search(r'__VISER_EMBED_DATA__="([^"]+)"', html).group(1))
    size = int.from_bytes(raw[:8], "little")
    inner = zstandard.ZstdDecompressor().decompress(raw[8:], max_output_size=size)
    n = int.from_bytes(inner[:8], "little")
    return msgspec.msgpack.decode(inner[8 : 8 + n])


# ------------------------------------------------------------------------------------------------ the server


def test_server_serves_scene_and_releases_port():
    cams = small_rig()
    images = torch.rand(len(cams), 24, 32, 3, generator=torch.Generator().manual_seed(0))
    with SplatViewer() as viewer:
        port = viewer.port
        assert viewer.server.get_host() == "127.0.0.1" and viewer.url == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(viewer.url + "/", timeout=10) as response:
            assert response.status == 200
            assert b"<html" in response.read(4096).lower()
        viewer.add_splats(random_splats(64, seed=1))
        frusta = viewer.add_cameras(cams, images, thumbnail_size=16)
        viewer.add_query(cams.viewmats[0], images[0], anomaly_map=torch.rand(7, 7))
        scene = viewer.server.scene
        expected = ["/splats", "/query"] + [f"/train/cam_{i:03d}" for i in range(len(cams))]
        for name in expected:
            assert scene.get_handle_by_name(name) is not None, name
        assert set(expected) <= set(viewer.nodes)
        assert frusta[0].image.shape == (12, 16, 3)  # thumbnail, longer side 16
        wxyz, position = viewmat_to_pose(cams.viewmats[3])
        np.testing.assert_allclose(frusta[3].position, position, atol=1e-6)
        np.testing.assert_allclose(np.abs(frusta[3].wxyz @ wxyz), 1.0, atol=1e-6)
    assert_port_free(port)
    viewer.stop()  # a second stop is harmless


def test_trajectory_player_steps_and_plays():
    cams = small_rig()
    target = cams.viewmats[1]
    traj = torch.stack([perturb_viewmat(target, 12.0 - 2 * i, 0.1 * (6 - i), seed=3) for i in range(7)])
    renders = torch.rand(3, 24, 32, 3, generator=torch.Generator().manual_seed(1))
    with SplatViewer() as viewer:
        viewer.add_cameras(cams)
        player = viewer.add_trajectory(traj, renders, image_steps=[0, 3, 6], target_viewmat=target)
        for node in ("path", "start", "target", "camera"):
            assert viewer.server.scene.get_handle_by_name(f"/trajectory/{node}") is not None
        frustum = viewer.server.scene.get_handle_by_name("/trajectory/camera")
        player.step = 4
        np.testing.assert_allclose(frustum.position, viewmat_to_pose(traj[4])[1], atol=1e-6)
        assert player.slider.value == 4 and player._shown_image == 1  # the render of step 3
        player.slider.value = 6  # as the GUI would
        np.testing.assert_allclose(frustum.position, viewmat_to_pose(traj[6])[1], atol=1e-6)
        with pytest.raises(ValueError, match="step"):
            player.step = 7
        player.fps.value = 50
        player.play()
        deadline = time.monotonic() + 10.0
        while player.step == 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        player.pause()
        assert player.step != 6 and not player.playing
        port = viewer.port
    assert_port_free(port)


def test_trajectory_takes_a_step_dict_of_renders_of_any_size():
    cams = small_rig()
    traj = torch.stack([perturb_viewmat(cams.viewmats[2], 6.0 - i, seed=5) for i in range(6)])
    renders = {0: torch.zeros(12, 16, 3), 4: torch.ones(24, 32, 3)}  # a pyramid step, then full size
    with SplatViewer() as viewer:
        player = viewer.add_trajectory(traj, renders, K=cams.Ks[0])
        frustum = viewer.server.scene.get_handle_by_name("/trajectory/camera")
        assert frustum.image.shape == (12, 16, 3) and frustum.image.max() == 0
        assert frustum.fov == pytest.approx(2 * math.atan(12.0 / float(cams.Ks[0, 1, 1])))  # full-size K
        player.step = 5
        assert frustum.image.shape == (24, 32, 3) and frustum.image.min() == 255
        with pytest.raises(ValueError, match="keys"):
            viewer.add_trajectory(traj, renders, image_steps=[0, 4], name="/other")


def test_embed_returns_html_with_recorded_scene_and_animation():
    cams = small_rig()
    traj = torch.stack([perturb_viewmat(cams.viewmats[0], 8.0 - i, 0.05 * i, seed=0) for i in range(5)])
    with SplatViewer() as viewer:
        viewer.add_splats(random_splats(32, seed=2))
        viewer.add_cameras(cams)
        viewer.add_trajectory(traj)
        shown = viewer.embed(height=320)
        static = viewer.to_html(animate=False)
    assert "<iframe" in shown.data and 'height="320"' in shown.data
    assert "__VISER_EMBED_DATA__" in static
    recorded = decode_embed(static)
    names = {m.get("name") for _, m in recorded["messages"]}
    assert {"/splats", "/train/cam_000", "/trajectory/camera", "/trajectory/path"} <= names
    assert recorded["durationSeconds"] == 0.0
    animated = decode_embed(html.unescape(shown.data))  # the iframe's srcdoc holds the escaped page
    assert animated["durationSeconds"] > 0.4  # five steps at 10 fps plus a hold
    moves = [t for t, m in animated["messages"] if m.get("name") == "/trajectory/camera" and t > 0]
    assert len(moves) >= 4


def test_save_html_is_atomic_and_checks_folder(tmp_path):
    with SplatViewer() as viewer:
        viewer.add_splats(random_splats(8))
        out = viewer.save_html(tmp_path / "scene.html")
        with pytest.raises(FileNotFoundError, match="does not exist"):
            viewer.save_html(tmp_path / "missing" / "scene.html")
    assert out.read_text().startswith("<!doctype html>")
    assert [p.name for p in tmp_path.iterdir()] == ["scene.html"]


# ------------------------------------------------------------------------------------------------ run folders


def write_tiny_class(class_dir, cams, size=16):
    from PIL import Image

    (class_dir / "train" / "good").mkdir(parents=True)
    frames = []
    for i in range(len(cams)):
        image = np.full((size, size, 3), 25 * i, np.uint8)
        Image.fromarray(image).save(class_dir / "train" / "good" / f"{i}.png")
        c2w = viewmat_to_opengl_c2w(cams.viewmats[i].double())
        frames.append({"file_path": f"train/good/{i}.png", "transform_matrix": c2w.tolist()})
    angle = 2 * math.atan(0.5 * cams.width / float(cams.Ks[0, 0, 0]))
    (class_dir / "transforms.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))


def test_open_run_loads_splats_and_training_cameras(tmp_path):
    cams = small_rig(16, 16)
    write_tiny_class(tmp_path / "cls", cams)
    run = tmp_path / "run"
    run.mkdir()
    save_ply(random_splats(20, seed=4), run / "splats.ply")
    # the run folder names its training data relative to itself (splatlab.run)
    (run / "config.json").write_text(json.dumps({"data": {"class_dir": "../cls", "size": None}}))
    with SplatViewer() as viewer:
        open_run(viewer, run, max_cameras=5, thumbnail_size=8)
        assert viewer.server.scene.get_handle_by_name("/splats") is not None
        train = [n for n in viewer.nodes if n.startswith("/train/")]
        assert len(train) == 5
        # the camera poses come back from the OpenGL transforms.json unchanged
        first = viewer.server.scene.get_handle_by_name("/train/cam_000")
        np.testing.assert_allclose(first.position, viewmat_to_pose(cams.viewmats[0])[1], atol=1e-5)


def test_view_of_a_trained_run_shows_its_training_cameras(small_run, small_class, caplog):
    """`splatlab train` names its class folder in config.json, so `splatlab view RUN_DIR` alone finds the
    training cameras (issue 17: it used to show the splats only)."""
    from splatlab.cli import main
    from splatlab.data.mad import load_train

    cams = load_train(small_class).cameras
    with SplatViewer() as viewer:
        open_run(viewer, small_run, max_cameras=len(cams), thumbnail_size=8)
        train = sorted(n for n in viewer.nodes if n.startswith("/train/"))
        assert len(train) == len(cams)
        last = viewer.server.scene.get_handle_by_name(train[-1])
        np.testing.assert_allclose(last.position, viewmat_to_pose(cams.viewmats[-1])[1], atol=1e-5)
    with caplog.at_level("INFO", logger="splatlab"):
        assert main(["view", str(small_run), "--port", str(free_port()), "--seconds", "0.1",
                     "--max-cameras", "7", "--thumbnail-size", "8"]) == 0
    assert f"{small_class}: 7 training cameras" in caplog.text


def test_view_of_a_run_whose_data_moved_shows_the_splats_and_says_where(small_run, tmp_path, caplog, capsys):
    from splatlab.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "splats.ply").write_bytes((small_run / "splats.ply").read_bytes())
    (run / "config.json").write_text(json.dumps({"data": {"class_dir": "../moved", "size": 48}}))
    with SplatViewer() as viewer, caplog.at_level("WARNING", logger="splatlab"):
        open_run(viewer, run)
        assert viewer.server.scene.get_handle_by_name("/splats") is not None
        assert not [n for n in viewer.nodes if n.startswith("/train/")]
    assert str(tmp_path / "moved") in caplog.text and "--data" in caplog.text
    # the folder the message names is the option `splatlab view` takes; a folder that is no class is an error
    args = ["--data", str(tmp_path), "--port", str(free_port()), "--seconds", "0.1"]
    assert main(["view", str(run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("splatlab view: ") and f"{tmp_path}: not a class folder" in err and "\n" not in err


def test_open_run_errors_name_the_missing_path(tmp_path):
    with SplatViewer() as viewer:
        with pytest.raises(FileNotFoundError, match="nowhere"):
            open_run(viewer, tmp_path / "nowhere")
        with pytest.raises(FileNotFoundError, match="splats.ply"):
            open_run(viewer, tmp_path)


def test_view_cli_missing_run_is_a_clear_error(tmp_path, capsys):
    from splatlab.cli import main

    assert main(["view", str(tmp_path / "nowhere"), "--port", str(free_port()), "--seconds", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("splatlab view: ") and "nowhere/splats.ply: not found" in err and "\n" not in err


def test_view_cli_serves_for_a_while_then_stops(tmp_path):
    save_ply(random_splats(10), tmp_path / "splats.ply")
    port = free_port()
    assert view_cli(tmp_path, port=port, seconds=0.5) == 0
    assert_port_free(port)
