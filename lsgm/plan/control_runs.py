"""The control runs the plan derives from an LSGM (a mixin of :class:`lsgm.plan.resolve.Resolution`): the stage-2
control "VAE backbone + stage-2 steps" (``recipes.vae.NAME.stage2``) and the "LSGM at initialisation" of every LSGM
recipe and Table 6 SDE (lsgm/controls.py)."""

from __future__ import annotations

import copy

from lsgm.plan.common import CONTROL_EVALS, PlanError
from lsgm.plan.layers import Layers
from lsgm.plan.run import Run


class ControlRuns:
    """Builds the control runs; the resolution provides ``_make``, ``scale``, ``sc`` and ``runs``."""

    def _control_run(self, name: str, rec: dict, lsgms: dict, seed: int) -> Run:
        """The control "VAE backbone + stage-2 steps" of ``recipes.vae.NAME.stage2: L``: LSGM L's backbone trained on,
        with its Normal prior, for L's stage-2 steps with L's batch, VAE optimizer and KL schedule (its whole
        ``train`` section; ``train.continue_backbone``). Sizes are the backbone's; nothing else of the scale applies."""
        where = f"recipes.vae.{name} (scale {self.scale})"
        if rec["stage2"] not in lsgms:
            raise PlanError(f"{where}: stage2 {rec['stage2']!r} is not a recipe under recipes.lsgm ({sorted(lsgms)})")
        lsgm = lsgms[rec["stage2"]]
        backbone = lsgm.backbone
        train = copy.deepcopy(lsgm.config["train"])
        train["continue_backbone"] = True
        note = (f"control: the {backbone.name} backbone trained on for LSGM {lsgm.name}'s stage-2 steps (train.steps) "
                "with its Normal prior, the stage-2 VAE optimizer and KL schedule (no score model)")
        extra = {"vae": backbone.config["vae"], "data": backbone.config["data"], "train": train,
                 "deviations": [*lsgm.config.get("deviations", []), note]}
        spec = {"gpus": lsgm.gpus, "runtime": lsgm.runtime, **self.sc["runs"].get("vae", {}).get(name, {})}
        run = self._make("vae", name, backbone.dataset, seed, rec={}, spec=spec, evals=rec.get("evals", []),
                         where=where, extra=extra, shrink=False,
                         extra_name=f"the control of LSGM {lsgm.name}: its backbone's vae and data, its train section")
        run.nodes, run.gpus_per_node = lsgm.nodes, lsgm.gpus_per_node  # its LSGM's launch, whatever the caps
        run.backbone = backbone
        return run

    def _init_run(self, lsgm: Run, name: str) -> Run:
        """The control "LSGM at initialisation" of ``lsgm``: the same run config with ``train.steps`` 0 (its backbone
        as stage 2 receives it, the initial mixing logit and eps', the same seed and so the same initial weights),
        evaluated like it (its evaluations and their settings; no sample-quality control of its own). One process: it
        trains nothing."""
        config = copy.deepcopy(lsgm.config)
        config["name"] = config["name"].replace(f"/{lsgm.name}-s", f"/{name}-s")
        config["train"]["steps"] = 0
        config["deviations"] = sorted(set(config["deviations"]) | {
            f"control: LSGM {lsgm.name} at initialisation (train.steps 0): what its evaluations give before stage 2"})
        layers = {"config": Layers(list(lsgm.layers["config"].entries)), "eval": lsgm.layers["eval"]}
        layers["config"].add_changes(f"the control at initialisation of {lsgm.name} (lsgm/controls.py)", lsgm.config,
                                     config)
        run = Run(scale=self.scale, kind="lsgm", dataset=lsgm.dataset, name=name, seed=lsgm.seed, config=config,
                  nodes=1, gpus_per_node=min(1, lsgm.gpus_per_node), runtime=min(60, lsgm.runtime),
                  evals=tuple(m for m in lsgm.evals if m not in CONTROL_EVALS),
                  eval_settings=copy.deepcopy(lsgm.eval_settings),
                  official=lsgm.official, per_gpu=lsgm.per_gpu, gpu=lsgm.gpu, backbone=lsgm.backbone,
                  init_of=lsgm.name, copies=lsgm.name, layers=layers)
        self.runs[("lsgm", lsgm.dataset, name, lsgm.seed)] = run
        return run
