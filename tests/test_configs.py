from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gridface.utils.hydra import config_dir

from .helpers import compose_train

GROUPS = {p.name: sorted(q.stem for q in p.glob("*.yaml")) for p in Path(config_dir()).iterdir() if p.is_dir()}
# recipe=none is the stages' default (prune, export, evaluate), not a training choice; workflow is the pipeline's
CHOICES = [(g, o) for g, opts in GROUPS.items() if g not in ("hydra", "experiment", "export", "prune", "workflow")
           for o in opts
           if (g, o) != ("recipe", "none")]
STAGE_CALLBACKS = [(g, p.stem) for g in ("prune", "export")
                   for p in sorted((Path(config_dir()) / "callbacks" / g).glob("*.yaml"))]
PRIMARY = sorted(p.stem for p in Path(config_dir()).glob("*.yaml"))


@pytest.mark.parametrize("name", PRIMARY)
def test_every_entry_point_config_composes(name):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(name, return_hydra_config=True)
    assert cfg.task_name == name


@pytest.mark.parametrize("option", GROUPS["export"])
def test_every_export_option_composes(option):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("export", overrides=[f"export={option}"])
    assert cfg.export.format in ("onnx", "onnx_int8", "tensorrt")


@pytest.mark.parametrize("option", GROUPS["prune"])
def test_every_prune_option_composes_and_validates(option):
    from gridface.pruning.pruner import PruneSpec

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("prune", overrides=[f"prune={option}"])
    assert PruneSpec.from_config(OmegaConf.to_container(cfg.prune)).mode == option


@pytest.mark.parametrize(("group", "option"), STAGE_CALLBACKS)
def test_stage_callbacks_compose_and_instantiate(tmp_path, group, option):
    cfg = compose_train(tmp_path, [f"callbacks/{group}={option}"])
    callback = instantiate(cfg.callbacks[group])
    assert list(cfg.callbacks)[-1] == group  # after the checkpointing callbacks
    if group == "export":
        assert callback.export_cfg.format in ("onnx", "onnx_int8", "tensorrt") and "val" in callback.dataset_cfg
    else:
        assert callback.spec.mode == option


@pytest.mark.parametrize(("group", "option"), CHOICES)
def test_every_group_option_composes(tmp_path, group, option):
    extra = ["dataset.root=/data/x"] if group == "dataset" and option in ("kitti", "coco") else []
    cfg = compose_train(tmp_path, [f"{group}={option}", *extra])
    OmegaConf.to_container(cfg.module, resolve=True)
    OmegaConf.to_container(cfg.datamodule, resolve=True)


@pytest.mark.parametrize("experiment", GROUPS["experiment"])
def test_every_experiment_composes(tmp_path, experiment):
    cfg = compose_train(tmp_path, [f"experiment={experiment}"])
    OmegaConf.to_container(cfg.module, resolve=True)


def test_facenet_experiment_holds_tao_settings(tmp_path):
    cfg = compose_train(tmp_path, ["experiment=facenet_widerface", "dataset.root=/nowhere"])
    assert (cfg.dataset.input_width, cfg.dataset.input_height, cfg.dataset.batch_size) == (736, 416, 32)
    assert (cfg.optimizer.min_lr, cfg.optimizer.max_lr) == (5e-7, 5e-5)
    assert cfg.loss.l1_regularization == 3e-9
    assert cfg.augment.flip.p == 0.5 and list(cfg.augment.zoom_translate.scale) == [0.7, 1.8]


def test_widerface_without_root_says_what_to_download(tmp_path):
    cfg = compose_train(tmp_path, ["dataset=widerface", "dataset.root=" + str(tmp_path / "wider")])
    dm = instantiate(cfg.datamodule, _convert_="all")
    with pytest.raises(FileNotFoundError, match="WIDER_train/images"):
        dm.prepare_data()


def test_bad_config_value_is_named(tmp_path):
    cfg = compose_train(tmp_path, ["postprocess.clustering=kmeans"])
    with pytest.raises(Exception, match="postprocess.clustering"):
        instantiate(cfg.module, _convert_="all")


def test_configs_are_packaged_with_the_wheel_layout():
    pyproject = (Path(config_dir()).parent / "pyproject.toml").read_text()
    assert '"gridface.configs" = "configs"' in pyproject


TAO = {"max_epochs": 120, "accelerator": "gpu", "precision": "auto", "fg_weight": 0.05, "l1": 3e-9,
       "lr": (5e-7, 5e-5), "eps": 0.15, "min_samples": 1.0, "zoom": [0.7, 1.8]}
BUILT_IN = {"max_epochs": 3, "accelerator": "cpu", "precision": "32-true", "fg_weight": 0.5, "l1": 0.0,
            "lr": (1e-5, 2e-3), "eps": 0.3, "min_samples": 0.05, "zoom": 1.0}


