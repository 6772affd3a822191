"""Where the Hydra configs live (``configs/`` of a source checkout, or ``gridface/configs`` of a wheel), and
:func:`stage_config`, the one function that builds a stage's config from them: the pipeline, the training
callbacks and tuning state what they change as command-line overrides, so their configs follow the same composition
rules as ``python -m gridface.<stage>``."""

from __future__ import annotations

import os
import re
import time
from itertools import count
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def rank_suffix() -> str:
    """'' for rank 0 (or a single process), '_rank<N>' otherwise: one log file per rank."""
    rank = int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0")) or 0)
    return f"_rank{rank}" if rank else ""


def rank_output_subdir() -> str | None:
    """Hydra's ``.hydra`` folder for rank 0 only: the other ranks of a Slurm job would write the same files."""
    return None if rank_suffix() else ".hydra"


_RUN_DIRS: dict[str, str] = {}  # parent -> this process's run folder under it
_MADE: set[str] = set()  # the parents whose run folder this process has made
_making = False


def new_run_dir(parent: str) -> str:
    """``<parent>/<date>_<time>``, the same each time it is read (Hydra and Lightning's DDP launcher read
    ``hydra.run.dir`` more than once). Reading it makes nothing: a config composed or printed (the pipeline and
    tune override the key, ``--cfg``) leaves no folder; the run's start makes it (:func:`make_run_dir`)."""
    if parent not in _RUN_DIRS:
        _RUN_DIRS[parent] = os.path.join(parent, time.strftime("%Y-%m-%d_%H-%M-%S"))
    if _making and parent not in _MADE:
        _MADE.add(parent)
        _RUN_DIRS[parent] = _made_folder(_RUN_DIRS[parent])
    return _RUN_DIRS[parent]


def _made_folder(folder: str) -> str:
    """``folder``, or ``folder_2``, ``_3``..., the first that ``os.mkdir`` (atomic) makes here; ``folder`` when
    nothing can be made (Hydra's own error, named by RunDirCheck, follows)."""
    try:
        os.makedirs(os.path.dirname(folder) or ".", exist_ok=True)
        for n in count(1):
            candidate = folder if n == 1 else f"{folder}_{n}"
            try:
                os.mkdir(candidate)
                return candidate
            except FileExistsError:
                continue
    except OSError:
        pass
    return folder


def make_run_dir(config: Any) -> None:
    """Makes the run folder of ``config`` when its ``hydra.run.dir`` is a :func:`new_run_dir`: two runs started in
    the same second (a shell loop of ``&`` jobs) would otherwise share one folder and overwrite each other's
    checkpoints, logs and metrics; the second gets ``<date>_<time>_2``. Rank 0 only: the other ranks of an
    ``srun`` of one's own read the plain name (give such jobs ``hydra.run.dir``, as scripts/slurm/train.sbatch
    does)."""
    global _making
    if rank_suffix():
        return
    _making = True
    try:
        OmegaConf.select(config, "hydra.run.dir", throw_on_resolution_failure=False)
    finally:
        _making = False


def new_sweep_dir(parent: str) -> str:
    """``<parent>/<date>_<time>`` of a sweep (``-m``), made by :func:`make_sweep_dir` at the sweep's start (``_2``,
    ``_3``... when taken). Registered with OmegaConf's cache: Hydra copies the sweep config's resolver cache into
    every job's config (``load_sweep_config``), pickled to submitit's job processes too, so each job reads the
    folder its sweep made, not a later second's name."""
    folder = os.path.join(parent, time.strftime("%Y-%m-%d_%H-%M-%S"))
    return _made_folder(folder) if _making else folder


def make_sweep_dir(config: Any) -> None:
    """Makes the folder of a sweep whose ``hydra.sweep.dir`` is a :func:`new_sweep_dir`, before Hydra's sweeper
    or launcher reads it: two sweeps started in the same second (a script that starts one per dataset) shared
    ``multiruns/<date>_<time>`` and their jobs 0, 1... overwrote each other's checkpoints."""
    global _making
    _making = True
    try:
        OmegaConf.select(config, "hydra.sweep.dir", throw_on_resolution_failure=False)
    finally:
        _making = False


def gpus_per_node(accelerator: str, devices: Any) -> int | None:
    """Slurm's ``--gpus-per-node`` for a Trainer: its device count on GPUs, none on CPUs."""
    if str(accelerator) in ("gpu", "cuda", "auto") and isinstance(devices, int) and devices > 0:
        return devices
    return None


OmegaConf.register_new_resolver("len", lambda x: len(x), replace=True)
OmegaConf.register_new_resolver("rank_suffix", rank_suffix, replace=True)
OmegaConf.register_new_resolver("gpus_per_node", gpus_per_node, replace=True)
OmegaConf.register_new_resolver("rank_output_subdir", rank_output_subdir, replace=True)
OmegaConf.register_new_resolver("new_run_dir", new_run_dir, replace=True)
OmegaConf.register_new_resolver("new_sweep_dir", new_sweep_dir, replace=True, use_cache=True)

