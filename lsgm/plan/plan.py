"""The plan of one scale (:class:`Plan`): the resolved runs (:mod:`lsgm.plan.resolve`) and what the DAG asks of
them -- every target, each table's and figure's inputs, reference statistics, resources -- checked across runs (the
references of tables and figures, like for like).

Pure Python (no Snakemake, no torch): the Snakefile, ``lsgm plan`` and the tests share it.
"""

from __future__ import annotations

from lsgm import like_for_like
from lsgm.eval import settings as eval_settings
from lsgm.datasets_info import FID_REFERENCE
from lsgm.plan import layout
from lsgm.plan.common import TABLE_METRICS, PlanError, check_eval_settings, deep_merge, resolved_settings
from lsgm.plan.resolve import Resolution
from lsgm.plan.run import Run


class Plan(Resolution):
    """Everything one scale runs, resolved from the (schema-validated) config."""

    def __init__(self, config: dict, scale: str):
        super().__init__(config, scale)
        self._select()
        self._check_references()

    @property
    def tables(self) -> list[str]:
        """The tables this scale compiles (``scales.S.select.tables``; default every table of ``tables:``)."""
        return list(self.sc.get("select", {}).get("tables", self.config["tables"]))

    @property
    def figures(self) -> list[str]:
        """The figures this scale draws (``scales.S.select.figures``; default Figure 4 and the variance figure)."""
        return list(self.sc.get("select", {}).get("figures", ("figure4", "variance")))

    def _select(self) -> None:
        """``scales.S.select``: a scale that runs part of the experiment (e.g. ``demo``: one recipe and its controls).
        A run outside it keeps no evaluation, so it is trained only where a selected run needs it (a backbone)."""
        select = self.sc.get("select", {})
        chosen, table6 = select.get("recipes", {}), select.get("table6", True)
        where = f"scales.{self.scale}.select"
        for kind, names in chosen.items():
            for name in set(names) - set(self.config["recipes"][kind]):
                raise PlanError(f"{where}.recipes.{kind}: {name!r} is not a recipe under recipes.{kind}")
        for table in select.get("tables", []):
            if table not in self.config["tables"]:
                raise PlanError(f"{where}.tables: {table!r} is not a table under tables ({sorted(self.config['tables'])})")
        recipes = self.config["recipes"]
        for run in self.runs.values():
            name = run.init_of if run.init_of in recipes["lsgm"] else run.name
            cell = run.kind == "lsgm" and name not in recipes["lsgm"]  # a Table 6 cell or its SDE's control
            keep = table6 if cell else run.kind == "classifier" or name in chosen.get(run.kind, recipes[run.kind])
            if not keep:
                run.evals = ()

    # ---------------------------------------------------------------- checks across runs
    def _check_references(self) -> None:
        self.variance_settings()
        for run in self.runs.values():
            for metric in run.evals:
                if metric in ("fid", "cost"):
                    self.stats_path(run.dataset, f"{run.kind} run {run.name}")
        for table, spec in self.config["tables"].items():
            for kind in ("vae", "lsgm", "sgm"):
                for name in spec.get(kind, []):
                    if name not in self.config["recipes"][kind]:
                        raise PlanError(f"tables.{table}.{kind}: {name!r} is not a recipe under recipes.{kind}")
        for table in self.config["tables"]:
            self._check_like_for_like(table)
        for kind in ("lsgm", "sgm"):
            for name in self.config["figure4"][kind]:
                rec = self.config["recipes"][kind].get(name)
                if rec is None or "cost" not in rec.get("evals", []):
                    raise PlanError(f"figure4.{kind}: {name!r} must be a recipes.{kind} entry with 'cost' in its evals")

    def _check_like_for_like(self, table: str) -> None:
        """Every NLL of one table uses the same estimator: the same K importance samples and, where the prior is a
        score model, the same M inner ODE solves, tolerance and end time (issue: a K = 100 VAE bound printed beside
        K = 1 LSGM estimates), and every FD/FID the same sample count (:mod:`lsgm.like_for_like`, which the report's
        check of the metrics files shares)."""
        by_path = {r.metrics_path(m): (m, r) for r in self.runs.values() for m in ("nll", "fid")}  # fid_normal: fid's
        rows = [(metric, run.kind, f"{run.kind}/{run.name}", run.eval_settings[metric])
                for metric, run in (by_path[p] for p in self.table_inputs(table) if p in by_path)]
        for metric, k, values in like_for_like.mismatches(rows)[:1]:
            (a, (first, *_)), (b, (other, *_)) = list(values.items())[:2]
            what = "NLLs" if metric == "nll" else "FDs/FIDs"
            raise PlanError(f"tables.{table}: {what} not like for like: {first} has eval.{metric}.{k} = {a!r}, {other} "
                            f"has {b!r}; set one value in scales.{self.scale}.eval.{metric} (and the defaults./runs. "
                            "overrides)")

    # ---------------------------------------------------------------- lookups
    def run(self, kind: str, dataset: str, name: str, seed) -> Run:
        key = (kind, dataset, name, int(seed))
        if key not in self.runs:
            raise PlanError(self._no_run(kind, dataset, name, int(seed)))
        return self.runs[key]

    def _no_run(self, kind: str, dataset: str, name: str, seed: int) -> str:
        """One line: what a target names that this scale has not, the closest name and the names there are."""
        names = sorted({r.name for r in self.runs.values() if r.kind == kind and r.dataset == dataset})
        seeds = sorted({r.seed for r in self.runs.values() if r.kind == kind and r.dataset == dataset and r.name == name})
        if names and name in names:
            key = "table6_n_seeds" if seeds and len(seeds) < len(self.seeds) else "seeds"  # the grid's seeds: a subset
            return (f"{kind} run '{name}' on {dataset} at scale {self.scale} has no seed {seed}; its seeds: "
                    f"{', '.join(map(str, seeds))} (scales.{self.scale}.{key})")
        datasets = sorted({r.dataset for r in self.runs.values() if r.kind == kind})
        if not names:
            return (f"no {kind} run on dataset '{dataset}' at scale {self.scale}"
                    f"{eval_settings.closest(dataset, datasets)}; its {kind} runs are on: {', '.join(datasets)}")
        return (f"no {kind} run '{name}' on {dataset} at scale {self.scale}{eval_settings.closest(name, names)} "
                f"(the {kind} runs there: {', '.join(names)})")

    def stats_path(self, dataset: str, where: str = "fid") -> str:
        fd = self.sc["fd"]
        features = fd["features"].get(dataset)
        if features is None:
            raise PlanError(f"{where}: FD/FID on dataset {dataset!r} needs scales.{self.scale}.fd.features.{dataset}")
        reference = FID_REFERENCE[dataset]  # the official splits and bit depth (lsgm.datasets_info)
        return layout.fill(layout.FID_STATS, scale=self.scale, dataset=dataset, splits="+".join(reference.splits),
                           bits=reference.bits, features=features, version=fd["version"])

    def eval_resources(self) -> dict:
        """Slurm resources of an evaluation job (also reference statistics and the FD classifier): the scale's
        ``resources.eval`` (``threads`` and ``mem_mb`` per GPU) times its GPUs; ``cpus_per_task`` is also the job's
        threads; a declared GPU type (``cluster.gpu_model``) as ``gpu_model``."""
        ev = self.sc["resources"]["eval"]
        gpus = ev.get("gpus", 0)
        out = {"gpu": gpus or None, "cpus_per_task": ev["threads"] * max(1, gpus), "mem_mb": ev["mem_mb"] * max(1, gpus),
               "runtime": ev.get("runtime", 60)}
        if gpus and self.cluster["gpu_model"]:
            out["gpu_model"] = self.cluster["gpu_model"]
        return out

    def data_manifest(self, dataset: str) -> str | None:
        """A miniature's dataset (``lsgm make-data`` in ``data_root``; its manifest is written last), else None."""
        if dataset not in self.sc.get("data_sizes", {}):
            return None
        return layout.fill(layout.DATA_MANIFEST, root=self.sc["data_root"], dataset=dataset)

    def inception_weights(self) -> str | None:
        """The Inception-v3 weights the FIDs use: ``fd.inception_weights`` (``random``: random weights the DAG writes
        into ``data_root``, for plumbing only), else None (``$LSGM_INCEPTION_WEIGHTS`` or torch's hub cache)."""
        weights = self.sc["fd"].get("inception_weights")
        return layout.fill(layout.INCEPTION_RANDOM, root=self.sc["data_root"]) if weights == "random" else weights

    def features(self, dataset: str) -> str:
        return self.sc["fd"]["features"][dataset]

    def runs_of(self, kind: str, names) -> list[Run]:
        """The runs of these recipes (a recipe ``same_as`` another at this scale: the other's runs)."""
        names = {self.same_as.get((kind, n), n) for n in names}
        return [r for r in self.runs.values() if r.kind == kind and r.name in names]

    def table6_runs(self, controls: bool = False) -> list[Run]:
        """The Table 6 cells (``controls``: and each SDE's control at initialisation)."""
        names = {cell.run_name for cell in self.cells}
        sdes = {cell.sde for cell in self.cells} if controls else set()
        dataset = self._dataset(self.config["table6"]["dataset"], "table6.dataset")
        return [r for r in self.runs.values() if r.kind == "lsgm" and (r.name in names or r.init_of in sdes)
                and r.dataset == dataset]

    def table_inputs(self, table: str) -> list[str]:
        if table not in self.config["tables"]:
            raise PlanError(f"table {table!r} is not under tables in config.yaml ({sorted(self.config['tables'])})")
        spec = self.config["tables"][table]
        runs = []
        if spec.get("table6"):  # the cells and, as the grid's reference row, their backbone (no score prior)
            t6 = self.config["table6"]
            dataset = self._dataset(t6["dataset"], "table6.dataset")
            runs = self.table6_runs(controls=True) + [r for r in self.runs_of("vae", [t6["backbone"]])
                                                      if r.dataset == dataset]
        for kind in ("vae", "lsgm", "sgm"):
            runs += self.runs_of(kind, spec.get(kind, []))
        lsgms = set(spec.get("lsgm", []))
        runs += [r for r in self.runs.values() if r.init_of in lsgms]  # each LSGM's control at initialisation
        return sorted({r.metrics_path(m) for r in runs for m in r.evals if m in TABLE_METRICS})

    def figure4_inputs(self) -> list[str]:
        f4 = self.config["figure4"]
        runs = self.runs_of("lsgm", f4["lsgm"]) + self.runs_of("sgm", f4["sgm"])
        runs += [r for r in self.runs.values() if r.init_of in f4["lsgm"]]  # the LSGM at initialisation beside it
        return sorted(r.metrics_path("cost") for r in runs if "cost" in r.evals)

    def variance_inputs(self) -> list[str]:
        """The model.pt of every Table 6 cell at the scale's first seed: the inputs of ``lsgm report variance``."""
        first = self.sc["seeds"][0]
        return sorted(r.model_path for r in self.table6_runs() if r.seed == first)

    def variance_settings(self) -> dict:
        """``scales.S.eval.variance`` (n_latents, n_draws, n_t_draws, batch_size, seed; ranges checked): the flags of
        ``lsgm report variance`` (:func:`eval_args`); absent keys take the CLI's defaults."""
        settings = {"variance": deep_merge(self.sc["eval"].get("variance") or {},
                                           (self.shrink.get("eval") or {}).get("variance"))}
        return check_eval_settings(settings, f"scales.{self.scale}")["variance"]

    def trained_models(self) -> list[Run]:
        """The vae, lsgm and sgm runs the DAG trains: those with evaluations and their backbones (a backbone no
        evaluated LSGM uses, e.g. at the quick scale, is not trained)."""
        out = {id(r): r for r in self.runs.values() if r.evals and r.kind != "classifier"}
        for run in list(out.values()):
            while run.backbone is not None:
                run = out.setdefault(id(run.backbone), run.backbone)
        return sorted(out.values(), key=lambda r: (r.kind, r.dataset, r.name, r.seed))

    def one_seed_runs(self) -> dict[str, list[str]]:
        """{kind: run names} of the runs that have fewer seeds than the scale (the Table 6 grid under
        ``scales.S.table6_n_seeds``): where the scale batches its seeds into one job per run, these run one job per seed
        (a batched job lists every seed of the scale)."""
        seeds: dict[tuple[str, str], set[int]] = {}
        for run in self.runs.values():
            if run.kind != "classifier":
                seeds.setdefault((run.kind, run.name), set()).add(run.seed)
        out: dict[str, list[str]] = {}
        for (kind, name), have in sorted(seeds.items()):
            if have != set(self.seeds):
                out.setdefault(kind, []).append(name)
        return out

    def samples_targets(self) -> list[str]:
        """One grid of samples per trained model, of its first seed (``seeds[0]``) only."""
        return sorted(r.samples_path for r in self.trained_models() if r.seed == self.sc["seeds"][0])

    def targets(self) -> list[str]:
        out = [r.metrics_path(m) for r in self.runs.values() for m in r.evals]
        out += self.samples_targets()
        out += [layout.fill(layout.TABLE, scale=self.scale, table=t, ext=e) for t in self.tables
                for e in ("md", "csv")]
        out += [layout.fill(layout.FIGURE, scale=self.scale, figure=f, ext=e) for f in self.figures
                for e in ("png", "csv")]
        return sorted(set(out))

    def eval_jobs(self) -> list[dict]:
        """Every evaluation job of the scale as ``lsgm plan`` prints it: reference statistics, one per (run, metric),
        the sample grids and the estimator variance, each with its slurm resources and the settings that decide its
        cost (``n_samples``, tolerance, batch). ``gpu_hours`` (measured) is None: no evaluation has been timed on a GPU;
        ``lsgm plan`` adds estimates from counted FLOPs (:mod:`lsgm.plan.cost`)."""
        res = self.eval_resources()
        common = {"gpus": res["gpu"] or 0, "runtime_minutes": res["runtime"], "gpu_hours": None}
        jobs = [{"target": self.stats_path(d), "kind": "fid_stats", "run": d, "scale": self.scale, "settings": {}, **common}
                for d in sorted({r.dataset for r in self.runs.values() if {"fid", "cost"} & set(r.evals)})]
        for run in self.training_runs():
            jobs += [{"target": run.metrics_path(m), "kind": m, "run": run.stem,
                      "settings": resolved_settings(m, run.eval_settings[m], run.kind), **common} for m in run.evals]
        by_grid = {r.samples_path: r for r in self.trained_models()}
        jobs += [{"target": path, "kind": "samples", "run": path.split("/samples/", 1)[1].removesuffix(".png"),
                  "settings": resolved_settings("samples", by_grid[path].eval_settings["samples"], by_grid[path].kind)
                  if path in by_grid
                  else {}, **common} for path in self.samples_targets()]
        jobs.append({"target": layout.fill(layout.FIGURE, scale=self.scale, figure="variance", ext="csv"),
                     "kind": "variance", "run": "table6 cells",
                     "settings": resolved_settings("variance", self.variance_settings()), **common})
        return jobs

    def training_runs(self) -> list[Run]:
        """The trained models in DAG order: backbones and classifiers, then LSGMs, then pixel SGMs."""
        order = {"classifier": 0, "vae": 1, "lsgm": 2, "sgm": 3}
        return sorted(self.runs.values(), key=lambda r: (order[r.kind], r.dataset, r.name, r.seed))
