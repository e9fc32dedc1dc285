"""Detection: pose → render → anomaly map → score and decision, per query and over a class's test set.

:func:`detect` runs SplatPose's pipeline on one query image with a :class:`DetectorModel` (the splats of
the good object, a retriever over its training views, the configs and an optional calibration)::

    model = load_detector(run_dir)          # the run folder names its training data; calibration loaded
    model.calibrate(model.views)            # once, if it has none: good views only, saved in the run folder
    det = detect(query, model)              # det.map, det.score, det.decision, det.times

The defaults are the best measured ones, the same as ``splatlab detect``, ``splatlab demo`` and
``benchmarks/detect.py``: the ``cosine`` anomaly map and the pose preset :func:`splatlab.pose.default_preset`
(``cpu`` on a CPU, ``gpu`` on CUDA). SplatPose's own recipe is one argument away:
``load_detector(run_dir, anomaly=AnomalyConfig.paper(), pose_config=pose_config("splatpose"))``.

``mode`` picks the pipeline or a baseline that shares every other step:

- ``"full"``: coarse retrieval, k hypotheses, gradient refinement (:func:`splatlab.pose.estimate_pose`),
  then render at the refined pose;
- ``"coarse"``: render at the best-retrieved training view's pose, no refinement (baseline a);
- ``"nearest"``: compare with the retrieved training *image* itself, no rendering (baseline b).

Baseline (c), a PatchCore-style memory bank that needs no pose at all, is :class:`MemoryBank` in
:mod:`splatlab.baselines`. :func:`run_class` evaluates any of them on a class's test set and records the
time of every stage; :func:`class_metrics` turns a run into the MAD numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from splatlab.anomaly import (
    AnomalyConfig,
    Calibration,
    CalibrationConfig,
    anomaly_map,
    calibrate,
    image_score,
    resize_map,
)
from splatlab.appearance import align_render
from splatlab.expected_error import (
    ExpectedError,
    expected_error_path,
    fit_expected_error,
    fit_key,
    normalize_map,
    render_expected_error,
)
from splatlab.query import prepare_query, query_padding

log = logging.getLogger(__name__)

Mode = Literal["full", "coarse", "nearest"]
MODES: tuple[str, ...] = ("full", "coarse", "nearest")


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------


def holdout_indices(n_views: int, every: int = 8) -> list[int]:
    """Held-out good views for calibration: every ``every``-th view from 0 (training's eval split)."""
    return list(range(0, int(n_views), int(every)))


@dataclass
class DetectorModel:
    """Everything :func:`detect` needs for one class.

    Args:
        splats: The good object's splats (``ParameterDict`` layout of :mod:`splatlab.splats`).
        retriever: Training views and descriptors (:class:`splatlab.retrieval.Retriever`).
        pose_config: Coarse-to-fine pose settings (:class:`splatlab.pose.PoseConfig`).
        anomaly: How maps are made.
        calibration: Normalisation and threshold from good views; None gives no yes/no decision.
        run_dir: The training run folder, where calibrations are saved.
        views: The training views the retriever indexes (what :meth:`calibrate` holds out), or None.
        expected_error: The splats' expected-error field for ``anomaly`` (:mod:`splatlab.expected_error`);
            None: :meth:`expected_error_field` loads or fits it when ``anomaly.error_floor`` asks for it.
    """

    splats: torch.nn.ParameterDict
    retriever: object
    pose_config: object
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    calibration: Calibration | None = None
    run_dir: Path | None = None
    views: object | None = None
    expected_error: ExpectedError | None = None

    @property
    def height(self) -> int:
        return self.retriever.cameras.height

    @property
    def width(self) -> int:
        return self.retriever.cameras.width

    @property
    def device(self) -> torch.device:
        return self.splats["means"].device

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        views=None,
        pose_config=None,
        anomaly: AnomalyConfig | None = None,
        retrieval: str = "features",
        calibration_source: str | None = "pose",
        device=None,
        data: str | Path | None = None,
    ) -> DetectorModel:
        """Load ``run_dir/splats.ply``, index the training views, and load a saved calibration if any.

        Args:
            run_dir: A training run folder holding ``splats.ply``.
            views: The class's training views (:class:`splatlab.data.TrainViews`), at the run's size; None
                reads them from the class folder the run's ``config.json`` names (or ``data``). [V]
            pose_config: Pose settings; None means the preset :func:`splatlab.pose.default_preset` picks
                for ``device`` (``cpu`` on a CPU, ``gpu`` on CUDA, ``fast`` with SPLATLAB_FAST=1). Its
                ``eps2d`` is replaced by the run's (``config.json``), so the splats render as trained.
            anomaly: Anomaly-map settings; None means :class:`AnomalyConfig`'s defaults (the ``cosine``
                map; ``AnomalyConfig.paper()`` is SplatPose's recipe).
            retrieval: Coarse retrieval method, "features" or "sift".
            calibration_source: Which saved calibration to load ("pose" or "gt_pose"), the one made with
                these map and pose settings; None loads none.
            device: Where to put the splats; None means CPU.
            data: The class folder to read the views from, when it has moved since training.
        """
        from splatlab.pose import default_preset
        from splatlab.pose import pose_config as make_pose_config
        from splatlab.retrieval import Retriever
        from splatlab.run import run_eps2d
        from splatlab.splats import load_ply

        run_dir = Path(run_dir)
        ply = run_dir / "splats.ply"
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: run folder not found")
        if not ply.is_file():
            raise FileNotFoundError(f"{ply}: not found; is {run_dir} a training run folder?")
        if views is None:
            views = _run_views(run_dir, data)
        anomaly = AnomalyConfig() if anomaly is None else anomaly
        splats = load_ply(ply, device=device)
        retriever = Retriever.build(
            views.images, views.cameras, method=retrieval, cache_dir=run_dir, device=device
        )
        pose_config = pose_config or make_pose_config(default_preset(device))
        eps2d = run_eps2d(run_dir)
        if eps2d != pose_config.eps2d:  # render the splats as they were trained
            log.info(
                "%s was trained with eps2d=%g: the pose config's %g is replaced",
                run_dir,
                eps2d,
                pose_config.eps2d,
            )
            pose_config = dataclasses.replace(pose_config, eps2d=eps2d)
        model = cls(splats, retriever, pose_config, anomaly, None, run_dir, views)
        if calibration_source is not None and model.calibration_path(calibration_source).is_file():
            try:
                model.calibration = Calibration.load(model.calibration_path(calibration_source))
            except ValueError as exc:  # a stale or broken cache: calibrating again replaces it
                log.warning("ignoring the saved calibration: %s", exc)
                return model
            if model.calibration.method != anomaly.method:
                raise ValueError(
                    f"{model.calibration_path(calibration_source)} was made for method "
                    f"{model.calibration.method!r}, not {anomaly.method!r}"
                )
        return model

    def expected_error_field(self, progress: bool = True) -> ExpectedError:
        """The expected-error field for this model's map settings: kept, loaded from the run folder, or
        fitted on all the training views and saved there (:meth:`calibrate` leaves each held-out view's own
        map out of the field when it scores that view)."""
        if self.expected_error is not None and self.expected_error.key == fit_key(self.anomaly):
            return self.expected_error
        self.expected_error = None
        path = None if self.run_dir is None else expected_error_path(self.run_dir, self.anomaly)
        if path is not None and path.is_file():
            try:
                self.expected_error = ExpectedError.load(path)
            except ValueError as exc:  # a broken cache: fitting again replaces it
                log.warning("ignoring the saved expected error: %s", exc)
        stale = self.expected_error is not None and (
            self.expected_error.num_gaussians != len(self.splats["means"])
            or self.expected_error.key != fit_key(self.anomaly)
        )
        if stale:
            log.warning("%s does not belong to these splats and map settings: fitting again", path)
            self.expected_error = None
        if self.expected_error is None:
            if self.views is None:
                raise ValueError("anomaly.error_floor needs the training views: give the model its views")
            self.expected_error = fit_expected_error(
                self.splats, self.views, self.anomaly,
                background=torch.tensor(self.pose_config.background, device=self.device),
                eps2d=self.pose_config.eps2d, backend=self.pose_config.backend, progress=progress,
            )
            if path is not None:
                self.expected_error.save(path)
        return self.expected_error

    def calibration_path(self, source: str, mode: Mode = "full") -> Path:
        """The run folder's calibration file for this model's map and pose settings (and ``mode``)."""
        from splatlab.run import calibration_path, settings_key

        if self.run_dir is None:
            raise ValueError("this model has no run_dir to keep calibrations in")
        key = settings_key(self.anomaly, self.pose_config, mode if source == "pose" else "gt_pose")
        return calibration_path(self.run_dir, self.anomaly.method, source, key)

    def calibrate(
        self, views=None, config: CalibrationConfig | None = None, mode: Mode = "full", save: bool = True
    ) -> Calibration:
        """Calibrate on held-out *good* training views (never test images) and keep the result.

        With ``config.source == "pose"`` each held-out view goes through the same pipeline as a test query
        (``mode``), with its own view excluded from retrieval, so the threshold includes pose error; with
        ``"gt_pose"`` it is rendered at its known pose (no pose error: a lower, optimistic threshold).

        Args:
            views: The training views the retriever was built from; None means ``self.views``. [V]
            config: Threshold cut-off ``k``, source and hold-out spacing; None means the defaults.
            mode: The pipeline used for ``source == "pose"``.
            save: Write it into the run folder (atomically), named by the method, the source and a key of
                the map and pose settings (:func:`splatlab.run.settings_key`), so other settings never
                reuse it.
        """
        config = CalibrationConfig() if config is None else config
        views = self.views if views is None else views
        if views is None:
            raise ValueError("calibrate: views is None and the model holds no training views")
        idx = holdout_indices(len(views.images), config.holdout_every)
        maps = []
        for i in idx:
            if config.source == "gt_pose":
                det = detect(views.images[i], self, viewmat=views.cameras.viewmats[i], exclude=[i])
            else:
                det = detect(views.images[i], self, mode=mode, exclude=[i])
            maps.append(det.map)
        self.calibration = calibrate(torch.stack(maps), self.anomaly.method, config)
        log.info(
            "calibrated on %d held-out good views (%s): threshold %.4g",
            len(idx),
            config.source,
            self.calibration.threshold,
        )
        if save and self.run_dir is not None:
            self.calibration.save(self.calibration_path(config.source, mode))
        return self.calibration