_PACKAGE = Path(__file__).resolve().parent.parent


def config_dir() -> str:
    for candidate in (_PACKAGE.parent.parent / "configs", _PACKAGE / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"gridface configs not found next to {_PACKAGE}; reinstall the package")


def group_default(group: str, option: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """``configs/<group>/<option>.yaml`` with ``values`` merged over it, interpolations resolved within the file: the
    defaults of code that runs without a composed config (a module built in a test, an older checkpoint), so each
    default is written once, in the YAML. A file with a defaults list is refused (compose that one with Hydra)."""
    node = OmegaConf.load(Path(config_dir()) / group / f"{option}.yaml")
    if "defaults" in node:
        raise ValueError(f"configs/{group}/{option}.yaml has a defaults list; group_default reads single files")
    if values:
        node = OmegaConf.merge(node, values)
    return OmegaConf.to_container(node, resolve=True)


def overrides(node: Any) -> dict[str, Any]:
    """A config node of optional overrides as a dict, the unset (null) keys dropped."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}


# ---- one way to build a stage's config ------------------------------------------------------------------------

def _quoted(text: str) -> str:
    """A string in Hydra's override grammar: single-quoted; a quote, and backslashes before a quote or the end, are
    escaped (Hydra unescapes only those)."""
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def override_value(value: Any) -> str:
    """``value`` written so that Hydra's override parser reads it back unchanged (strings are always quoted, so
    '16-mixed' or 'null' stay strings)."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a Hydra override")


def override(key: str, value: Any, prefix: str = "") -> str:
    """``key=value`` as a user would type it (``prefix`` '+' adds a key, '++' adds or replaces one)."""
    return f"{prefix}{key}={override_value(value)}"


_KEY = re.compile(r"^[A-Za-z_$][\w$-]*$")


def flat_overrides(key: str, value: Any, prefix: str = "++") -> list[str]:
    """One override per leaf of the mapping ``value`` under ``key`` (lists are leaves): a config node restated as
    the overrides that rebuild it, each naming the key it sets."""
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if not isinstance(value, dict) or not value or not all(_KEY.match(str(k)) for k in value):
        return [override(key, value, prefix)]  # a leaf, or a mapping keyed by dotted names (layer_ratios)
    return [o for k, v in value.items() for o in flat_overrides(f"{key}.{k}", v, prefix)]


def _path_overrides(paths: dict[str, Any]) -> list[str]:
    return [override(f"paths.{k}", str(v)) for k, v in paths.items() if v is not None]


def _ours(gh: Any) -> bool:
    """Whether the initialised Hydra (a ``@hydra.main`` of ours) reads this package's config dir first."""
    sources = gh.config_loader().get_sources() if gh.hydra is not None else []
    return any(s.provider == "main" and Path(s.path.removeprefix("file://")).resolve() == Path(config_dir()).resolve()
               for s in sources)


def stage_config(stage: str, overrides: list[str] | tuple[str, ...] = (), base: DictConfig | None = None,
                 **paths: Any) -> DictConfig:
    """The one way a stage's config is built: ``configs/<stage>.yaml`` composed with ``overrides`` (and
    ``paths.<key>=<value>`` for each of ``paths``), as ``python -m gridface.<stage> <overrides>`` composes it.

    Inside a running ``@hydra.main`` of ours it composes through that app, so a ``--config-dir`` or search path
    the user gave applies; anywhere else (a test, a notebook, a Slurm job, another app's Hydra) in a Hydra of its
    own, and the caller's Hydra state is left as it was.

    ``base``: a config already composed from ``configs/<stage>.yaml`` (the user's command line, handed to an entry
    point): the overrides are applied to a copy of it by Hydra's own override step (the one ``compose`` runs after
    the defaults list), so they may set, add (``+``/``++``) or delete (``~``) keys but not choose a group."""
    args = [*overrides, *_path_overrides(paths)]
    if base is not None:
        return _apply(base, args)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    gh = GlobalHydra.instance()
    if gh.is_initialized() and _ours(gh):
        return compose(stage, overrides=args)
    backup = get_gh_backup()
    gh.clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose(stage, overrides=args)
    finally:
        restore_gh_from_backup(backup)


def _apply(base: DictConfig, overrides: list[str]) -> DictConfig:
    """``overrides`` applied to a copy of ``base`` exactly as Hydra applies a command line's key overrides."""
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException

    parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
    groups = [o.input_line for o in parsed if o.package is not None or "/" in o.key_or_group or (
        not o.is_delete() and isinstance(o.value(), str)
        and isinstance(OmegaConf.select(base, o.key_or_group, default=None, throw_on_resolution_failure=False),
                   DictConfig))]
    if groups:
        raise ConfigCompositionException(f"{groups}: a config group cannot be chosen on a composed config; "
                                         "compose the stage with stage_config(stage, overrides)")
    cfg = copy.deepcopy(base)
    ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
    return cfg
