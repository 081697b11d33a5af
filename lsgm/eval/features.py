"""Feature extractors for FID / FD, registered with torch-fidelity.

``inception-v3-compat`` (pool3, 2048-d) at paper scale, its weights found offline or fetched by
torch-fidelity; or offline the small classifier of :mod:`lsgm.nets.classifier` registered as
``lsgm-classifier``, the metric then named ``fd_<dataset>``, never ``fid``. An :class:`Extractor` carries
what identifies it in statistics files (checksum, weights, layer).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor

from lsgm.eval.common import EvalError, load_user_file
from lsgm.nets.classifier import ARCH_VERSION, FeatureClassifier
from lsgm.io import file_sha256

CLASSIFIER_EXTRACTOR = "lsgm-classifier"
INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_ENV = "LSGM_INCEPTION_WEIGHTS"
OFFLINE_ENV = "LSGM_OFFLINE"  # "1": never try torch-fidelity's download


def load_classifier(path: str | Path) -> tuple[FeatureClassifier, dict]:
    """The trained classifier of a ``lsgm train-classifier`` run (eval mode) and its model.pt dict."""
    path = Path(path)
    blob = load_user_file(path, "classifier", "train it with lsgm train-classifier --config RUN.yaml --out DIR, or "
                                              "pass --classifier DIR/model.pt")
    if not isinstance(blob, dict) or "classifier" not in blob.get("state", {}) or "arch" not in blob:
        raise EvalError(f"{path} is not a classifier model.pt (no state['classifier']); pass the classifier run's file")
    arch = dict(blob["arch"])
    if arch.pop("arch_version", None) != ARCH_VERSION:
        raise EvalError(f"{path} was trained with classifier architecture version {blob['arch'].get('arch_version')}, "
                        f"this code has {ARCH_VERSION}; retrain it with lsgm train-classifier")
    net = FeatureClassifier(**arch)
    net.load_state_dict(blob["state"]["classifier"])
    return net.eval(), blob


def state_checksum(module: torch.nn.Module) -> str:
    """sha256 over a module's state (sorted names, shapes, float64 values): identifies an extractor."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().to(torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor around :class:`FeatureClassifier`.

    Built by torch-fidelity as ``cls(name, features_list, **kwargs)``; the classifier's ``model.pt`` is
    passed as ``feature_extractor_weights_path``. Input: uint8 ``[B, 3, H, W]`` (grayscale repeated; the
    channels are averaged back for a 1-channel classifier) or ``[B, C, H, W]`` with the classifier's C.
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise EvalError("the lsgm-classifier feature extractor needs feature_extractor_weights_path=DIR/model.pt")
        self.net, blob = load_classifier(feature_extractor_weights_path)
        self.feature_dim = self.net.feature_dim
        self.dataset = blob["config"]["data"]["name"]
        self.checksum = state_checksum(self.net)
        self.requires_grad_(False)

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "features"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4):
            raise ValueError("lsgm-classifier expects uint8 images [B, C, H, W]")
        x = x.float() / 255.0
        if x.shape[1] != self.net.in_channels:
            if self.net.in_channels != 1:
                raise ValueError(f"classifier expects {self.net.in_channels} channels, got {x.shape[1]}")
            x = x.mean(dim=1, keepdim=True)  # repeated grayscale -> 1 channel (exact)
        feats = self.net.features(x)  # (B, feature_dim)
        out = {"features": feats, "logits": self.net.head(feats)}
        return tuple(out[name] for name in self.features_list)


def register_classifier_extractor() -> str:
    """Register :class:`ClassifierFeatureExtractor` with torch-fidelity (idempotent); returns its name."""
    if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierFeatureExtractor)
    return CLASSIFIER_EXTRACTOR


def inception_weights_path(explicit: str | None = None) -> Path | None:
    """Where the Inception weights are: ``explicit`` > $LSGM_INCEPTION_WEIGHTS > torch hub cache; ``None``
    if none of these exists (torch-fidelity would then download them)."""
    candidates = [explicit, os.environ.get(INCEPTION_ENV)]
    for cand in candidates:
        if cand:
            path = Path(cand).expanduser()
            if not path.is_file():
                raise EvalError(missing_inception_message(path))
            return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return cached if cached.is_file() else None


def missing_inception_message(path: Path | None = None) -> str:
    where = path or Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return (f"Inception-v3 weights not found at {where}: download {INCEPTION_URL} on a machine with internet and "
            f"put {INCEPTION_FILE} there (or pass --inception-weights PATH / set {INCEPTION_ENV}), or use the offline "
            f"classifier features (--features classifier)")


@dataclass
class Extractor:
    """A torch-fidelity feature extractor plus what identifies it in statistics files."""

    module: FeatureExtractorBase
    name: str  # torch-fidelity registry name
    layer: str
    features: str  # "inception" | "classifier"
    checksum: str
    weights: str
    dim: int
    metric_name: str  # "fid" (Inception) | "fd_<dataset>"

    def describe(self) -> dict:
        return {"name": self.name, "features": self.features, "layer": self.layer, "checksum": self.checksum,
                "weights": self.weights, "dim": self.dim, "metric_name": self.metric_name}

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> features [B, dim] (float64, CPU)."""
        out = self.module.convert_features_tuple_to_dict(self.module(images_uint8))
        return out[self.layer].detach().to("cpu", torch.float64)


def make_extractor(features: str, classifier: str | Path | None = None, inception_weights: str | None = None,
                   device: torch.device | str = "cpu") -> Extractor:
    """Build the ``inception`` (torch-fidelity's Inception-v3, pool3) or ``classifier`` feature extractor."""
    cuda = torch.device(device).type == "cuda"
    if features == "classifier":
        if classifier is None:
            raise EvalError("--features classifier needs --classifier DIR/model.pt (lsgm train-classifier)")
        name = register_classifier_extractor()
        module = create_feature_extractor(name, ["features"], cuda=cuda, verbose=False,
                                          feature_extractor_weights_path=str(classifier))
        return Extractor(module, name, "features", "classifier", module.checksum, str(classifier),
                         module.feature_dim, f"fd_{module.dataset}")
    if features != "inception":
        raise EvalError(f"--features must be 'inception' or 'classifier', got {features!r}")
    path = inception_weights_path(inception_weights)
    if path is None and os.environ.get(OFFLINE_ENV) == "1":
        raise EvalError(missing_inception_message())
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch.hub's "Downloading ..." line
            module = create_feature_extractor(INCEPTION_EXTRACTOR, ["2048"], cuda=cuda, verbose=False,
                                              feature_extractor_weights_path=None if path is None else str(path))
    except (OSError, RuntimeError) as err:  # URLError is an OSError: offline and not cached
        if path is None:
            raise EvalError(missing_inception_message()) from err
        raise EvalError(f"Inception-v3 weights {path} are unreadable ({type(err).__name__}); re-download "
                        f"{INCEPTION_URL}") from err
    path = path or Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return Extractor(module, INCEPTION_EXTRACTOR, "2048", "inception", file_sha256(path), str(path), 2048, "fid")
