"""Structured channel pruning of a GridBoxNet on torch-pruning's dependency graph.

torch-pruning finds which channels are coupled (a residual add ties the outputs of every block in a
stage to the stage's shortcut) and removes them from every layer at once; this module decides how many
and which. Two modes, as in TAO and torch-pruning:

- ``threshold`` (TAO ``-pth``): keep the channels whose normalised importance is above ``threshold``,
  at least ``min_num_filters``, the kept count rounded up to a multiple of ``granularity``;
- ``ratio``: remove a fraction of channels (``ratio``, per layer or global, with per-layer overrides in
  ``layer_ratios``), or the smallest uniform fraction that meets ``target_macs`` (a fraction of the
  network's MACs).

The head's output convolutions are never roots of a pruning group (their channels mean coverage and
box coordinates); their input channels shrink with the backbone.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from gridface.model.widths import channel_widths
from gridface.pruning.importance import TaoImportance
from gridface.utils.validate import ConfigError, check_number

log = logging.getLogger(__name__)

MODES = ("threshold", "ratio")


@dataclass
class PruneSpec:
    """What to prune; the fields are the keys of ``configs/prune/*.yaml``."""

    mode: str = "threshold"
    criterion: str = "l2"              # l1 | l2 | bn_scale | taylor
    normalizer: str | None = "max"     # max | l2 | None (TAO: max)
    equalization: str = "union"        # union | intersection | mean | geomean (TAO: union)
    threshold: float = 0.1             # threshold mode (TAO -pth)
    min_num_filters: int = 16          # threshold mode: never fewer channels in a layer
    granularity: int = 8               # kept counts are multiples of this (both modes)
    ratio: float = 0.5                 # ratio mode: fraction of channels removed
    global_pruning: bool = False       # ratio mode: rank channels across layers, not per layer
    layer_ratios: dict[str, float] = field(default_factory=dict)  # ratio mode: per-layer overrides
    target_macs: float | None = None   # ratio mode: fraction of the MACs to keep (overrides ratio)
    max_ratio: float = 0.9             # ratio mode: no layer loses more than this fraction
    exclude: list[str] = field(default_factory=list)  # layer names whose output channels stay
    taylor_batches: int = 4            # batches of gradients for criterion=taylor

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> PruneSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"prune config: unknown keys {unknown}; known keys are {sorted(known)}")
        spec = cls(**{k: v for k, v in cfg.items() if k in known})
        spec.layer_ratios = dict(spec.layer_ratios or {})
        spec.exclude = list(spec.exclude or [])
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"prune.mode={self.mode!r}; choose one of {MODES}")
        # types first (prune.ratio=abc, =null, granularity=2.5 were TypeErrors from deep inside); ranges below
        numbers = {"threshold": False, "ratio": False, "max_ratio": False, "min_num_filters": True,
                   "granularity": True, "taylor_batches": True}
        if self.target_macs is not None:
            numbers["target_macs"] = False
        for key, whole in numbers.items():
            value = getattr(self, key)
            if value is None:
                raise ConfigError(f"prune.{key} = None: must be {'a whole number' if whole else 'a number'}")
            check_number(f"prune.{key}", value, integer=whole)
        for name, value in self.layer_ratios.items():
            check_number(f"prune.layer_ratios.{name}", value)
        if self.threshold < 0:
            raise ValueError(f"prune.threshold must be >= 0, got {self.threshold}")
        if self.min_num_filters < 1 or self.granularity < 1:
            raise ValueError(f"prune.min_num_filters and prune.granularity must be >= 1, "
                             f"got {self.min_num_filters} and {self.granularity}")
        for key, value in [("ratio", self.ratio), ("max_ratio", self.max_ratio), *self.layer_ratios.items()]:
            if not 0 <= value < 1:
                raise ValueError(f"prune ratio '{key}' must be in [0, 1), got {value}")
        if self.target_macs is not None and not 0 < self.target_macs <= 1:
            raise ValueError(f"prune.target_macs is a fraction of the network's MACs in (0, 1], got {self.target_macs}")
        if self.mode == "ratio" and not self.global_pruning and self.target_macs is None:
            # torch-pruning caps a layer's loss at max_pruning_ratio only when it ranks channels across layers
            over = {k: v for k, v in [("ratio", self.ratio), *self.layer_ratios.items()] if v > self.max_ratio}
            if over:
                raise ValueError(f"prune.max_ratio={self.max_ratio}: {over} exceed it, and with per-layer pruning "
                                 "each layer loses its own ratio (max_ratio caps layers only with "
                                 "prune.global_pruning=true or prune.target_macs); lower them or raise max_ratio")
        TaoImportance(self.criterion, self.normalizer, self.equalization)  # validates those three


def threshold_keep_count(scores: torch.Tensor, threshold: float, min_num_filters: int, granularity: int) -> int:
    """TAO: channels above the threshold, at least ``min_num_filters``, rounded up to ``granularity``."""
    n = int(scores.numel())
    keep = max(int((scores > threshold).sum()), min(min_num_filters, n))
    return min(n, math.ceil(keep / granularity) * granularity)


def excluded_layers(net: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The head's output convolutions plus the layers named in ``names``."""
    modules = dict(net.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise ValueError(f"prune.exclude names layers this network does not have: {missing}; "
                         f"its convolutions are {convs}")
    return [net.head.cov, net.head.bbox, *(modules[n] for n in names)]


def taylor_losses(module: Any, batches: Iterable[dict[str, Any]]) -> Iterator[torch.Tensor]:
    """Training losses of a GridBoxModule on ``batches`` (batches whose images were all unreadable skipped).

    Lazy: each loss is computed when ``prune_network`` asks for it, with the network in eval mode."""
    for batch in batches:
        if "image" in batch:
            batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            yield module.criterion(module.net(batch["image"]), batch)["loss"]


def accumulate_taylor_gradients(net: nn.Module, losses: Iterable[torch.Tensor], batches: int) -> None:
    net.zero_grad(set_to_none=True)
    done = 0
    for loss in losses:
        loss.backward()
        done += 1
        if done >= batches:
            break
    if done == 0:
        raise ValueError("criterion=taylor needs training batches, and none came")
    log.info("taylor importance from %d batches", done)


def example_input(net: nn.Module, input_hw: Sequence[int]) -> torch.Tensor:
    device = next(net.parameters()).device
    return torch.rand(1, 3, int(input_hw[0]), int(input_hw[1]), device=device)


def prune_network(net: nn.Module, spec: PruneSpec, input_hw: Sequence[int],
                  losses: Iterable[torch.Tensor] | None = None) -> nn.Module:
    """Prune ``net`` in place (channels removed, not masked) and return it, in its former train/eval mode.

    The network is in eval mode from the start, also while ``losses`` run forward and backward for
    criterion=taylor: BatchNorm then normalises with its running statistics and never updates them, so the
    few un-augmented importance batches leave the kept channels' statistics exactly as trained, and the
    gradients score the network as it is evaluated and deployed.
    """
    spec.validate()
    was_training = net.training
    net.eval()
    if spec.criterion == "taylor":
        if losses is None:
            raise ValueError("criterion=taylor needs training batches (give the dataset)")
        accumulate_taylor_gradients(net, losses, spec.taylor_batches)
    importance = TaoImportance(spec.criterion, spec.normalizer, spec.equalization)
    if spec.mode == "threshold":
        prune_by_threshold(net, spec, importance, input_hw)
    elif spec.target_macs is not None:
        prune_to_macs(net, spec, importance, input_hw)
    else:
        prune_by_ratio(net, spec, importance, input_hw, spec.ratio)
    net.zero_grad(set_to_none=True)
    net.train(was_training)
    return net


def prune_module(module: Any, spec: PruneSpec, losses: Iterable[torch.Tensor] | None = None) -> Any:
    """Prune a GridBoxModule's network at its training input size and record the widths in its
    hyper-parameters, so its checkpoints rebuild the pruned network."""
    prune_network(module.net, spec, module.input_hw, losses)
    module.set_widths(channel_widths(module.net))
    return module


def prune_by_threshold(net: nn.Module, spec: PruneSpec, importance: TaoImportance, input_hw: Sequence[int]) -> None:
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=example_input(net, input_hw))
    ignored = excluded_layers(net, spec.exclude)
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        scores = importance(group)
        if scores is None:
            continue
        keep = threshold_keep_count(scores, spec.threshold, spec.min_num_filters, spec.granularity)
        drop = torch.argsort(scores, stable=True)[: scores.numel() - keep].tolist()
        if drop:
            group.prune(idxs=sorted(drop))


class RoundedPruner(tp.pruner.BasePruner):
    """torch-pruning's pruner, with kept counts rounded down to ``round_to`` but never to zero.

    torch-pruning rounds a layer's kept count down to a multiple of ``round_to``; where that is 0 (64 channels
    at ratio 0.9 keep 6, rounded to 0 with granularity 8) it refuses to empty the layer and prunes nothing
    there, so a higher ratio gave a *larger* network (ratio 0.9 kept 20 % of the MACs of ratio 0.0, 0.85 kept
    2 %). Here such a layer keeps one ``round_to`` of channels, the fewest a multiple can be.
    """

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        kept = current_channels - n_pruned
        kept = max(kept - kept % round_to, min(round_to, current_channels))
        return max(current_channels - kept, 0)


def prune_by_ratio(net: nn.Module, spec: PruneSpec, importance: TaoImportance, input_hw: Sequence[int],
                   ratio: float) -> None:
    modules = dict(net.named_modules())
    unknown = [n for n in spec.layer_ratios if n not in modules]
    if unknown:
        raise ValueError(f"prune.layer_ratios names layers this network does not have: {unknown}")
    pruner = RoundedPruner(
        net, example_input(net, input_hw), importance=importance, pruning_ratio=ratio,
        pruning_ratio_dict={modules[n]: r for n, r in spec.layer_ratios.items()},
        global_pruning=spec.global_pruning, max_pruning_ratio=spec.max_ratio,
        ignored_layers=excluded_layers(net, spec.exclude), round_to=spec.granularity,
        root_module_types=[nn.Conv2d])
    pruner.step()


def count_macs_params(net: nn.Module, input_hw: Sequence[int]) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(net, example_input(net, input_hw))
    return int(macs), int(params)


def prune_to_macs(net: nn.Module, spec: PruneSpec, importance: TaoImportance, input_hw: Sequence[int]) -> None:
    """The smallest uniform ratio whose pruned network keeps at most ``target_macs`` of the MACs."""
    if spec.target_macs >= 1.0:  # the network as it is keeps all its MACs; any ratio > 0 removes a granularity step
        log.info("target_macs=%g: the network already keeps at most that share of its MACs", spec.target_macs)
        return
    base, _ = count_macs_params(net, input_hw)
    lo, hi = 0.0, spec.max_ratio
    trial = copy.deepcopy(net)
    prune_by_ratio(trial, spec, importance, input_hw, hi)
    if count_macs_params(trial, input_hw)[0] > spec.target_macs * base:
        raise ValueError(f"prune.target_macs={spec.target_macs} is out of reach with max_ratio={spec.max_ratio} "
                         f"(the most it prunes keeps {count_macs_params(trial, input_hw)[0] / base:.3f})")
    for _ in range(12):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(net)
        prune_by_ratio(trial, spec, importance, input_hw, mid)
        if count_macs_params(trial, input_hw)[0] <= spec.target_macs * base:
            hi = mid
        else:
            lo = mid
    log.info("target_macs=%.3f: uniform ratio %.4f", spec.target_macs, hi)
    prune_by_ratio(net, spec, importance, input_hw, hi)
