"""The ``released`` scale (:class:`ReleasedPlan`): the NVlabs/LSGM released checkpoints as the DAG's models.

Nothing is trained. Each released LSGM (a stage-2 ``train_vada.py`` checkpoint) and the stage-1 NVAE it started from
(``train_vae.py``) are imported (``lsgm import-official``: weights only, the score's EMA as ``evaluate_vada.py`` takes
it, the source's sha256 recorded) and evaluated exactly as the paper scale evaluates the same recipe: the official
evaluation command's settings (:func:`lsgm.recipes.eval_settings`, through the paper plan's runs), FID on 50,000
samples against the official reference statistics, Figure 4's tolerance sweep on CelebA-HQ-256. The tables show
them as "released checkpoint" rows beside the paper's.

The folder (``released_root``) is laid out per ``scales.released.release``: one directory per LSGM recipe with the
stage-2 checkpoint under ``lsgm/`` (the file name of the recipe's official evaluation command: ``checkpoint.pt`` or
``checkpoint_fid.pt``) and its stage-1 NVAE under ``vae/checkpoint.pt`` (docs/official_checkpoints.md).
:func:`check_release` refuses a missing, unreadable or truncated file in one line before any job; :func:`write_manifest`
records every file's size and sha256 (and checks its zip CRCs) as the first job.

Pure Python (no torch, no Snakemake).
"""

from __future__ import annotations

import copy
import os
import posixpath
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from lsgm import recipes
from lsgm.plan import layout
from lsgm.plan.common import CONTROL_EVALS, EVALUATIONS, RELEASED, PlanError, check_eval_settings, deep_merge
from lsgm.plan.common import EVAL_SIZE_KEYS
from lsgm.plan.plan import Plan
from lsgm.plan.run import Run

DOCS = "docs/official_checkpoints.md"
STAGE_FILE = {"stage1": "train_vae.py", "stage2": "train_vada.py"}


@dataclass(frozen=True)
class ReleaseFile:
    """One file the release must hold: where (relative to ``released_root``), what it is and which run it feeds."""

    relpath: str
    stage: str  # stage1 | stage2
    recipe: str  # the official recipe (lsgm/recipes/official.yaml)
    dataset: str
    lsgm: str  # our LSGM recipe name whose directory holds it

    @property
    def role(self) -> str:
        what = "LSGM (stage-2)" if self.stage == "stage2" else "stage-1 NVAE"
        return f"{what} of recipe {self.recipe} ({STAGE_FILE[self.stage]} checkpoint, {self.dataset})"


def gpu_hours(job: dict) -> float | None:
    """The hook for a job's GPU-hour estimate: None until ``lsgm plan`` has one (FLOP-based estimates are added on
    another branch; they fill ``job["gpu_hours"]`` here, for the released scale's evaluation jobs as for any scale's)."""
    return None


def _eval_checkpoint_name(recipe: str) -> str:
    """The checkpoint file the recipe's official evaluation command reads (``--checkpoint .../NAME``), which decides
    how ``evaluate_vada.py`` takes its EMA: ``checkpoint.pt`` swaps it in from the optimizer, the others hold it."""
    names = {posixpath.basename(recipes.parse_command(c["command"])[1].get("checkpoint", "checkpoint.pt"))
             for c in recipes.eval_commands(recipe)}
    if len(names) != 1:
        raise PlanError(f"official recipe {recipe}: its evaluation commands read {sorted(names)}; give "
                        f"scales.{RELEASED}.release.<recipe>.lsgm")
    return names.pop()


