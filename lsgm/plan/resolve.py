"""The resolution of one scale (:class:`Resolution`): ``config.yaml`` -> every trained model's run config, launch
geometry and evaluation settings.

Pure Python (no Snakemake, no torch): the Snakefile, ``lsgm plan`` and the tests share it. Every run of a
scale is resolved up front and validated with ``lsgm.config.from_dict(RunConfig, ...)`` (types, ranges and
the method's combination rules, one line naming the key); an impossible Table 6 cell raises
:class:`PlanError`.

A run config and a run's evaluation settings are merges of named layers (:mod:`lsgm.plan.layers` writes their order
once and records them per run: ``Run.layers``). At the paper scale the official recipe IS the run, with its global
batch, optimizers and epochs. Table 6 cells use ``table6.official`` / ``scales.<scale>.table6`` and take the cell's SDE
(parameters from ``table6.sde_official``) and objective.

Batches: a run config holds the GLOBAL batch (``train.global_batch``) and a per-process cap
(``train.max_batch_per_process``, the official per-GPU batch at the paper scale). The GPUs a job gets (the
official count, capped by ``max_gpus_per_node`` x ``max_nodes``) decide the per-GPU batch and the gradient
accumulation (:func:`lsgm.config.split_batch`); the global batch never changes.
"""

from __future__ import annotations

import copy
import math

from lsgm import controls, recipes
from lsgm.config import ConfigError, RunConfig, from_dict, to_dict
from lsgm.datasets_info import DATASETS, EXPECTED_COUNTS
from lsgm.eval import registry
from lsgm.eval import settings as eval_settings
from lsgm.methods import Cell
from lsgm.plan.common import (
    CONTROL_EVALS, DERIVED_OWN_KEYS, EVALUATIONS, PlanError, SCALES, STAGES, _with_samples, check_eval_settings,
    check_shrink,
    deep_merge,
)
from lsgm.plan import scaling
from lsgm.plan.control_runs import ControlRuns
from lsgm.plan.layers import Layers
from lsgm.plan.cluster import cluster_settings
from lsgm.plan.run import Run


def eval_block(layers: Layers, kind: str) -> dict:
    """A run's settings per evaluation (every command's block, and an LSGM's controls) from its eval layers."""
    merged = layers.merged()
    return {m: merged.get(m, {}) for m in (*EVALUATIONS, *(CONTROL_EVALS if kind == "lsgm" else ()))}