def _run_views(run_dir: Path, data: str | Path | None):
    """The training views of a run, from the class folder its config.json names (or ``data``)."""
    from splatlab.data.mad import load_train
    from splatlab.run import find_class_dir, read_config

    class_dir = find_class_dir(run_dir, data)
    config, section = read_config(run_dir)
    size = section.get("size") if section else config.resolution
    return load_train(class_dir, size)


def load_detector(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    anomaly: AnomalyConfig | None = None,
    pose_config=None,
    calibration_source: str | None = "pose",
    device=None,
) -> DetectorModel:
    """The detector of a run folder, with nothing else to give: ``load_detector("runs/01Cat-cpu-128px")``.

    Reads the splats, the training views from the class folder the run's ``config.json`` names (relative to
    the run folder where it can be), the eps2d the splats were trained with and the saved calibration of
    the anomaly method, if there is one (:meth:`DetectorModel.calibrate` makes it). The defaults are the
    best measured ones, as everywhere in splatlab: the ``cosine`` map and the pose preset
    :func:`splatlab.pose.default_preset` picks for ``device``.

    Args:
        run_dir: A run folder of ``splatlab train`` or ``ensure_trained``.
        data: The class folder, when it is no longer where the run's config.json says.
        anomaly: Anomaly-map settings; ``AnomalyConfig.paper()`` is SplatPose's recipe.
        pose_config: Pose settings; ``pose_config("splatpose")`` is the paper's refinement.
        calibration_source: Which saved calibration to load ("pose" or "gt_pose"); None loads none.
        device: Where to put the splats and run; None means CPU.

    Raises:
        FileNotFoundError: No run folder or ``splats.ply``, or the class folder is not where the run says
            (the message names the path it expected and ``data=``).
    """
    return DetectorModel.from_run(run_dir, None, pose_config=pose_config, anomaly=anomaly,
                                  calibration_source=calibration_source, device=device, data=data)