def recipe_values(cfg) -> dict:
    zoom = cfg.augment.zoom_translate.scale
    return {"max_epochs": cfg.trainer.max_epochs, "accelerator": cfg.trainer.accelerator,
            "precision": cfg.trainer.precision, "fg_weight": cfg.loss.fg_weight, "l1": cfg.loss.l1_regularization,
            "lr": (cfg.optimizer.min_lr, cfg.optimizer.max_lr), "eps": cfg.postprocess.dbscan_eps,
            "min_samples": cfg.postprocess.dbscan_min_samples,
            "zoom": list(zoom) if OmegaConf.is_list(zoom) else zoom}


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], BUILT_IN),
    (["dataset=synthetic"], BUILT_IN),
    (["dataset=widerface", "dataset.root=/data/w"], TAO),
    (["dataset=kitti", "dataset.root=/data/k"], TAO),
    (["dataset=coco", "dataset.root=/data/c"], TAO),
    (["experiment=facenet_widerface", "dataset.root=/data/w"], TAO),
], ids=["no-arguments", "synthetic", "widerface", "kitti", "coco", "facenet_widerface"])
def test_training_defaults_follow_the_data(tmp_path, overrides, expected):
    """dataset=<real data> alone composes TAO's recipe with nothing left of the built-in CPU run, and back."""
    cfg = compose_train(tmp_path, overrides)
    assert recipe_values(cfg) == expected
    assert (cfg.loss.cov_weight, cfg.loss.bbox_weight) == (1.0, 10.0) and cfg.postprocess.clustering == "dbscan"
    if expected is TAO:
        assert (cfg.dataset.input_width, cfg.dataset.input_height) == (736, 416)


def test_group_choices_and_experiments_override_the_recipe(tmp_path):
    cfg = compose_train(tmp_path, ["dataset=kitti", "dataset.root=/d", "trainer=cpu", "loss=balanced",
                                   "optimizer=scratch", "postprocess=nms", "augment=none"])
    assert (cfg.trainer.accelerator, cfg.loss.fg_weight, cfg.optimizer.max_lr) == ("cpu", 0.5, 2e-3)
    assert cfg.postprocess.clustering == "nms" and not cfg.augment
    cfg = compose_train(tmp_path, ["optimizer=tao", "trainer=gpu"])  # built-in data, TAO's optimizer
    assert cfg.optimizer.max_lr == 5e-5 and cfg.trainer.accelerator == "gpu" and cfg.trainer.max_epochs == 3
    cfg = compose_train(tmp_path, ["experiment=retrain", "dataset=coco", "dataset.root=/d"])
    assert cfg.loss.l1_regularization == 0.0 and cfg.trainer.max_epochs == 120 and cfg.task_name == "retrain"


def test_lightning_flags_are_plain_overrides(tmp_path):
    flags = ["trainer.fast_dev_run=true", "trainer.limit_train_batches=4", "trainer.limit_val_batches=0.5",
             "trainer.gradient_clip_val=1.0", "trainer.accumulate_grad_batches=4", "trainer.profiler=simple",
             "trainer.overfit_batches=2", "trainer.max_steps=10", "trainer.val_check_interval=0.5"]
    cfg = compose_train(tmp_path, flags)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.fast_dev_run and trainer.accumulate_grad_batches == 4 and trainer.gradient_clip_val == 1.0
    assert type(trainer.profiler).__name__ == "SimpleProfiler"


@pytest.mark.parametrize("option", GROUPS["debug"])
def test_debug_options_shorten_any_run(tmp_path, option):
    cfg = compose_train(tmp_path, [f"debug={option}", "dataset=widerface", "dataset.root=/d"])
    assert cfg.task_name == "debug" and cfg.trainer.accelerator == "cpu" and cfg.dataset.num_workers == 0
    assert not cfg.logger
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs <= 20


def test_old_input_model_spellings_still_work_with_a_message_naming_the_new_key(tmp_path, capsys):
    from gridface.utils.cli import rename_legacy_arguments

    argv = rename_legacy_arguments("train", ["gridface-train", "model.init_from=/runs/a.ckpt",
                                             "model.pretrained=/w/resnet18.pth", "trainer.max_epochs=1"])
    assert argv[1:] == ["model=/runs/a.ckpt", "network.pretrained=/w/resnet18.pth", "trainer.max_epochs=1"]
    err = capsys.readouterr().err
    assert "'model.init_from=' is deprecated, use 'model='" in err and "use 'network.pretrained='" in err
    cfg = compose_train(tmp_path, argv[1:])
    assert cfg.module.model.init_from == "/runs/a.ckpt" and cfg.module.model.pretrained == "/w/resnet18.pth"
    for stage in ("prune", "export"):
        assert rename_legacy_arguments(stage, ["x", "checkpoint=/a.ckpt", "model=/b.ckpt"])[1:] == [
            "model=/a.ckpt", "model=/b.ckpt"]
        assert f"gridface.{stage}: 'checkpoint=' is deprecated, use 'model='" in capsys.readouterr().err
    assert rename_legacy_arguments("evaluate", ["x", "model=/a.onnx"])[1:] == ["model=/a.onnx"]


