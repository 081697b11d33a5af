"""Resolve the workflow's config.yaml into the runs, evaluations and targets of one scale.

Pure Python (no Snakemake, no torch), so the Snakefile and the tests share it. Every run of a scale is
resolved up front and its run config validated with ``lsgm.config.from_dict(RunConfig, ...)``; an
impossible combination (e.g. r_un(t) with the geometric SDE) raises :class:`PlanError` naming the key.

A run config is the deep merge, later layers winning, of
  1. ``scales.<scale>.defaults.<kind>.config``   sizes/steps shared by every run of that kind,
  2. ``recipes.<kind>.<name>.config``             what makes the recipe (SDE, objective, lrs), any scale,
  3. ``scales.<scale>.overrides.<kind>.config``  scale-wide settings that beat the recipe (e.g. EMA decay),
  4. ``scales.<scale>.runs.<kind>.<name>.config`` the recipe's sizes at this scale,
plus what the workflow fills in: kind, name, seed, the dataset, steps from ``epochs``, and (LSGM)
the backbone's ``vae`` section.
Table 6 cells use ``table6.config`` and ``scales.<scale>.table6`` for layers 2/4 and add the cell's
SDE and objective.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field

from lsgm.config import ConfigError, RunConfig, from_dict, to_dict

SCALES = ("smoke", "quick", "paper")
KINDS = ("vae", "lsgm", "sgm", "classifier")
METRICS = ("nll", "fid", "cost")


class PlanError(ValueError):
    """config.yaml describes something that cannot be run; the message says what and where."""


def deep_merge(base: dict, *overrides: dict | None) -> dict:
    out = copy.deepcopy(base)
    for over in overrides:
        for key, value in (over or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def short_hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def cell_name(sde: str, cell: str) -> str:
    """Table 6 cell ``un-is-rew`` of the VPSDE -> run name ``vpsde-w_un-is-q_rew``."""
    weighting, sampling, q_objective = cell.split("-")
    return f"{sde}-w_{weighting}-{sampling}-q_{q_objective}"


def check_cell(sde: str, cell: str, where: str) -> None:
    """Refuse the Table 6 cells the paper marks n/a."""
    weighting, sampling, _ = cell.split("-")
    if sde == "geometric" and weighting == "un" and sampling == "is":
        raise PlanError(
            f"{where}: impossible Table 6 cell '{cell}' with the geometric SDE: r_un(t) importance "
            "sampling (drop_all_iw) exists only for the VPSDE (paper Table 6: n/a). Remove it."
        )
    if sde == "geometric" and weighting == "ll" and sampling == "is":
        raise PlanError(
            f"{where}: Table 6 cell '{cell}' with the geometric SDE is identical to 'll-uniform-*' "
            "(log sigma_t^2 is linear in t, so r_ll(t) = U; paper Table 6: n/a). Remove it."
        )


def check_run_config(cfg: dict, where: str) -> None:
    """Combinations RunConfig's types allow but the method does not."""
    sde, obj = cfg.get("sde", {}), cfg.get("objective", {})
    sde_type = sde.get("type", "vpsde")
    if sde_type == "vpsde" and sde.get("t_eps", 1e-2) <= 0 and sde.get("sigma2_0", 0.0) <= 0:
        raise PlanError(
            f"{where}: sde.t_eps = 0 with the VPSDE and sigma2_0 = 0 gives var(0) = 0 (log 0 in the "
            "objective); use t_eps > 0 (1e-2) or the geometric SDE with sigma2_0_geometric > 0."
        )
    if sde_type == "geometric" and sde.get("t_eps", 1e-2) <= 0 and sde.get("sigma2_0_geometric", 3e-5) <= 0:
        raise PlanError(f"{where}: t_eps = 0 needs sde.sigma2_0_geometric > 0.")
    if cfg.get("kind") != "lsgm":
        return
    if sde_type == "geometric" and obj.get("weighting") == "un" and obj.get("sampling") == "is":
        raise PlanError(f"{where}: weighting 'un' with sampling 'is' (r_un) exists only for the VPSDE.")
    if obj.get("mode") == "disjoint":
        if obj.get("q_objective", "rew") == "rew":
            raise PlanError(f"{where}: objective.mode 'disjoint' needs q_objective ll_is or ll_uniform, not rew.")
        if not obj.get("train_vae", True):
            raise PlanError(f"{where}: objective.mode 'disjoint' needs objective.train_vae: true.")