# ----------------------------------------------------------------------------------------------------------
# One query
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Detection:
    """The result of :func:`detect` for one query.

    Args:
        query: The query as used (RGB, the model's size). [H, W, 3]
        reference: The good object at the estimated pose (rendered, or the nearest training image). [H, W, 3]
        viewmat: The pose the reference was made at. [4, 4]
        map: Anomaly map at the anomaly config's size. [S, S]
        map_full: The map resized (bilinear) to the size of the query as given. [H0, W0]
        score: Image score, the map's maximum.
        normalized_score: The score on the calibrated scale (1 = threshold), or None without calibration.
        decision: True = defective, None without calibration.
        times: Seconds per stage: "coarse", "hypotheses" (on the PnP routes: the PnP stage), "refine",
            "render", "score", "total".
        pose: The pose estimate with its history (``mode="full"``), else None.
        retrieved: Index of the best-retrieved training view (None when the pose was given).
    """

    query: Tensor
    reference: Tensor
    viewmat: Tensor
    map: Tensor
    map_full: Tensor
    score: float
    normalized_score: float | None
    decision: bool | None
    times: dict[str, float]
    pose: object | None = None
    retrieved: int | None = None


def render_reference(model: DetectorModel, viewmat: Tensor, query: Tensor | None = None) -> Tensor:
    """The good object at ``viewmat``, with the pose config's background and eps2d. [4, 4] -> [H, W, 3]

    With a ``query`` [H, W, 3], the render is photometrically aligned to it as ``model.anomaly.appearance``
    says (:mod:`splatlab.appearance`).
    """
    from splatlab.cameras import Cameras
    from splatlab.splats import render_splats

    cams = model.retriever.cameras
    dev = model.device
    cam = Cameras(
        viewmat.to(dev, torch.float32)[None], cams.Ks[:1].to(dev, torch.float32), cams.width, cams.height
    )
    background = torch.tensor(model.pose_config.background, device=dev)
    with torch.no_grad():
        img, alpha, _ = render_splats(
            model.splats,
            cam,
            background=background,
            backend=model.pose_config.backend,
            eps2d=model.pose_config.eps2d,
        )
        if query is not None and model.anomaly.appearance != "none":
            target = query.to(dev, img.dtype)[None]
            img = align_render(img, alpha, target, model.anomaly.appearance, background)
    return img[0].clamp(0, 1).cpu()


