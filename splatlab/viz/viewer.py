"""An interactive 3D viewer for splats, cameras and pose trajectories, built on viser.

viser follows the OpenCV camera convention for frustums (+x right, +y down, +z forward), like splatlab, so a
frustum's pose is simply the camera→world matrix ``inv(viewmat)``. The viewer binds 127.0.0.1 unless asked
otherwise, and is a context manager that always stops its server::

    with SplatViewer() as viewer:
        viewer.add_splats(splats)
        viewer.add_cameras(views.cameras, views.images)
        viewer.embed(height=500)  # a self-contained HTML view for the notebook, no browser needed

``splatlab view RUN_DIR`` opens a training run folder in the browser.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro
from torch import Tensor

from splatlab.viz.display import frustum_shape, heat_overlay, splats_to_viser, to_uint8, viewmat_to_pose

log = logging.getLogger(__name__)

TRAIN_COLOR = (90, 90, 90)
QUERY_COLOR = (220, 40, 40)
TRAJECTORY_COLOR = (255, 140, 0)
TARGET_COLOR = (30, 160, 60)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------------------------
# Trajectory playback
# ----------------------------------------------------------------------------------------------------------


class TrajectoryPlayer:
    """Steps a frustum through a pose history; driven by a GUI slider, a play button, or :attr:`step`.

    Created by :meth:`SplatViewer.add_trajectory`; not meant to be built directly.
    """

    def __init__(self, server, frustum, viewmats: Tensor, images, image_steps, fps: float, name: str):
        self._frustum = frustum
        self._poses = [viewmat_to_pose(v) for v in viewmats]
        self._images = images
        self._image_steps = np.asarray(image_steps, dtype=np.int64)
        self._shown_image = -1
        self._playing = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        n = len(self._poses)
        with server.gui.add_folder(f"Trajectory {name}"):
            self.slider = server.gui.add_slider("step", min=0, max=max(n - 1, 1), step=1, initial_value=0,
                                                disabled=n < 2)
            self.button = server.gui.add_button("Play", disabled=n < 2)
            self.fps = server.gui.add_slider("fps", min=1, max=60, step=1, initial_value=int(fps))
        self.slider.on_update(lambda _: self._show(int(self.slider.value)))
        self.button.on_click(lambda _: self.pause() if self.playing else self.play())
        self._show(0)

    @property
    def n_steps(self) -> int:
        return len(self._poses)

    @property
    def step(self) -> int:
        """The step shown now; assigning it moves the frustum (and the GUI slider)."""
        return int(self.slider.value)

    @step.setter
    def step(self, value: int) -> None:
        if not 0 <= int(value) < self.n_steps:
            raise ValueError(f"step must be in [0, {self.n_steps - 1}], got {value}")
        if int(value) == self.step:
            self._show(int(value))
        else:
            self.slider.value = int(value)  # the slider's callback moves the frustum

    @property
    def playing(self) -> bool:
        return self._playing.is_set()

    def play(self) -> None:
        """Advance one step per 1/fps seconds (looping) until :meth:`pause` or the viewer stops."""
        if self.n_steps < 2 or self._stopped.is_set():
            return
        self._playing.set()
        self.button.label = "Pause"
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="splatlab-trajectory", daemon=True)
            self._thread.start()

    def pause(self) -> None:
        self._playing.clear()
        self.button.label = "Play"

    def close(self) -> None:
        """Stop the playback thread (called by :meth:`SplatViewer.stop`)."""
        self._playing.clear()
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stopped.wait(1.0 / max(float(self.fps.value), 1.0)):
            if self._playing.is_set():
                self.step = (self.step + 1) % self.n_steps

    def _show(self, step: int) -> None:
        step = min(max(int(step), 0), self.n_steps - 1)  # a one-step history still has a 0..1 slider
        wxyz, position = self._poses[step]
        self._frustum.wxyz, self._frustum.position = wxyz, position
        if self._images is not None:
            k = int(np.searchsorted(self._image_steps, step, side="right")) - 1  # last image at or before
            k = max(k, 0)
            if k != self._shown_image:
                self._frustum.image = self._images[k]
                self._shown_image = k


# ----------------------------------------------------------------------------------------------------------
# The viewer
# ----------------------------------------------------------------------------------------------------------


class SplatViewer:
    """A viser server showing splats, training cameras, a query and pose trajectories.

    Args:
        host: Interface to bind; 127.0.0.1 (this machine only) by default, "0.0.0.0" opens it to the network.
        port: TCP port; a free one chosen by the OS when None. viser moves on to the next port if it is busy.
        label: Title of the GUI panel.
        verbose: Let viser print client connections and disconnections (it always prints its URL banner).
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *, label: str = "splatlab",
                 verbose: bool = False):
        if port is not None and not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be in [0, 65535] or None, got {port}")
        import viser

        self.server = viser.ViserServer(host=host, port=0 if port is None else int(port), label=label,
                                        verbose=verbose)
        self.host = host
        self.port = int(self.server.get_port())
        self.nodes: list[str] = []  # scene node names added by this viewer, in order
        self.players: dict[str, TrajectoryPlayer] = {}
        self._frustum: tuple[float, float] | None = None  # (fov_y, aspect) of the last cameras added
        self._scene_radius: float | None = None
        self._view_set = False
        self._stopped = False
        log.info("viser viewer at %s", self.url)

    # -- life cycle --------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop playback threads and the server, releasing the port. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        for player in self.players.values():
            player.close()
        self.server.stop()
        log.info("viser viewer at %s stopped", self.url)

    def __enter__(self) -> SplatViewer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- scene content -----------------------------------------------------------------------------------

    def add_splats(self, splats, name: str = "/splats"):
        """Show splats (degree-0 colour). ``splats``: our ``ParameterDict`` layout. Returns viser's handle."""
        p = splats_to_viser(splats)
        handle = self.server.scene.add_gaussian_splats(name, p["centers"], p["covariances"], p["rgbs"],
                                                       p["opacities"])
        self.nodes.append(name)
        if self._scene_radius is None and len(p["centers"]):
            self._scene_radius = 3.0 * float(np.quantile(np.linalg.norm(p["centers"], axis=1), 0.9))
            self._default_view()
        return handle

    def add_cameras(self, cameras, images=None, *, name: str = "/train", thumbnail_size: int = 64,
                    scale: float | None = None, color: tuple[int, int, int] = TRAIN_COLOR) -> list:
        """Show a :class:`~splatlab.cameras.Cameras` batch as frusta, with image thumbnails when given.

        Args:
            cameras: The cameras (OpenCV viewmats). [C]
            images: Their images, float in [0, 1]. [C, H, W, 3]
            name: Parent node; frusta are ``{name}/cam_000`` and so on.
            thumbnail_size: Longest side of the thumbnails in pixels.
            scale: Frustum size in world units; 6 % of the rig's radius when None.
            color: Frustum colour, RGB 0-255.

        Returns:
            The frustum handles, one per camera.
        """
        n = len(cameras)
        if images is not None and (len(images) != n or tuple(images.shape[-1:]) != (3,) or images.ndim != 4):
            raise ValueError(f"images must be [C, H, W, 3] with C={n}, got {tuple(images.shape)}")
        centers = cameras.centers.detach().double().cpu()
        radius = float((centers - centers.mean(0)).norm(dim=-1).mean()) if n > 1 else float(centers.norm())
        scale = 0.06 * max(radius, 1e-3) if scale is None else float(scale)
        fov, aspect = frustum_shape(cameras.Ks[0].cpu(), cameras.width, cameras.height)
        handles = []
        for i in range(n):
            wxyz, position = viewmat_to_pose(cameras.viewmats[i])
            image = None if images is None else to_uint8(images[i], thumbnail_size)
            node = f"{name}/cam_{i:03d}"
            handles.append(self.server.scene.add_camera_frustum(
                node, fov=fov, aspect=aspect, scale=scale, color=color, image=image, wxyz=wxyz,
                position=position, thickness=0.1 * scale,
            ))
            self.nodes.append(node)
        self._frustum = (fov, aspect)
        if n:
            self._scene_radius = max(self._scene_radius or 0.0, 1.6 * float(centers.norm(dim=-1).max()))
            self._default_view()
        return handles

    def add_query(self, viewmat: Tensor, image, anomaly_map=None, *, K: Tensor | None = None,
                  name: str = "/query", alpha: float = 0.5, vmax: float | None = None,
                  scale: float | None = None, thumbnail_size: int = 256,
                  color: tuple[int, int, int] = QUERY_COLOR):
        """Show a query camera with its image, or the image under its anomaly map, on the frustum.

        Args:
            viewmat: The query's (estimated) world→camera matrix. [4, 4]
            image: The query image, float in [0, 1]. [H, W, 3]
            anomaly_map: Its anomaly map, any size (resized to the image). [h, w]
            K: Intrinsics at the image's size; the last added cameras' field of view when None. [3, 3]
            name: Node name.
            alpha: Weight of the heat map over the image.
            vmax: Score shown hottest (e.g. a calibrated threshold x 2); the map's maximum when None.
            scale: Frustum size; twice the training frusta's when None.
            thumbnail_size: Longest side of the shown image in pixels.
            color: Frustum colour, RGB 0-255.
        """
        image = torch.as_tensor(image).detach().float().cpu()
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image must be [H, W, 3], got {tuple(image.shape)}")
        shown = image.numpy() if anomaly_map is None else heat_overlay(image, anomaly_map, alpha, vmax=vmax)
        fov, aspect = self._fov_for(K, image.shape[1], image.shape[0])
        wxyz, position = viewmat_to_pose(_one_viewmat(viewmat, "viewmat"))
        scale = self._default_scale(2.0) if scale is None else float(scale)
        handle = self.server.scene.add_camera_frustum(
            name, fov=fov, aspect=aspect, scale=scale, color=color, image=to_uint8(shown, thumbnail_size),
            wxyz=wxyz, position=position, thickness=0.1 * scale,
        )
        self.nodes.append(name)
        return handle

    def add_trajectory(self, viewmats: Tensor, images=None, *, image_steps=None, target_viewmat=None,
                       K: Tensor | None = None, name: str = "/trajectory", fps: float = 10.0,
                       scale: float | None = None, thumbnail_size: int = 128) -> TrajectoryPlayer:
        """Show a pose history (a path, the start, the moving camera, the target) with GUI playback.

        Args:
            viewmats: World→camera matrix at every step. [T, 4, 4]
            images: Renders at some steps (shown on the moving frustum), float in [0, 1], or a
                ``{step: render}`` dict such as :attr:`splatlab.pose.PoseResult.renders`. [M, H, W, 3]
            image_steps: The step of each image, increasing; ``range(T)`` when M == T. [M]
            target_viewmat: The ground-truth pose, drawn in green when given. [4, 4]
            K: Intrinsics at the largest image's size; the last added cameras' field of view when None. [3, 3]
            name: Parent node (also names the GUI folder).
            fps: Playback speed in steps per second.
            scale: Frustum size; 1.5 times the training frusta's when None.
            thumbnail_size: Longest side of the shown renders in pixels.

        Returns:
            The player: ``.step``, ``.play()``, ``.pause()``, ``.n_steps``.
        """
        viewmats = torch.as_tensor(viewmats).detach().cpu()
        if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4) or len(viewmats) == 0:
            raise ValueError(f"viewmats must be [T, 4, 4] with T >= 1, got {tuple(viewmats.shape)}")
        if name in self.players:
            raise ValueError(f"a trajectory named {name!r} is already shown")
        T = len(viewmats)
        thumbs, width, height = None, None, None
        if isinstance(images, dict):
            if image_steps is not None:
                raise ValueError("image_steps comes from the keys when images is a {step: image} dict")
            image_steps = sorted(int(k) for k in images)
            images = [images[k] for k in sorted(images)] or None
        if images is not None:
            if len(images) == 0 or any(im.ndim != 3 or im.shape[-1] != 3 for im in images):
                raise ValueError("images must be a non-empty [M, H, W, 3] stack")
            height, width = max((int(im.shape[0]), int(im.shape[1])) for im in images)  # full size
            if image_steps is None:
                if len(images) != T:
                    raise ValueError(f"give image_steps: {len(images)} images for {T} steps")
                image_steps = range(T)
            image_steps = [int(s) for s in image_steps]
            increasing = all(b > a for a, b in zip(image_steps[:-1], image_steps[1:], strict=True))
            in_range = 0 <= image_steps[0] and image_steps[-1] < T
            if len(image_steps) != len(images) or not increasing or not in_range:
                raise ValueError(f"image_steps must be {len(images)} increasing steps in [0, {T - 1}]")
            thumbs = [to_uint8(im, thumbnail_size) for im in images]
        fov, aspect = self._fov_for(K, width, height)
        scale = self._default_scale(1.5) if scale is None else float(scale)
        scene = self.server.scene
        centers = viewmats.double().inverse()[:, :3, 3].numpy()
        if T >= 2:
            scene.add_spline_catmull_rom(f"{name}/path", centers, thickness=0.08 * scale,
                                         color=TRAJECTORY_COLOR)
            self.nodes.append(f"{name}/path")
        wxyz, position = viewmat_to_pose(viewmats[0])
        scene.add_camera_frustum(f"{name}/start", fov=fov, aspect=aspect, scale=0.7 * scale,
                                 color=TRAJECTORY_COLOR, wxyz=wxyz, position=position, thickness=0.05 * scale)
        self.nodes.append(f"{name}/start")
        if target_viewmat is not None:
            wxyz, position = viewmat_to_pose(_one_viewmat(target_viewmat, "target_viewmat"))
            scene.add_camera_frustum(f"{name}/target", fov=fov, aspect=aspect, scale=scale,
                                     color=TARGET_COLOR, wxyz=wxyz, position=position, thickness=0.1 * scale)
            self.nodes.append(f"{name}/target")
        frustum = scene.add_camera_frustum(f"{name}/camera", fov=fov, aspect=aspect, scale=scale,
                                           color=QUERY_COLOR, thickness=0.1 * scale,
                                           image=None if thumbs is None else thumbs[0])
        self.nodes.append(f"{name}/camera")
        player = TrajectoryPlayer(self.server, frustum, viewmats, thumbs, image_steps or [0], fps, name)
        self.players[name] = player
        return player

    def set_view(self, position, look_at=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> None:
        """The initial camera of new browser tabs and of :meth:`embed` (world coordinates)."""
        cam = self.server.initial_camera
        cam.position, cam.look_at, cam.up = tuple(map(float, position)), tuple(map(float, look_at)), \
            tuple(map(float, up))
        self._view_set = True

    # -- notebooks ---------------------------------------------------------------------------------------

    def to_html(self, *, animate: bool = True, fps: float | None = None, dark_mode: bool = False) -> str:
        """The scene as one self-contained HTML page (viser's scene serializer), with no server needed.

        With ``animate``, every trajectory is recorded step by step, so the page plays it back.
        """
        serializer = self.server.get_scene_serializer()
        try:
            if animate and self.players:
                n = max(p.n_steps for p in self.players.values())
                rate = max(float(p.fps.value) for p in self.players.values()) if fps is None else float(fps)
                if rate <= 0:
                    raise ValueError(f"fps must be positive, got {fps}")
                before = {k: p.step for k, p in self.players.items()}
                playing = [p for p in self.players.values() if p.playing]
                for p in playing:
                    p.pause()  # the recording steps the players itself
                for t in range(n):
                    for p in self.players.values():
                        p.step = min(t, p.n_steps - 1)
                    serializer.insert_sleep(1.0 / rate)
                serializer.insert_sleep(max(1.0, 5.0 / rate))  # hold the final pose before looping back
                for k, p in self.players.items():
                    p.step = before[k]
                for p in playing:
                    p.play()
        finally:
            html = serializer.as_html(dark_mode=dark_mode)  # also unregisters the serializer
        return html

    def embed(self, height: int = 500, *, animate: bool = True, fps: float | None = None,
              dark_mode: bool = False):
        """An ``IPython.display.HTML`` object showing the scene inline in a notebook (an iframe)."""
        import html as html_module

        from IPython.display import HTML

        page = html_module.escape(self.to_html(animate=animate, fps=fps, dark_mode=dark_mode), quote=True)
        # Wrapped in a div: IPython warns about a bare iframe.
        return HTML(f'<div style="border:1px solid #ddd"><iframe srcdoc="{page}" width="100%" '
                    f'height="{int(height)}" style="border:none;display:block"></iframe></div>')

    def save_html(self, path: str | os.PathLike, **kwargs) -> Path:
        """Write :meth:`to_html` to ``path`` atomically; open it in any browser."""
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
        from splatlab.atomic import write_text

        write_text(path, self.to_html(**kwargs))
        return path

    # -- helpers -----------------------------------------------------------------------------------------

    def _fov_for(self, K, width, height) -> tuple[float, float]:
        if K is not None:
            if width is None:
                raise ValueError("K needs images to give the image size")
            return frustum_shape(torch.as_tensor(K).reshape(3, 3), width, height)
        if self._frustum is not None:
            return self._frustum[0], (width / height if width else self._frustum[1])
        return math.radians(50.0), (width / height if width else 1.0)

    def _default_scale(self, factor: float) -> float:
        return factor * 0.06 * (self._scene_radius or 4.0) / 1.6

    def _default_view(self) -> None:
        if self._view_set or not self._scene_radius:
            return
        direction = np.array([1.0, 1.0, 0.8]) / np.linalg.norm([1.0, 1.0, 0.8])
        cam = self.server.initial_camera
        cam.position = tuple(direction * self._scene_radius)
        cam.look_at = (0.0, 0.0, 0.0)
        cam.up = (0.0, 0.0, 1.0)


def _one_viewmat(viewmat, arg: str) -> Tensor:
    v = torch.as_tensor(viewmat).detach().cpu()
    if v.shape == (1, 4, 4):
        v = v[0]
    if v.shape != (4, 4):
        raise ValueError(f"{arg} must be [4, 4], got {tuple(v.shape)}")
    return v


# ----------------------------------------------------------------------------------------------------------
# `splatlab view RUN_DIR`
# ----------------------------------------------------------------------------------------------------------

def open_run(viewer: SplatViewer, run_dir: Path, data_dir: Path | None = None, max_cameras: int = 200,
             thumbnail_size: int = 64) -> None:
    """Put a training run into a viewer: ``run_dir/splats.ply`` and its training cameras.

    The cameras come from ``data_dir`` or else from the class folder the run's config.json names
    (:func:`splatlab.run.find_class_dir`); where that is missing, the splats are shown alone, with a warning
    naming the path it expected. A ``data_dir`` that is not a class folder is an error.
    """
    from splatlab.splats import load_ply

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    ply = run_dir / "splats.ply"
    if not ply.is_file():
        raise FileNotFoundError(f"{ply} not found: is {run_dir} a training run folder (splatlab train)?")
    splats = load_ply(ply)
    viewer.add_splats(splats)
    log.info("%s: %d Gaussians", ply, len(splats["means"]))
    from splatlab.data.mad import load_train
    from splatlab.run import find_class_dir

    try:
        data_dir = find_class_dir(run_dir, data_dir)
    except FileNotFoundError as exc:
        if data_dir is not None:  # a folder the user named must be a class folder
            raise
        log.warning("%s; showing the splats only", exc)
        return
    views = load_train(data_dir, size=thumbnail_size)
    keep = torch.linspace(0, len(views.cameras) - 1, min(max_cameras, len(views.cameras))).round().long()
    viewer.add_cameras(views.cameras[keep], views.images[keep], thumbnail_size=thumbnail_size)
    log.info("%s: %d training cameras", data_dir, len(keep))


def view_cli(
    run_dir: tyro.conf.Positional[Path],
    host: str = "127.0.0.1",
    port: int = 8080,
    share: bool = False,
    data: Annotated[Path | None, tyro.conf.arg(aliases=("--data-dir",))] = None,
    max_cameras: int = 200,
    thumbnail_size: int = 64,
    seconds: float | None = None,
) -> int:
    """Open a training run folder in the viser 3D viewer; stop with Ctrl-C.

    Args:
        run_dir: A run folder holding splats.ply (and config.json naming the training data).
        host: Interface to bind; 127.0.0.1 keeps the viewer on this machine.
        port: Port to serve on (the next free one if it is taken).
        share: Bind 0.0.0.0, so other machines on the network can open the viewer.
        data: The run's class folder, for the training cameras, if it has moved (config.json names it).
        max_cameras: Show at most this many training cameras (evenly spaced).
        thumbnail_size: Longest side of the camera thumbnails in pixels.
        seconds: Close after this many seconds instead of waiting for Ctrl-C.
    """
    if not (Path(run_dir) / "splats.ply").is_file():  # before starting a server
        raise FileNotFoundError(f"{Path(run_dir) / 'splats.ply'}: not found; is {run_dir} a run folder of "
                                "`splatlab train`?")
    with SplatViewer(host="0.0.0.0" if share else host, port=port) as viewer:
        open_run(viewer, run_dir, data, max_cameras, thumbnail_size)
        log.info("open %s in a browser; Ctrl-C to stop", viewer.url)
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            log.info("stopping the viewer")
    return 0