@dataclass
class Run:
    """One trained model of one scale."""

    scale: str
    kind: str
    dataset: str
    name: str
    seed: int
    config: dict
    gpus: int = 0
    runtime: int = 60
    evals: tuple = ()
    eval_settings: dict = field(default_factory=dict)
    backbone: "Run | None" = None

    @property
    def stem(self) -> str:
        return f"{self.dataset}/{self.kind}/{self.name}-s{self.seed}"

    @property
    def config_path(self) -> str:
        return f"results/{self.scale}/configs/{self.stem}.yaml"

    @property
    def model_path(self) -> str:
        return f"results/{self.scale}/runs/{self.stem}/model.pt"

    def metrics_path(self, metric: str) -> str:
        return f"results/{self.scale}/metrics/{self.stem}/{metric}.json"

    @property
    def fingerprint(self) -> str:
        parent = self.backbone.fingerprint if self.backbone else ""
        return short_hash([self.config, parent])

    @property
    def ckpt_dir(self) -> str:
        # the config hash in the name: a changed config never resumes a stale checkpoint
        return f"checkpoints/{self.scale}/{self.stem}-{self.fingerprint}"


class Plan:
    """Everything one scale runs, resolved from the (schema-validated) config."""

    def __init__(self, config: dict, scale: str):
        if scale not in SCALES:
            raise PlanError(f"scale {scale!r} is not one of {list(SCALES)}")
        self.config, self.scale = config, scale
        self.sc = config["scales"][scale]
        self.runs: dict[tuple, Run] = {}
        self._build()
        self._check_references()

    # ---------------------------------------------------------------- building
    def _dataset(self, paper_dataset: str, where: str) -> str:
        mapping = self.sc["datasets"]
        if paper_dataset not in mapping:
            raise PlanError(f"{where}: dataset {paper_dataset!r} missing from scales.{self.scale}.datasets")
        return mapping[paper_dataset]

    def _steps(self, dataset: str, cfg: dict, spec: dict) -> None:
        """Official recipes count epochs; convert to optimizer steps at the global batch size."""
        batch = cfg.get("train", {}).get("batch_size", RunConfig().train.batch_size)
        size = self.config["train_sizes"].get(dataset)
        for key in ("epochs", "warmup_epochs"):
            if key in spec and size is None:
                raise PlanError(f"{key} given for dataset {dataset!r} but train_sizes.{dataset} is not set")
        per_epoch = max(1, size // batch) if size else 1
        train = cfg.setdefault("train", {})
        if "epochs" in spec:
            train["steps"] = int(spec["epochs"] * per_epoch)
        if "warmup_epochs" in spec:
            warm = int(spec["warmup_epochs"] * per_epoch)
            for opt in ("vae_optim", "score_optim"):
                train.setdefault(opt, {})["warmup_steps"] = warm

    def _eval_settings(self, kind: str, spec: dict) -> dict:
        base = deep_merge(self.sc["eval"], self.sc["defaults"].get(kind, {}).get("eval"), spec.get("eval"))
        return {m: {k: v for k, v in base.get(m, {}).items()} for m in METRICS}

    def _resources(self, kind: str, spec: dict) -> tuple[int, int]:
        d = self.sc["defaults"].get(kind, {})
        gpus = spec.get("gpus", d.get("gpus", 0))
        runtime = spec.get("runtime", d.get("runtime", 60))
        return int(gpus), int(runtime)

    def _make(self, kind, name, dataset, seed, recipe_cfg, scale_spec, evals, where, extra=None):
        cfg = deep_merge(self.sc["defaults"].get(kind, {}).get("config", {}), recipe_cfg,
                         self.sc["overrides"].get(kind, {}).get("config"), scale_spec.get("config"), extra)
        cfg.update(kind=kind, name=f"{self.scale}/{dataset}/{kind}/{name}-s{seed}", seed=seed)
        cfg.setdefault("data", {})["name"] = dataset
        root = self.sc.get("data_root")
        if root:
            cfg["data"].setdefault("root", root)  # lsgm.data finds <root>/MNIST/raw, <root>/celeba256/... itself
        self._steps(dataset, cfg, scale_spec)
        check_run_config(cfg, where)
        try:
            resolved = to_dict(from_dict(RunConfig, cfg, where=where))
        except ConfigError as err:
            raise PlanError(str(err)) from err
        gpus, runtime = self._resources(kind, scale_spec)
        run = Run(self.scale, kind, dataset, name, seed, resolved, gpus, runtime, tuple(evals),
                  self._eval_settings(kind, scale_spec))
        self.runs[(kind, dataset, name, seed)] = run
        return run

    def _recipe_run(self, kind: str, name: str, rec: dict, seed: int) -> Run:
        where = f"recipes.{kind}.{name} (scale {self.scale})"
        spec = self.sc["runs"].get(kind, {}).get(name, {})
        dataset = self._dataset(rec["dataset"], where)
        return self._make(kind, name, dataset, seed, rec.get("config"), spec, rec.get("evals", []), where)

    def _cell_run(self, sde: str, cell: str, seed: int) -> Run:
        t6, where = self.config["table6"], f"table6.grid.{sde}[{cell}]"
        check_cell(sde, cell, where)
        weighting, sampling, q_objective = cell.split("-")
        extra = {
            "sde": deep_merge(t6["sde"].get(sde, {}), {"type": sde}),
            "objective": {"weighting": weighting, "sampling": sampling, "q_objective": q_objective},
        }
        dataset = self._dataset(t6["dataset"], where)
        return self._make("lsgm", cell_name(sde, cell), dataset, seed, t6.get("config"),
                          self.sc.get("table6", {}), t6["evals"], where, extra)

    def _build(self) -> None:
        recipes, t6 = self.config["recipes"], self.config["table6"]
        for seed in self.sc["seeds"]:
            backbones = {name: self._recipe_run("vae", name, rec, seed) for name, rec in recipes["vae"].items()}
            for name, rec in recipes["lsgm"].items():
                run = self._recipe_run("lsgm", name, rec, seed)
                backbone = self.sc["runs"].get("lsgm", {}).get(name, {}).get("backbone", rec["backbone"])
                self._attach(run, backbones, backbone, f"recipes.lsgm.{name}")
            for sde, cells in t6["grid"].items():
                for cell in cells:
                    self._attach(self._cell_run(sde, cell, seed), backbones, t6["backbone"], "table6.backbone")
            for name, rec in recipes["sgm"].items():
                self._recipe_run("sgm", name, rec, seed)
        # FD feature classifiers: one per dataset that uses classifier features (seed fixed, not a sweep)
        for dataset, features in self.sc["fd"]["features"].items():
            if features == "classifier":
                spec = self.sc["runs"].get("classifier", {}).get("fd", {})
                self._make_classifier(dataset, spec)

    def _make_classifier(self, dataset: str, spec: dict) -> Run:
        where = f"scales.{self.scale}.fd.features.{dataset}"
        if dataset not in self.sc["datasets"].values():
            raise PlanError(f"{where}: {dataset!r} is not a dataset of this scale (scales.{self.scale}.datasets)")
        recipe = self.config["recipes"]["classifier"]["fd"]
        return self._make("classifier", "fd", dataset, 0, recipe.get("config"), spec, [], where)

    def _attach(self, run: Run, backbones: dict, name: str, where: str) -> None:
        """An LSGM starts from its backbone: same architecture (copied) and same data."""
        run.backbone = self._backbone(backbones, name, run, where)
        run.config["vae"] = copy.deepcopy(run.backbone.config["vae"])

    def _backbone(self, backbones: dict, name: str, run: Run, where: str) -> Run:
        if name not in backbones:
            raise PlanError(f"{where}: backbone {name!r} is not a recipe under recipes.vae ({sorted(backbones)})")
        vae = backbones[name]
        if vae.dataset != run.dataset:
            raise PlanError(f"{where}: backbone {name!r} is trained on {vae.dataset}, the LSGM on {run.dataset}")
        return vae

    def _check_references(self) -> None:
        for run in self.runs.values():
            for metric in run.evals:
                if metric in ("fid", "cost"):
                    self.stats_path(run.dataset, f"{run.kind} run {run.name}")
        for table, spec in self.config["tables"].items():
            for kind in ("vae", "lsgm", "sgm"):
                for name in spec.get(kind, []):
                    if name not in self.config["recipes"][kind]:
                        raise PlanError(f"tables.{table}.{kind}: {name!r} is not a recipe under recipes.{kind}")
        for kind in ("lsgm", "sgm"):
            for name in self.config["figure4"][kind]:
                rec = self.config["recipes"][kind].get(name)
                if rec is None or "cost" not in rec.get("evals", []):
                    raise PlanError(f"figure4.{kind}: {name!r} must be a recipes.{kind} entry with 'cost' in its evals")

    # ---------------------------------------------------------------- lookups
    def run(self, kind: str, dataset: str, name: str, seed) -> Run:
        key = (kind, dataset, name, int(seed))
        if key not in self.runs:
            raise PlanError(
                f"no {kind} run '{name}' with seed {seed} on dataset {dataset} at scale {self.scale} in "
                "config.yaml (see recipes, table6 and scales.*.seeds/datasets)"
            )
        return self.runs[key]

    def stats_path(self, dataset: str, where: str = "fid") -> str:
        fd = self.sc["fd"]
        features = fd["features"].get(dataset)
        if features is None:
            raise PlanError(f"{where}: FD/FID on dataset {dataset!r} needs scales.{self.scale}.fd.features.{dataset}")
        return f"results/{self.scale}/fid_stats/{dataset}-{features}-{fd['version']}.pt"

    def features(self, dataset: str) -> str:
        return self.sc["fd"]["features"][dataset]

    def runs_of(self, kind: str, names) -> list[Run]:
        return [r for r in self.runs.values() if r.kind == kind and r.name in names]

    def table6_runs(self) -> list[Run]:
        t6 = self.config["table6"]
        names = {cell_name(sde, c) for sde, cells in t6["grid"].items() for c in cells}
        dataset = self._dataset(t6["dataset"], "table6.dataset")
        return [r for r in self.runs.values() if r.kind == "lsgm" and r.name in names and r.dataset == dataset]

    def table_inputs(self, table: str) -> list[str]:
        if table not in self.config["tables"]:
            raise PlanError(f"table {table!r} is not under tables in config.yaml ({sorted(self.config['tables'])})")
        spec = self.config["tables"][table]
        runs = self.table6_runs() if spec.get("table6") else []
        for kind in ("vae", "lsgm", "sgm"):
            runs += self.runs_of(kind, spec.get(kind, []))
        return sorted({r.metrics_path(m) for r in runs for m in r.evals if m in ("nll", "fid")})

    def figure4_inputs(self) -> list[str]:
        f4 = self.config["figure4"]
        runs = self.runs_of("lsgm", f4["lsgm"]) + self.runs_of("sgm", f4["sgm"])
        return sorted(r.metrics_path("cost") for r in runs)

    def targets(self) -> list[str]:
        out = [r.metrics_path(m) for r in self.runs.values() for m in r.evals]
        for table in self.config["tables"]:
            out += [f"results/{self.scale}/tables/{table}.md", f"results/{self.scale}/tables/{table}.csv"]
        out += [f"results/{self.scale}/figure4.png", f"results/{self.scale}/figure4.csv"]
        return sorted(set(out))


def eval_args(settings: dict) -> str:
    """``{"iw_samples": 8, "bn_train": True, "tolerances": [1e-3, 1e-2]}`` -> CLI flags; None/[]/False dropped."""
    parts = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False or value == []:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts.append(flag + " " + " ".join(str(v) for v in value))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)