def _start_run(cfg, results) -> None:
    from gridface.utils.hydra import make_run_dir

    make_run_dir(cfg)
    results.put(cfg.hydra.run.dir)


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    """A shell loop of ``python -m gridface.train ... &``: every run of one second shared ``<date>_<time>`` and
    overwrote the others' checkpoints, logs and metrics. Each run now makes its folder (atomically) at its start."""
    import multiprocessing

    from gridface.utils import hydra as gridface_hydra

    monkeypatch.setattr(gridface_hydra, "_RUN_DIRS", {})
    monkeypatch.setattr(gridface_hydra, "_MADE", set())
    monkeypatch.setattr("time.strftime", lambda fmt: "2026-12-07_12-00-00")  # every process in the same second
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.log_dir={tmp_path}"], return_hydra_config=True)
    first = tmp_path / "train" / "runs" / "2026-12-07_12-00-00"
    assert Path(cfg.hydra.run.dir) == first and not first.exists()  # reading the name makes nothing (--cfg)
    gridface_hydra.make_run_dir(cfg)
    assert first.is_dir() and Path(cfg.hydra.run.dir) == first  # read again (Hydra, Lightning's DDP launcher)

    gridface_hydra._RUN_DIRS.clear()  # six new runs, not forks of this one (a fork keeps its parent's folder)
    gridface_hydra._MADE.clear()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    runs = [context.Process(target=_start_run, args=(cfg, results)) for _ in range(6)]
    for run in runs:
        run.start()
    folders = sorted(Path(results.get(timeout=60)).name for _ in runs)
    for run in runs:
        run.join(timeout=60)
    assert folders == [f"2026-12-07_12-00-00_{n}" for n in range(2, 8)]
    assert sorted(p.name for p in first.parent.iterdir()) == ["2026-12-07_12-00-00", *folders]


@pytest.mark.parametrize("name", PRIMARY)
def test_composing_a_stage_config_makes_no_folder(tmp_path, monkeypatch, name):
    """The pipeline and tune override ``hydra.run.dir``; composing them (a test, ``--cfg``, a notebook) left an
    empty ``outputs/train/runs/<date>_<time>`` behind, which looked like a failed run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRIDFACE_ROOT", raising=False)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        hydra_config = compose(name, return_hydra_config=True).hydra
        run_dir, sweep_dir = hydra_config.run.dir, hydra_config.sweep.dir
    assert run_dir and sweep_dir and list(tmp_path.iterdir()) == []



def keyword_defaults(fn) -> dict:
    import inspect

    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def yaml_file(group: str, option: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / group / f"{option}.yaml"))


def test_each_default_is_the_same_in_the_yaml_and_the_code():
    """A class built in Python (a test, a script, an older checkpoint's missing key) and a Hydra run get the same
    defaults: where configs/ repeats a class's keyword defaults, they are equal (loss.target_cov_share was 0.0909 in
    the YAML and 1/11 in GridBoxLoss)."""
    from gridface.loss import GridBoxLoss
    from gridface.model import GridBoxNet
    from gridface.model.head import GridBoxHead
    from gridface.module import GridBoxModule
    from gridface.pruning.pruner import PruneSpec
    from gridface.targets import GridBoxTargetEncoder

    loss = yaml_file("loss", "gridbox")
    l1 = loss.pop("l1_regularization")
    assert loss == {k: v for k, v in keyword_defaults(GridBoxLoss).items() if k != "eps"}
    assert GridBoxLoss(**loss).target_cov_share == pytest.approx(1 / 11)  # TAO: cov 1 : bbox 10
    assert GridBoxModule().l1_regularization == l1 == 0.0

    targets = {k: v for k, v in yaml_file("targets", "gridbox").items() if k not in ("_target_", "num_classes")}
    encoder = vars(GridBoxTargetEncoder())
    assert targets == {k: encoder[k] for k in targets} and encoder["stride"] == 16

    network = yaml_file("network", "resnet18")
    assert network["cov_prior"] == keyword_defaults(GridBoxNet)["cov_prior"] == keyword_defaults(GridBoxHead)[
        "cov_prior"]
    assert network["backbone"] == keyword_defaults(GridBoxNet)["backbone"]

    for option in ("ratio", "threshold"):
        prune = {k: v for k, v in yaml_file("prune", option).items() if k != "mode"}
        assert prune == {k: vars(PruneSpec())[k] for k in prune}, option