def detect(
    query,
    model: DetectorModel,
    *,
    mode: Mode = "full",
    viewmat: Tensor | None = None,
    exclude: list[int] | None = None,
    name: str = "query",
) -> Detection:
    """Detect anomalies in one query image of unknown pose.

    Args:
        query: RGB image on white: float [0, 1] or uint8; grayscale/RGBA are converted, another size is
            padded to the model's aspect ratio and resized, see :func:`prepare_query`. [H, W, 3]
        model: Splats, retriever, configs and calibration of the class.
        mode: "full" (retrieve + refine + render), "coarse" (render at the retrieved view, no refinement)
            or "nearest" (compare with the retrieved training image, no rendering).
        viewmat: A known pose to render at instead of estimating one (teaching, calibration, tests). [4, 4]
        exclude: Training views not to retrieve nor to take the expected error from (a held-out view's own
            index). [E]
        name: What messages call the query (e.g. its file name).

    Returns:
        The :class:`Detection`; ``map_full`` is cut back to the query as given (the pad removed).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    cal = model.calibration
    if cal is not None and cal.method != model.anomaly.method:
        raise ValueError(
            f"calibration was made for method {cal.method!r}, the model uses {model.anomaly.method!r}"
        )
    raw_hw = tuple(np.shape(query)[:2])
    q = prepare_query(query, model.height, model.width, name)
    times = {"coarse": 0.0, "hypotheses": 0.0, "refine": 0.0, "render": 0.0, "score": 0.0}
    pose, retrieved, reference = None, None, None
    if viewmat is not None:
        vm = torch.as_tensor(viewmat, dtype=torch.float32).cpu()
        if vm.shape != (4, 4):
            raise ValueError(f"viewmat must be [4, 4], got {tuple(vm.shape)}")
    elif mode == "full":
        from splatlab.pose import estimate_pose

        pose = estimate_pose(q, model.splats, model.retriever, model.pose_config, exclude=exclude)
        for k in ("coarse", "hypotheses", "refine"):
            times[k] = float(pose.timings.get(k, 0.0))
        times["hypotheses"] += float(pose.timings.get("pnp", 0.0))  # the PnP routes' start poses
        vm, retrieved = pose.viewmat, pose.candidates[0].index
    else:
        t0 = time.perf_counter()
        idx, _ = model.retriever.top_k(q, 1, exclude=exclude)
        retrieved = int(idx[0])
        vm = model.retriever.cameras.viewmats[retrieved].float().cpu()
        if mode == "nearest":
            reference = model.retriever.images[retrieved].float().cpu()
        times["coarse"] = time.perf_counter() - t0
    if reference is None:
        t0 = time.perf_counter()
        reference = render_reference(model, vm, q)
        times["render"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    amap = anomaly_map(q, reference, model.anomaly).cpu()
    if model.anomaly.error_floor is not None:
        cams = model.retriever.cameras
        expected = model.expected_error_field()
        emap = render_expected_error(model.splats, expected, vm, cams.Ks[0], cams.width, cams.height,
                                     view_sigma=model.anomaly.error_view_sigma,
                                     eps2d=model.pose_config.eps2d, backend=model.pose_config.backend,
                                     exclude=exclude)
        amap = normalize_map(amap, emap.cpu(), expected, model.anomaly)
    score = float(image_score(amap))
    top, left, ph, pw = query_padding(*raw_hw, model.height, model.width)
    map_full = resize_map(amap, (ph, pw))[top : top + raw_hw[0], left : left + raw_hw[1]]
    times["score"] = time.perf_counter() - t0
    times["total"] = sum(times.values())
    return Detection(
        q,
        reference,
        vm,
        amap,
        map_full,
        score,
        None if cal is None else float(cal.normalize(score)),
        None if cal is None else bool(cal.decide(score)),
        times,
        pose,
        retrieved,
    )


# ----------------------------------------------------------------------------------------------------------
# A class's test set
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ClassRun:
    """Per-query outputs of one method on one class's test set.

    Args:
        name: Class name.
        method: "full", "coarse", "nearest" or "memory_bank".
        scores: Image scores. [M]
        labels: 1 = defective. [M]
        defects: Defect type per query ("good", "Burrs", ...). [M]
        maps: Anomaly maps at the query size. [M, H, W]
        masks: Ground-truth masks. [M, H, W]
        times: Seconds per stage and query, {stage: [M]}.
        decisions: Calibrated yes/no per query, or None. [M]
        rot_errors: Rotation error in degrees against the test poses (evaluation only), or None. [M]
        indices: Which test samples were run (indices into ``MADClass.test``). [M]
        examples: A few detections kept for figures.
        example_positions: Their positions in the arrays above. [E]
        other_maps: Maps of other anomaly methods from the same queries and references, {method: [M, H, W]}.
        other_scores: Their image scores (map maxima at the anomaly size, as ``scores``), {method: [M]}.
        calibration: The calibration the decisions came from (one colour scale for the class's maps).
    """

    name: str
    method: str
    scores: np.ndarray
    labels: np.ndarray
    defects: list[str]
    maps: np.ndarray
    masks: np.ndarray
    times: dict[str, np.ndarray]
    decisions: np.ndarray | None = None
    rot_errors: np.ndarray | None = None
    indices: list[int] = field(default_factory=list)
    examples: list[Detection] = field(default_factory=list)
    example_positions: list[int] = field(default_factory=list)
    other_maps: dict[str, np.ndarray] = field(default_factory=dict)
    other_scores: dict[str, np.ndarray] = field(default_factory=dict)
    calibration: Calibration | None = None

    def with_method(self, method: str) -> ClassRun:
        """The same run scored with one of ``other_maps`` (no calibrated decisions, no examples)."""
        if method not in self.other_maps:
            raise ValueError(f"no maps of method {method!r}; have {sorted(self.other_maps)}")
        return dataclasses.replace(
            self,
            method=method,
            maps=self.other_maps[method],
            scores=self.other_scores[method],
            decisions=None,
            calibration=None,
            examples=[],
            example_positions=[],
            other_maps={},
            other_scores={},
        )


def select_queries(defects: list[str], max_queries: int | None, seed: int = 0) -> list[int]:
    """Up to ``max_queries`` test indices, spread evenly over the defect types (good included)."""
    n = len(defects)
    if max_queries is None or max_queries >= n:
        return list(range(n))
    if max_queries < 2:
        raise ValueError(f"max_queries must be >= 2 (one good, one defective), got {max_queries}")
    rng = np.random.default_rng(seed)
    groups = {
        t: list(rng.permutation([i for i in range(n) if defects[i] == t])) for t in dict.fromkeys(defects)
    }
    out: list[int] = []
    while len(out) < max_queries:
        for t in groups:
            if groups[t] and len(out) < max_queries:
                out.append(int(groups[t].pop(0)))
    return sorted(out)


def run_class(
    model: DetectorModel,
    test: list,
    mode: Mode = "full",
    name: str = "",
    indices: list[int] | None = None,
    gt_viewmats: Tensor | None = None,
    n_examples: int = 4,
    progress: bool = True,
    other_methods: tuple[str, ...] = (),
) -> ClassRun:
    """Run :func:`detect` on test samples and collect scores, maps and per-stage times.

    Args:
        model: The class's detector.
        test: Test samples (:class:`splatlab.data.TestSample`). [T]
        mode: Pipeline or baseline, see :func:`detect`.
        name: Class name for the record.
        indices: Which samples to run; all by default. [M]
        gt_viewmats: Test poses for the pose AUC (evaluation only; the detector never sees them). [T, 4, 4]
        n_examples: Detections kept for figures (the highest-scoring defective and good ones).
        progress: Show a tqdm bar.
        other_methods: Anomaly methods also applied to each query and its reference (same pose, same
            render), kept in ``ClassRun.other_maps`` for comparison.
    """
    from tqdm.auto import tqdm

    from splatlab.cameras import pose_error

    indices = list(range(len(test))) if indices is None else list(indices)
    if not indices:
        raise ValueError("run_class: no test samples to run")
    dets, rot = [], []
    others: dict[str, list[np.ndarray]] = {m: [] for m in other_methods if m != model.anomaly.method}
    other_scores: dict[str, list[float]] = {m: [] for m in others}
    for i in tqdm(indices, desc=f"{name or 'class'} {mode}", leave=False, disable=not progress):
        d = detect(test[i].image, model, mode=mode)
        dets.append(d)
        for m, maps in others.items():
            amap = anomaly_map(
                d.query, d.reference, dataclasses.replace(model.anomaly, method=m, stages=None)
            )
            maps.append(resize_map(amap.cpu(), tuple(d.map_full.shape)).numpy())
            other_scores[m].append(float(image_score(amap)))
        if gt_viewmats is not None:
            rot.append(float(pose_error(d.viewmat.double(), gt_viewmats[i].double().cpu())[0]))
    run = ClassRun(
        name=name,
        method=mode,
        scores=np.array([d.score for d in dets]),
        labels=np.array([test[i].label for i in indices]),
        defects=[test[i].defect for i in indices],
        maps=np.stack([d.map_full.numpy() for d in dets]),
        masks=np.stack([test[i].mask.numpy() for i in indices]),
        times={k: np.array([d.times[k] for d in dets]) for k in dets[0].times},
        decisions=None if model.calibration is None else np.array([bool(d.decision) for d in dets]),
        rot_errors=np.array(rot) if rot else None,
        indices=indices,
        other_maps={m: np.stack(maps) for m, maps in others.items()},
        other_scores={m: np.array(s) for m, s in other_scores.items()},
        calibration=model.calibration,
    )
    run.example_positions = pick_examples(run.scores, run.labels, n_examples)
    run.examples = [dets[i] for i in run.example_positions]
    return run


def pick_examples(scores: np.ndarray, labels: np.ndarray, n: int) -> list[int]:
    """Up to n positions for a figure: the highest-scoring defective queries, then the lowest good one."""
    if n <= 0:
        return []
    order = np.argsort(-np.asarray(scores), kind="stable")
    bad = [int(i) for i in order if labels[i]]
    good = [int(i) for i in order[::-1] if not labels[i]]
    return (bad[: max(n - 1, 1)] + good[:1])[:n]


def class_metrics(run: ClassRun) -> dict:
    """MAD metrics of one run, AUROCs/AUPRO in percent; pixel metrics are NaN when the masks are empty.

    Returns:
        {"image_auroc", "pixel_auroc", "aupro", "per_defect", "seconds_per_query", "stage_seconds",
        "n", and, when available, "pose_auc" (5/10/20°, percent) and "decision" (TPR/FPR at the calibrated
        threshold)}.
    """
    from splatlab import metrics

    out: dict = {"name": run.name, "method": run.method, "n": int(len(run.scores))}
    out["image_auroc"] = 100.0 * metrics.image_auroc(run.scores, run.labels)
    has_masks = bool(run.masks[run.labels.astype(bool)].any())
    if has_masks:
        out["pixel_auroc"] = 100.0 * metrics.pixel_auroc(run.maps, run.masks)
        out["aupro"] = 100.0 * metrics.aupro(run.maps, run.masks, fpr_limit=0.3)
    else:
        warnings.warn(
            f"class {run.name!r} has no anomalous pixel in its test masks: image-level metrics only",
            stacklevel=2,
        )
        out["pixel_auroc"] = out["aupro"] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a defect type without masks is reported as NaN, already warned
        per = metrics.per_defect_breakdown(
            run.scores,
            run.labels,
            run.defects,
            list(run.maps) if has_masks else None,
            list(run.masks) if has_masks else None,
        )
    out["per_defect"] = {
        k: {m: (100.0 * v if m != "n" else v) for m, v in row.items()} for k, row in per.items()
    }
    out["seconds_per_query"] = float(run.times["total"].mean())
    out["stage_seconds"] = {k: float(v.mean()) for k, v in run.times.items() if k != "total"}
    if run.rot_errors is not None:
        out["pose_auc"] = {str(t): 100.0 * a for t, a in metrics.pose_auc(run.rot_errors).items()}
        out["median_rot_deg"] = float(np.median(run.rot_errors))
    if run.decisions is not None:
        y = run.labels.astype(bool)
        out["decision"] = {
            "tpr": float(run.decisions[y].mean()) if y.any() else float("nan"),
            "fpr": float(run.decisions[~y].mean()) if (~y).any() else float("nan"),
            "accuracy": float((run.decisions == y).mean()),
        }
    return out


__all__ = [
    "MODES",
    "ClassRun",
    "Detection",
    "DetectorModel",
    "class_metrics",
    "detect",
    "holdout_indices",
    "load_detector",
    "pick_examples",
    "prepare_query",
    "query_padding",
    "render_reference",
    "run_class",
    "select_queries",
]
