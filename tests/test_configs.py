from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gridface.utils.hydra import config_dir

from .helpers import compose_train

GROUPS = {p.name: sorted(q.stem for q in p.glob("*.yaml")) for p in Path(config_dir()).iterdir() if p.is_dir()}
CHOICES = [(g, o) for g, opts in GROUPS.items() if g not in ("hydra", "experiment", "export", "prune") for o in opts]
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
    key = "network@model" if group == "network" else group
    cfg = compose_train(tmp_path, [f"{key}={option}", *extra])
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