class Resolution(ControlRuns):
    """Every trained model of one scale (``runs``), resolved from the (schema-validated) config; :class:`~lsgm.plan.Plan`
    adds the DAG's questions and the checks across runs."""

    def __init__(self, config: dict, scale: str):
        if scale not in SCALES:
            raise PlanError(f"scale {scale!r} is not one of {list(SCALES)}")
        self.config, self.scale = config, scale
        # A derived scale (``base: paper``: the paper scale in miniature) is its base resolved in full, then its
        # size-only ``shrink`` overlay; its own keys are DERIVED_OWN_KEYS, ``data_sizes`` and ``fd.inception_weights``.
        own = config["scales"][scale]
        self.base: str = own.get("base", scale)
        self.shrink: dict = own.get("shrink", {})
        if self.base != scale:
            if self.base not in config["scales"] or config["scales"][self.base].get("base"):
                raise PlanError(f"scales.{scale}.base: {self.base!r} is not a scale of its own under scales")
            check_shrink(self.shrink, f"scales.{scale}.shrink")
            base = config["scales"][self.base]
            own = {**base, **{k: own[k] for k in DERIVED_OWN_KEYS if k in own},
                   "fd": {**base["fd"], **own.get("fd", {})}, "data_sizes": own.get("data_sizes", {})}
        self.sc = own
        self.cluster = cluster_settings(config)  # the declared GPU and Slurm's name of its type (cluster.yaml)
        self.seeds: list[int] = list(self.sc["seeds"])
        # One job per run trains / evaluates all its seeds in one process (scales.S.batch_seeds); else one job per seed.
        self.batch_seeds: bool = bool(self.sc.get("batch_seeds", False))
        # The training seeds of the Table 6 grid (its cells, each SDE's control, the grid's own backbone): the scale's
        # first scales.S.table6_n_seeds seeds (default all of them), so a --config that changes seeds keeps it valid.
        self.table6_seeds: list[int] = self.seeds[:self.sc.get("table6_n_seeds") or len(self.seeds)]
        self.runs: dict[tuple, Run] = {}
        # scales.S.runs.KIND.NAME.same_as: OTHER -- recipe NAME is not trained at this scale; tables and figures that
        # list it take recipe OTHER's rows (the label names OTHER), which also runs NAME's evaluations. {(kind, name): other}
        self.same_as: dict[tuple[str, str], str] = {}
        self._check_datasets()
        self._check_eval_blocks(config["scales"][scale], f"scales.{scale}")
        self.cells = self._parse_cells()
        self._build()

    # ---------------------------------------------------------------- building
    def _check_datasets(self) -> None:
        """Every dataset this scale names is one of lsgm/datasets_info.py; FD features only for its datasets."""
        where = f"scales.{self.scale}"
        for paper, dataset in self.sc["datasets"].items():
            for key, name in ((f"{where}.datasets", paper), (f"{where}.datasets.{paper}", dataset)):
                if name not in DATASETS:
                    raise PlanError(f"{key}: {name!r} is not a dataset of lsgm/datasets_info.py "
                                    f"({', '.join(DATASETS)})")
        for dataset in self.sc["fd"]["features"]:
            if dataset not in self.sc["datasets"].values():
                raise PlanError(f"{where}.fd.features: {dataset!r} is not a dataset of this scale ({where}.datasets)")

    def _check_eval_blocks(self, preset: dict, where: str) -> None:
        """Every ``eval`` block of the scale's own preset, each layer on its own, so an unknown key or a bad value is
        named where it is written (the merged settings of each run are checked again, combinations included)."""
        blocks = {f"{where}.eval": preset.get("eval"), f"{where}.table6.eval": (preset.get("table6") or {}).get("eval"),
                  f"{where}.shrink.eval": (preset.get("shrink") or {}).get("eval")}
        for section in ("defaults", "runs"):
            for kind, entries in (preset.get(section) or {}).items():
                items = {kind: entries} if section == "defaults" else entries or {}
                for name, entry in items.items():
                    path = f"{where}.{section}.{kind}" if section == "defaults" else f"{where}.runs.{kind}.{name}"
                    blocks[f"{path}.eval"] = (entry or {}).get("eval")
        for path, block in blocks.items():
            for metric, values in (block or {}).items():
                try:
                    eval_settings.check_block(metric, values or {}, f"{path}.{metric}", combinations=False)
                except eval_settings.SettingError as err:
                    raise PlanError(str(err)) from None

    def _dataset(self, paper_dataset: str, where: str) -> str:
        mapping = self.sc["datasets"]
        if paper_dataset not in mapping:
            raise PlanError(f"{where}: dataset {paper_dataset!r} missing from scales.{self.scale}.datasets")
        return mapping[paper_dataset]

    def _official(self, kind: str, name: str | None) -> tuple[recipes.OfficialRun | None, dict, list[str]]:
        """(official run, its RunConfig mapping, its deviations) for an official recipe name, else Nones. A pixel SGM's
        official recipe is a score_sde config (lsgm/recipes/score_sde.yaml; no launch geometry: official run None)."""
        if name is None:
            return None, {}, []
        if kind == "sgm":
            try:
                cfg, deviations, _ = recipes.score_sde_config(name)
            except recipes.RecipeError as err:
                raise PlanError(f"official recipe {name!r} ({kind}): {err}") from err
            return None, cfg, deviations
        try:
            off = recipes.official_run(name, STAGES[kind])
            cfg, deviations = recipes.run_config(off)
        except (recipes.RecipeError, KeyError) as err:
            raise PlanError(f"official recipe {name!r} ({kind}): {err}") from err
        return off, cfg, deviations

    def _geometry(self, off: recipes.OfficialRun | None, spec: dict, kind: str) -> tuple[int, int]:
        """(nodes, GPUs per node): the official GPUs, capped by max_gpus_per_node x max_nodes (config.yaml, the
        slurm profile may set them); a run spec's ``gpus`` overrides. CPU scales (no GPUs): (1, 0)."""
        gpus = spec.get("gpus", self.sc["defaults"].get(kind, {}).get("gpus", 0))
        if gpus == "official":
            if off is None:
                raise PlanError(f"gpus: official for a {kind} run without an official recipe; give a number")
            gpus = off.gpus
        if not gpus:
            return 1, 0
        per_node, max_nodes = self.config.get("max_gpus_per_node", 8), self.config.get("max_nodes", 2)
        gpus = min(int(gpus), per_node * max_nodes)
        nodes = math.ceil(gpus / per_node)
        if gpus % nodes:
            gpus = nodes * (gpus // nodes)  # equal GPUs per node
        launch = self.sc.get("launch")
        if launch:  # a miniature: the base's nodes, fewer processes per node (accumulation keeps the global batch)
            return min(nodes, launch["max_nodes"]), min(gpus // nodes, launch["processes_per_node"])
        return nodes, gpus // nodes

    def _shrink_layers(self, kind: str, name: str | None, section: str) -> list[tuple[str, dict | None]]:
        """A miniature's named overlays of one run (``section``: config | eval), later winning: the whole scale's eval,
        the kind's defaults, then the run's (``shrink.runs.KIND.NAME``; a Table 6 cell, ``name`` None:
        ``shrink.table6``)."""
        if not self.shrink:
            return []
        at = f"scales.{self.scale}.shrink"
        own = self.shrink.get("table6", {}) if name is None else (self.shrink.get("runs") or {}).get(kind, {}).get(name, {})
        own_at = f"{at}.table6" if name is None else f"{at}.runs.{kind}.{name}"
        layers = [(f"{at}.eval", self.shrink.get("eval"))] if section == "eval" else []
        defaults = (self.shrink.get("defaults") or {}).get(kind, {}).get(section)
        return layers + [(f"{at}.defaults.{kind}.{section}", defaults), (f"{own_at}.{section}", own.get(section))]

    def _data_sizes(self, cfg: dict, dataset: str) -> None:
        """``scales.S.data_sizes.DATASET: [n_train, n_test]`` (a miniature's data) into the run's data section."""
        sizes = self.sc.get("data_sizes", {}).get(dataset)
        if sizes:
            cfg["data"]["n_train"], cfg["data"]["n_test"] = sizes

    def _steps(self, dataset: str, cfg: dict, spec: dict, off: recipes.OfficialRun | None, where: str) -> int | None:
        """A scale's ``epochs``/``warmup_epochs`` (e.g. the assumed Table 6 sizes) become steps at the run's global
        batch on the official GPU count, as the official loader counts them (:func:`lsgm.recipes.official_steps`)."""
        if "epochs" not in spec and "warmup_epochs" not in spec:
            return off.epochs if off is not None else None
        if dataset not in EXPECTED_COUNTS:
            raise PlanError(f"epochs given for dataset {dataset!r}, which has no official size")
        train = cfg["train"]
        gpus = off.gpus if off is not None else 1
        try:
            steps = {k: recipes.official_steps(spec[k], dataset, gpus, train["global_batch"])
                     for k in ("epochs", "warmup_epochs") if k in spec}
        except recipes.RecipeError as err:
            raise PlanError(f"{where}: epochs -> steps: {err}") from err
        if "epochs" in steps:
            train["steps"] = steps["epochs"]
        for opt in ("vae_optim", "score_optim") if "warmup_epochs" in steps else ():
            train.setdefault(opt, {})["warmup_steps"] = steps["warmup_epochs"]
        return spec.get("epochs", off.epochs if off is not None else None)

    def _official_eval_layer(self, kind: str, official: str | None) -> tuple[dict | None, str | None]:
        """The one place the official evaluation commands enter: (settings per evaluation, what they are), for an
        LSGM at the paper scale (its NVlabs/LSGM evaluation commands) and a pixel SGM (score_sde's PC sampler; its
        step count at the paper scale only); else (None, None)."""
        if official is None:
            return None, None
        if self.base == "paper" and kind == "lsgm":
            return _with_samples(recipes.eval_settings(official)), f"the official evaluation command of {official}"
        if kind == "sgm":
            pc = _with_samples(recipes.score_sde_config(official)[2])
            if self.base != "paper":
                pc = {m: {k: v for k, v in settings.items() if k != "pc_steps"} for m, settings in pc.items()}
            return pc, f"score_sde's sampler of {official}"
        return None, None

    def _eval_settings(self, kind: str, spec: dict, official: str | None, where: str, name: str | None) -> Layers:
        """The run's settings per evaluation: the scale's ``eval``, the kind's ``defaults.<kind>.eval``, the official
        layer, the run's own ``eval``, a derived scale's ``shrink``. A scale- or kind-level value the official layer
        replaces by another would take no effect for this run: refused, naming the key and where to deviate."""
        home = f"scales.{self.base}"  # a derived scale's eval blocks are its base's
        scale_layers = {f"{home}.eval": self.sc["eval"],
                        f"{home}.defaults.{kind}.eval": self.sc["defaults"].get(kind, {}).get("eval")}
        own = f"{home}.table6.eval" if spec is self.sc.get("table6") else f"{home}.runs.{kind}.{name}.eval"
        official_layer, what = self._official_eval_layer(kind, official)
        for key_path, layer in scale_layers.items():
            for metric, values in (layer or {}).items():
                for key, value in (values or {}).items():
                    theirs = (official_layer or {}).get(metric, {})
                    if value is not None and key in theirs and theirs[key] != value:
                        raise PlanError(f"{key_path}.{metric}.{key} = {value!r} takes no effect for {where}: "
                                        f"{what} sets {key} = {theirs[key]!r}; remove the key, or set "
                                        f"{own}.{metric}.{key} to deviate from the official value")
        layers = Layers()
        for layer_name, values in [*scale_layers.items(), (what, official_layer), (own, spec.get("eval")),
                                   *self._shrink_layers(kind, name, "eval")]:
            layers.add(layer_name, values)
        base = layers.merged()
        unknown = sorted(set(base) - set(EVALUATIONS) - {"variance"})
        if unknown:
            raise PlanError(f"{where}: unknown evaluation {unknown[0]!r}"
                            f"{eval_settings.closest(unknown[0], EVALUATIONS)}; known: {', '.join(EVALUATIONS)}")
        settings = check_eval_settings({m: dict(base.get(m, {})) for m in EVALUATIONS}, where)
        layers.add_changes("the evaluation's settings as checked (lsgm/eval/settings.py)", base, settings)
        for control, (command, fixed) in CONTROL_EVALS.items() if kind == "lsgm" else ():  # its command's settings
            check_eval_settings({command: {**settings[command], **fixed}}, where)
            layers.add(f"{control}: {command}'s settings (lsgm/eval/registry.py)", {control: settings[command]})
            layers.add(f"{control}: the control's own (lsgm/eval/registry.py)", {control: fixed})
        return layers

    def _make(self, kind: str, name: str, dataset: str, seed: int, *, rec: dict, spec: dict, evals, where: str,
              extra: dict | None = None, extra_name: str = "", official: str | None = None, cell: bool = False,
              shrink: bool = True) -> Run:
        unknown = [m for m in evals if m not in registry.RECIPE_EVALS]
        if unknown:
            raise PlanError(f"{where}: evals: {unknown[0]!r} is not an evaluation a recipe may list"
                            f"{eval_settings.closest(unknown[0], registry.RECIPE_EVALS)} (lsgm/eval/registry.py: "
                            f"{', '.join(registry.RECIPE_EVALS)})")
        official = official if official is not None else rec.get("official")
        off, off_cfg, deviations = self._official(kind, official)
        layers, home = Layers(), f"scales.{self.base}"
        layers.add(f"official recipe {official} (lsgm/recipes)", off_cfg)
        layers.add(f"recipes.{kind}.{name}.config", rec.get("config"))
        layers.add(f"{home}.defaults.{kind}.config", self.sc["defaults"].get(kind, {}).get("config"))
        layers.add(f"{home}.table6.config" if cell else f"{home}.runs.{kind}.{name}.config", spec.get("config"))
        layers.add(extra_name, extra)
        cfg = layers.merged()
        before = copy.deepcopy(cfg)
        cfg.update(kind=kind, name=f"{self.scale}/{dataset}/{kind}/{name}-s{seed}", seed=seed)
        cfg.setdefault("data", {})["name"] = dataset
        self._data_sizes(cfg, dataset)
        cfg["deviations"] = sorted(set(deviations) | set(cfg.get("deviations", [])))
        root = self.sc.get("data_root")
        if root:
            cfg["data"].setdefault("root", root)  # lsgm.data finds <root>/MNIST/raw, <root>/celeba256/... itself
        epochs = self._steps(dataset, cfg, spec, off, where)
        layers.add_changes("the plan (kind, name, seed, data, deviations, epochs as steps)", before, cfg)
        own = None if cell else name
        reference = off_cfg if self.base == self.scale else copy.deepcopy(cfg)  # the durations the rules keep
        if shrink:  # a control (``shrink`` False) already has its LSGM's and backbone's shrunk sections
            shrinks = [values for layer_name, values in self._shrink_layers(kind, own, "config")
                       if layers.add(layer_name, values) or True]
            cfg = deep_merge(cfg, *shrinks)
            explicit = deep_merge(rec.get("config") or {}, self.sc["defaults"].get(kind, {}).get("config") or {},
                                  spec.get("config") or {}, *shrinks)
            if self.scale != "paper":
                before = copy.deepcopy(cfg)
                scaling.apply(cfg, reference, explicit.get("train") or {})
                layers.add_changes("the scaling rules (lsgm/plan/scaling.py)", before, cfg)
        if self.base != self.scale:
            epochs = None  # a miniature's steps are its own, not the paper's epochs
        try:
            resolved = to_dict(from_dict(RunConfig, cfg, where=where))
        except ConfigError as err:
            raise PlanError(str(err)) from err
        defaults = Layers()
        defaults.add_changes("lsgm/config.py (the run config's defaults and types)", cfg, resolved)
        layers.entries[:0] = defaults.entries
        nodes, per_node = self._geometry(off, spec, kind)
        runtime = int(spec.get("runtime", self.sc["defaults"].get(kind, {}).get("runtime", 60)))
        if kind == "lsgm" and "fid" in evals:  # the sample-quality control of every trained LSGM (lsgm/plan/common.py)
            evals = (*evals, *(c for c, (command, _) in CONTROL_EVALS.items() if command == "fid"))
        eval_layers = self._eval_settings(kind, spec, official, where, own)
        run = Run(scale=self.scale, kind=kind, dataset=dataset, name=name, seed=seed, config=resolved, nodes=nodes,
                  gpus_per_node=per_node, runtime=runtime, evals=tuple(evals), eval_settings=eval_block(eval_layers, kind),
                  official=official, epochs=epochs, per_gpu=dict(self.sc["resources"]["train"]),
                  gpu=self.sc.get("launch", {}).get("gpu", True), layers={"config": layers, "eval": eval_layers},
                  gpu_model=self.cluster["gpu_model"])
        try:
            run.batch_split
        except ConfigError as err:
            raise PlanError(f"{where}: {err}") from err
        self.runs[(kind, dataset, name, seed)] = run
        return run

    def _recipe_run(self, kind: str, name: str, rec: dict, seed: int) -> Run:
        where = f"recipes.{kind}.{name} (scale {self.scale})"
        spec = self.sc["runs"].get(kind, {}).get(name, {})
        paper_dataset = rec.get("dataset")
        if paper_dataset is None:
            if "official" not in rec:
                raise PlanError(f"{where}: give 'dataset' or 'official'")
            paper_dataset = self._official(kind, rec["official"])[0].dataset
        dataset = self._dataset(paper_dataset, where)
        return self._make(kind, name, dataset, seed, rec=rec, spec=spec, evals=rec.get("evals", []), where=where)

    def _cell_run(self, cell: Cell, seed: int) -> Run:
        t6, where = self.config["table6"], f"table6.grid.{cell.sde}[{cell.text}]"
        if cell.table6_error:
            raise PlanError(f"{where}: {cell.table6_error}")
        if cell.sde not in t6["sde_official"]:
            raise PlanError(f"table6.sde_official: no official recipe for the {cell.sde} SDE of table6.grid")
        sde_recipe = t6["sde_official"][cell.sde]
        sde = self._official("lsgm", sde_recipe)[1]["sde"]
        extra = {"sde": sde, "objective": cell.objective}
        dataset = self._dataset(t6["dataset"], where)
        rec = {"official": t6["official"]}
        return self._make("lsgm", cell.run_name, dataset, seed, rec=rec, spec=self.sc.get("table6", {}),
                          evals=t6["evals"], where=where, extra=extra, official=t6["official"], cell=True,
                          extra_name=f"Table 6 cell {cell.sde} {cell.text} (table6.sde_official, the cell's objective)")

    def _parse_cells(self) -> tuple[Cell, ...]:
        """The Table 6 grid, each cell parsed once (``self.cells``)."""
        out = []
        for sde, texts in self.config["table6"]["grid"].items():
            for text in texts:
                try:
                    out.append(Cell.parse(sde, text))
                except ValueError as err:
                    raise PlanError(f"table6.grid.{sde}: {err}") from err
        return tuple(out)

    def _build(self) -> None:
        recipes_cfg, t6 = self.config["recipes"], self.config["table6"]
        for kind, specs in self.sc["runs"].items():
            for name, spec in specs.items():
                if "same_as" in spec and kind != "sgm":
                    raise PlanError(f"scales.{self.scale}.runs.{kind}.{name}.same_as: only pixel SGM recipes (sgm) "
                                    "can share another recipe's model")
        for name in recipes_cfg["sgm"]:
            self._read_same_as("sgm", name)
        lsgm_backbones = {spec.get("backbone") for spec in self.sc["runs"].get("lsgm", {}).values()}
        lsgm_backbones |= {rec["backbone"] for rec in recipes_cfg["lsgm"].values()}
        for seed in self.sc["seeds"]:
            grid = seed in self.table6_seeds  # the Table 6 grid trains on this seed
            backbones = {name: self._recipe_run("vae", name, rec, seed) for name, rec in recipes_cfg["vae"].items()
                         if "stage2" not in rec and (grid or name != t6["backbone"] or name in lsgm_backbones)}
            lsgms = {}
            for name, rec in recipes_cfg["lsgm"].items():
                lsgms[name] = run = self._recipe_run("lsgm", name, rec, seed)
                backbone = self.sc["runs"].get("lsgm", {}).get(name, {}).get("backbone", rec["backbone"])
                self._attach(run, backbones, backbone, f"recipes.lsgm.{name}")
                if run.evals:
                    self._init_run(run, controls.init_name(name))
            for name, rec in recipes_cfg["vae"].items():
                if "stage2" in rec:
                    self._control_run(name, rec, lsgms, seed)
            first_cells = {}
            for cell in self.cells if grid else ():
                run = self._cell_run(cell, seed)
                self._attach(run, backbones, t6["backbone"], "table6.backbone")
                first_cells.setdefault(cell.sde, run)
            for sde, run in first_cells.items():  # the cells of one SDE start from the same model
                self._init_run(run, controls.table6_init_name(sde)).init_of = sde
            for name, rec in recipes_cfg["sgm"].items():
                if ("sgm", name) not in self.same_as:
                    self._recipe_run("sgm", name, self._with_shared_evals("sgm", name, rec), seed)
        for run in self.runs.values():  # sampling cost (Figure 4): the first seed
            if run.seed != self.seeds[0]:
                run.evals = tuple(m for m in run.evals if m != "cost")
        # FD feature classifiers: one per dataset that uses classifier features (seed fixed, not a sweep)
        for dataset, features in self.sc["fd"]["features"].items():
            if features == "classifier":
                spec = self.sc["runs"].get("classifier", {}).get("fd", {})
                self._make_classifier(dataset, spec)

    def _read_same_as(self, kind: str, name: str) -> None:
        """Record ``scales.S.runs.KIND.NAME.same_as`` in ``self.same_as`` (checked: another recipe of the same kind and
        dataset, itself not an alias)."""
        other = self.sc["runs"].get(kind, {}).get(name, {}).get("same_as")
        if other is None:
            return
        where = f"scales.{self.scale}.runs.{kind}.{name}.same_as"
        recs = self.config["recipes"][kind]
        if other not in recs or other == name:
            raise PlanError(f"{where}: {other!r} is not another recipe under recipes.{kind} ({sorted(recs)})")
        if self.sc["runs"].get(kind, {}).get(other, {}).get("same_as"):
            raise PlanError(f"{where}: {other!r} is itself same_as another recipe; name the trained one")
        ours, theirs = (self._dataset(recs[n].get("dataset") or self._official(kind, recs[n]["official"])[0].dataset,
                                      where) for n in (name, other))
        if ours != theirs:
            raise PlanError(f"{where}: {other!r} trains on {theirs}, {name!r} on {ours} at this scale")
        self.same_as[(kind, name)] = other

    def _with_shared_evals(self, kind: str, name: str, rec: dict) -> dict:
        """Recipe ``name`` with the evaluations of the recipes ``same_as`` it added (their rows read its metrics)."""
        evals = list(rec.get("evals", []))
        for (k, alias), other in self.same_as.items():
            if k == kind and other == name:
                evals += [m for m in self.config["recipes"][kind][alias].get("evals", []) if m not in evals]
        return {**rec, "evals": evals}

    def _make_classifier(self, dataset: str, spec: dict) -> Run:
        where = f"scales.{self.scale}.fd.features.{dataset}"
        recipe = self.config["recipes"]["classifier"]["fd"]
        return self._make("classifier", "fd", dataset, 0, rec=recipe, spec=spec, evals=[], where=where)

    def _attach(self, run: Run, backbones: dict, name: str, where: str) -> None:
        """An LSGM starts from its backbone: same architecture (copied) and same data."""
        run.backbone = self._backbone(backbones, name, run, where)
        run.config["vae"] = copy.deepcopy(run.backbone.config["vae"])
        run.layers["config"].add(f"the backbone (recipes.vae.{name}: its vae section)", {"vae": run.config["vae"]})

    def _backbone(self, backbones: dict, name: str, run: Run, where: str) -> Run:
        if name not in backbones:
            raise PlanError(f"{where}: backbone {name!r} is not a recipe under recipes.vae ({sorted(backbones)})")
        vae = backbones[name]
        if vae.dataset != run.dataset:
            raise PlanError(f"{where}: backbone {name!r} is trained on {vae.dataset}, the LSGM on {run.dataset}")
        return vae
