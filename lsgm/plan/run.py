"""One trained model of one scale (:class:`Run`): its paths, launch geometry, launcher and Slurm resources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lsgm.config import split_batch
from lsgm.plan import layout
from lsgm.plan.common import PlanError, short_hash


@dataclass
class Run:
    """One trained model of one scale, with its launch geometry."""

    scale: str
    kind: str
    dataset: str
    name: str
    seed: int
    config: dict
    nodes: int = 1
    gpus_per_node: int = 0
    runtime: int = 60
    evals: tuple = ()
    eval_settings: dict = field(default_factory=dict)
    official: str | None = None  # the official recipe it follows (recipes/official.yaml)
    epochs: int | None = None
    backbone: "Run | None" = None
    init_of: str | None = None  # the control "LSGM at initialisation": the LSGM recipe (or Table 6 SDE) it starts
    copies: str | None = None  # ... and the name of the LSGM run whose config (but its steps) it has
    layers: dict = field(default_factory=dict, repr=False)  # "config" / "eval": lsgm.plan.layers.Layers (--why)
    per_gpu: dict = field(default_factory=dict)  # scales.S.resources.train: threads and mem_mb per GPU
    gpu: bool = True  # one GPU per process; False: CPU processes (the miniature, gloo), no GPU resources
    gpu_model: str | None = None  # Slurm's GPU type (cluster.gpu_model): --gpus=MODEL:N, --gres=gpu:MODEL:N

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def batch_split(self) -> tuple[int, int]:
        """(per-process batch, gradient accumulation) on this run's processes."""
        t = self.config["train"]
        return split_batch(t["global_batch"], max(1, self.gpus), t["max_batch_per_process"])

    @property
    def fields(self) -> dict:
        """The run's fields of the path patterns (:mod:`lsgm.plan.layout`)."""
        return {"scale": self.scale, "dataset": self.dataset, "kind": self.kind, "run": self.name, "seed": self.seed}

    @property
    def stem(self) -> str:
        return layout.fill(layout.STEM, **self.fields)

    @property
    def target(self) -> str:
        return self.model_path

    @property
    def config_path(self) -> str:
        return layout.fill(layout.CONFIG, **self.fields)

    @property
    def model_path(self) -> str:
        return layout.fill(layout.MODEL, **self.fields)

    def metrics_path(self, metric: str) -> str:
        return layout.fill(layout.METRICS, metric=metric, **self.fields)

    @property
    def samples_path(self) -> str:
        """The grid of samples (``lsgm evaluate samples``; its sidecar JSON beside it)."""
        return layout.fill(layout.SAMPLES, **self.fields)

    @property
    def fingerprint(self) -> str:
        parent = self.backbone.fingerprint if self.backbone else ""
        return short_hash([self.config, parent])

    @property
    def ckpt_dir(self) -> str:
        # the config hash in the name: a changed config never resumes a stale checkpoint
        return layout.fill(layout.CHECKPOINTS, fingerprint=self.fingerprint, **self.fields)

    def launcher(self) -> str:
        """The command prefix that starts ``lsgm`` on this run's processes: ``lsgm launch`` with the geometry
        (:mod:`lsgm.launch`: one process, or torchrun on one node, each as a Slurm step of its own in an allocation so
        that preemption signals reach it; on several nodes one torchrun per node started by srun, meeting at a c10d
        rendezvous on the allocation's first node)."""
        gpu = " --gpu" if self.gpu and self.gpus else ""
        return f"lsgm launch --nodes {self.nodes} --nproc-per-node {max(1, self.gpus_per_node)}{gpu} --"

    def resources(self) -> dict:
        """Slurm executor-plugin resources of the training job from the scale's per-GPU ``threads`` / ``mem_mb``.
        One node: ``gpu`` (-> --gpus=N), the node's CPUs and memory. Several nodes: ``nodes``, one task per GPU
        (``tasks_per_node``, ``cpus_per_task`` per GPU), ``gres=gpu:N`` per node and ``mpi`` so the job runs the
        launcher's own srun (one torchrun per node); ``mem_mb`` is per node. A declared GPU type (``cluster.gpu_model``)
        goes into both: ``gpu_model`` (-> --gpus=MODEL:N) and ``gres=gpu:MODEL:N``."""
        per_gpu, g = self.per_gpu, max(1, self.gpus_per_node)
        res = {"mem_mb": per_gpu["mem_mb"] * g, "runtime": self.runtime}
        if self.nodes > 1:
            if self.gpu and self.gpus_per_node < 2:
                raise PlanError(f"{self.kind} run {self.name}: {self.nodes} nodes x {self.gpus_per_node} GPU is not a "
                                "supported layout; raise max_gpus_per_node or lower max_nodes")
            res.update(nodes=self.nodes, cpus_per_task=per_gpu["threads"], mpi="srun")
            if self.gpu:  # tasks_per_node (> 1): the plugin would turn `tasks` into --ntasks-per-gpu for a GPU job
                model = f"{self.gpu_model}:" if self.gpu_model else ""
                res.update(tasks_per_node=self.gpus_per_node, gres=f"gpu:{model}{self.gpus_per_node}")
            else:  # the plugin refuses tasks_per_node = 1 for an srun (mpi) job; tasks = one per process
                res["tasks"] = self.nodes * self.gpus_per_node
        else:
            res.update(cpus_per_task=per_gpu["threads"] * g, gpu=(self.gpus or None) if self.gpu else None)
            if res["gpu"] and self.gpu_model:
                res["gpu_model"] = self.gpu_model
        return res

    def threads(self) -> int:
        """CPU threads of the job on one node (Snakemake's local scheduling unit)."""
        return self.per_gpu["threads"] * max(1, self.gpus_per_node)

    def job(self, with_config: bool = False) -> dict:
        """The job as ``lsgm plan --json`` prints it (names kept stable: external checks read them)."""
        per_gpu, accum = self.batch_split
        t = self.config["train"]
        out = {"target": self.target, "kind": self.kind, "recipe": self.official or self.name,
               "dataset": self.dataset, "nodes": self.nodes if self.gpus else 1,
               "gpus": self.gpus if self.gpu else 0, "processes": max(1, self.gpus),
               "per_gpu_batch": per_gpu, "grad_accum": accum, "global_batch": t["global_batch"],
               "epochs": self.epochs, "steps": t["steps"], "runtime_minutes": self.runtime,
               "seed": self.seed, "deviations": list(self.config.get("deviations", []))}
        if with_config:
            out["config"] = self.config
        return out