class ReleasedPlan(Plan):
    """The released scale: the paper plan's runs of the released recipes, imported instead of trained."""

    def __init__(self, config: dict, paper: Plan | None = None):  # noqa: D107 (no Resolution.__init__: nothing trains)
        paper = paper or Plan(config, "paper")
        own = config["scales"].get(RELEASED)
        if own is None:
            raise PlanError(f"scales.{RELEASED} is missing from the config (see config.yaml)")
        self.config, self.scale, self.base, self.shrink = config, RELEASED, "paper", {}
        self.sc = {"datasets": paper.sc["datasets"], "seeds": [0], "fd": {**paper.sc["fd"], **own.get("fd", {})},
                   "resources": own["resources"], "data_root": own["data_root"],
                   "data_sizes": own.get("data_sizes", {}), "eval": own.get("eval") or {}, "defaults": {}, "runs": {},
                   "select": {"tables": list(own["tables"]), "figures": list(own["figures"])}}
        self.seeds, self.batch_seeds, self.same_as, self.cells = [0], False, {}, ()
        self.cluster = paper.cluster  # the declared GPU (cluster.yaml): its evaluation jobs ask for it too
        self.root: str | None = config.get("released_root")
        self.runs: dict[tuple, Run] = {}
        self.files: dict[tuple, list[ReleaseFile]] = {}  # run key -> [its checkpoint, (stage 2) its stage-1 file]
        self._check_overlay()
        self._build(paper, own["release"])
        self._check_references()

    # ---------------------------------------------------------------- building
    def _check_overlay(self) -> None:
        """``scales.released.eval`` changes sizes only (EVAL_SIZE_KEYS): the settings are the official commands'."""
        for metric, block in self.sc["eval"].items():
            for key in block or {}:
                if key not in EVAL_SIZE_KEYS:
                    raise PlanError(f"scales.{RELEASED}.eval.{metric}.{key}: the released scale evaluates with the "
                                    "official settings; only sizes may change here (lsgm/plan/ EVAL_SIZE_KEYS)")

    def _settings(self, run: Run) -> dict:
        settings = {m: deep_merge(run.eval_settings.get(m, {}), self.sc["eval"].get(m)) for m in EVALUATIONS}
        settings = check_eval_settings(settings, f"scales.{RELEASED} ({run.kind} {run.name})")
        for control, (command, fixed) in CONTROL_EVALS.items() if run.kind == "lsgm" else ():
            settings[control] = {**settings[command], **fixed}
        if run.kind == "lsgm" and "fid" in run.evals:  # the official FID's processes: its per-process covariances
            settings["fid"]["official_processes"] = self._eval_processes(run.official)
        return settings

    @staticmethod
    def _eval_processes(recipe: str) -> int:
        for command in recipes.eval_commands(recipe):
            script, flags = recipes.parse_command(command["command"])
            a = recipes.official_args(script, flags)
            if a["fid_ode_eval"]:
                return int(a["num_process_per_node"]) * int(a["num_proc_node"])
        return 1

    def _released(self, paper_run: Run, evals: tuple) -> Run:
        gpus = int(self.sc["resources"]["eval"].get("gpus", 0))
        run = replace(paper_run, scale=RELEASED, seed=0, nodes=1, gpus_per_node=min(1, gpus), runtime=60, backbone=None,
                      init_of=None, evals=evals, config=copy.deepcopy(paper_run.config), gpu=bool(gpus),
                      per_gpu=dict(self.sc["resources"]["import"]))
        run.eval_settings = self._settings(run)
        return run

    def _build(self, paper: Plan, release: dict) -> None:
        lsgms, figure = self.config["recipes"]["lsgm"], set(self.config["figure4"]["lsgm"])
        table_vaes = {n for t in self.tables for n in self.config["tables"][t].get("vae", [])}
        for name, entry in release.items():
            if name not in lsgms:
                raise PlanError(f"scales.{RELEASED}.release.{name}: not a recipe under recipes.lsgm ({sorted(lsgms)})")
            lsgm = next(r for r in paper.runs.values() if r.kind == "lsgm" and r.name == name and r.seed == 0)
            vae = lsgm.backbone
            folder = entry.get("dir", name)
            ckpt = entry.get("lsgm", posixpath.join(folder, "lsgm", _eval_checkpoint_name(lsgm.official)))
            stage1 = entry.get("vae", posixpath.join(folder, "vae", "checkpoint.pt"))
            two = ReleaseFile(ckpt, "stage2", lsgm.official, lsgm.dataset, name)
            one = ReleaseFile(stage1, "stage1", vae.official, vae.dataset, name)
            evals = tuple(m for m in lsgm.evals if m != "cost" or name in figure)
            run = self._released(lsgm, evals)
            self.runs[("lsgm", run.dataset, name, 0)] = run
            self.files[("lsgm", run.dataset, name, 0)] = [two, one]
            if vae.name in table_vaes:
                vrun = self._released(vae, vae.evals)
                self.runs[("vae", vrun.dataset, vae.name, 0)] = vrun
                self.files[("vae", vrun.dataset, vae.name, 0)] = [one]

    # ---------------------------------------------------------------- the files
    def release_files(self) -> list[ReleaseFile]:
        """Every file the release must hold, once each, in plan order."""
        seen: dict[str, ReleaseFile] = {}
        for files in self.files.values():
            for f in files:
                seen.setdefault(f.relpath, f)
        return list(seen.values())

    def path_of(self, f: ReleaseFile) -> str:
        return str(Path(self.root or "RELEASED_ROOT") / f.relpath)

    def import_of(self, run: Run) -> dict:
        """The import job of a released run: its checkpoint, (stage 2) the stage-1 file it is cross-checked with."""
        files = self.files[(run.kind, run.dataset, run.name, run.seed)]
        out = {"checkpoint": self.path_of(files[0]), "stage": files[0].stage, "dataset": run.dataset}
        if len(files) > 1:
            out["vae"] = self.path_of(files[1])
        return out

    def import_args(self, run: Run) -> str:
        """The flags of ``lsgm import-official`` for a released run (besides the checkpoint and --out)."""
        job = self.import_of(run)
        parts = [f"--name {RELEASED}/{run.dataset}/{run.kind}/{run.name}-s{run.seed}",
                 f"--expect {job['stage']} {job['dataset']}", f"--data-root {self.sc['data_root']}"]
        if "vae" in job:
            parts.insert(0, f"--vae-checkpoint {job['vae']}")
        sizes = self.sc["data_sizes"].get(run.dataset)
        if sizes:
            parts.append(f"--data-sizes {sizes[0]} {sizes[1]}")
        return " ".join(parts)

    def check_release(self) -> list[tuple[ReleaseFile, str, int]]:
        """Before any job: every expected file is there, readable and a whole torch zip archive (its central
        directory, at the end of the file, reads: a truncated download does not). PlanError (one line: the file,
        what it is, where it goes) for the first bad one; else ``[(file, path, size)]``."""
        fix = f"see {DOCS} for the release's layout"
        if not self.root:
            raise PlanError(f"scale {RELEASED} needs released_root: the folder of the NVlabs/LSGM release "
                            f"(snakemake --config scale={RELEASED} released_root=DIR; {fix})")
        if not Path(self.root).is_dir():
            raise PlanError(f"released_root {self.root}: not a folder; download the release there ({fix})")
        out, missing = [], []
        for f in self.release_files():
            path = Path(self.path_of(f))
            if not path.is_file():
                missing.append((f, path))
                continue
            out.append((f, str(path), _readable_archive(path, f)))
        if missing:
            (f, path), more = missing[0], f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
            raise PlanError(f"{path}: missing: the {f.role} goes there{more}; {fix}")
        return out

    def listing(self) -> str:
        """The expected files, one line each: path, size (or 'missing'), what it is."""
        lines = []
        for f in self.release_files():
            path = Path(self.path_of(f))
            size = f"{path.stat().st_size / 1e6:,.1f} MB" if self.root and path.is_file() else "missing"
            lines.append(f"  {path}  [{size}]  {f.role}")
        return "\n".join(lines)

    def write_manifest(self, out: str) -> dict:
        """Every file's size and sha256, each archive's CRCs checked (a corrupted download: one line), written
        atomically to ``out`` (the first job of the scale; the imports wait for it)."""
        from lsgm.io import atomic_write_json, file_sha256

        entries = []
        for f, path, size in self.check_release():
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise PlanError(f"{path}: corrupted ({bad} fails its CRC): download the {f.role} again ({DOCS})")
            entries.append({"file": f.relpath, "path": path, "bytes": size, "sha256": file_sha256(path),
                            "stage": f.stage, "recipe": f.recipe, "dataset": f.dataset, "lsgm": f.lsgm})
        record = {"released_root": str(Path(self.root).resolve()), "files": entries,
                  "licence": "NVIDIA Source Code License (NVlabs/LSGM): the harness reads these files, never "
                             "redistributes them"}
        atomic_write_json(Path(out), record)
        return record

    # ---------------------------------------------------------------- the DAG's questions
    @property
    def manifest_path(self) -> str:
        return layout.fill(layout.RELEASE_MANIFEST, scale=RELEASED)

    def targets(self) -> list[str]:
        return sorted({self.manifest_path, *super().targets()})

    def import_resources(self) -> dict:
        """An import job: CPU only (the checkpoint is converted on the CPU), the scale's ``resources.import``."""
        res = self.sc["resources"]["import"]
        return {"gpu": None, "cpus_per_task": res["threads"], "mem_mb": res["mem_mb"], "runtime": res.get("runtime", 60)}

    def import_jobs(self) -> list[dict]:
        """One import per released run (CPU): its model.pt from its official checkpoint."""
        res = self.import_resources()
        return [{"target": r.model_path, "kind": "import", "run": r.stem, "gpus": 0, "runtime_minutes": res["runtime"],
                 "settings": {"checkpoint": self.import_of(r)["checkpoint"]}, "gpu_hours": None}
                for r in self.training_runs()]

    def eval_jobs(self) -> list[dict]:
        """Every evaluation (no variance: no Table 6 at this scale); ``gpu_hours`` through the hook :func:`gpu_hours`."""
        jobs = [j for j in super().eval_jobs() if j["kind"] != "variance"]
        for job in jobs:
            job["gpu_hours"] = gpu_hours(job)
        return jobs


def _readable_archive(path: Path, f: ReleaseFile) -> int:
    """The size of a readable torch zip archive, or PlanError (one line) naming it and where it goes."""
    if not os.access(path, os.R_OK):
        raise PlanError(f"{path}: not readable (permissions): the {f.role} must be readable by this user")
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise PlanError(f"{path}: not a whole torch checkpoint ({size:,} bytes; {err}): a truncated or corrupted "
                        f"download? download the {f.role} again ({DOCS})") from None
    if not any(n.endswith("data.pkl") for n in names):
        raise PlanError(f"{path}: a zip archive without torch's data.pkl: not a checkpoint; the {f.role} goes there "
                        f"({DOCS})")
    return size




def make_plan(config: dict, scale: str, paper: Plan | None = None) -> Plan:
    """The plan of any scale: a :class:`ReleasedPlan` for ``released`` (from the paper plan, if given), else a
    :class:`Plan`."""
    return ReleasedPlan(config, paper) if scale == RELEASED else Plan(config, scale)
