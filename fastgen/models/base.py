"""What the training harness needs from a model, and the model registry."""
import abc
from dataclasses import asdict, dataclass

import torch
from torch import nn

MODELS = {}


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data to build itself."""
    name: str
    kind: str           # "points2d" | "image" | "binary" | "sequence"
    shape: tuple        # shape of one sample
    num_classes: int

    @classmethod
    def of(cls, dataset):
        return cls(dataset.name, dataset.kind, tuple(dataset.shape), int(dataset.num_classes))

    def to_dict(self):
        return asdict(self)


def register(name):
    def wrap(cls):
        cls.name = name
        MODELS[name] = cls
        return cls
    return wrap


def get_model(name):
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}") from None


def model_from_checkpoint(state, device="cpu"):
    """The model a checkpoint dict (fastgen.checkpoint.load_checkpoint) holds, in eval mode."""
    cls = get_model(state["model"])
    model = cls(DataSpec(**{**state["data_spec"], "shape": tuple(state["data_spec"]["shape"])}),
                **state["model_config"]).to(device)
    model.load_state_dict(state["model_state"])
    model.eval()
    return model


class GenerativeModel(nn.Module, abc.ABC):
    """Base class of the reference models.

    A subclass takes `(data: DataSpec, **config)`, lists the data kinds it supports in `kinds`,
    and implements `forward(x, y) -> (loss, logs)` (one training step's loss), `sample(n)` and
    `evaluate(dataset)`. `config` holds the keyword arguments it was built with, so a
    checkpoint can rebuild it.
    """
    name = "?"
    kinds = ()

    def __init__(self, data: DataSpec, **config):
        super().__init__()
        if data.kind not in self.kinds:
            raise ValueError(f"model {self.name!r} does not support {data.kind} data ({data.name!r}); "
                             f"it supports {', '.join(self.kinds)}")
        self.data = data
        self.config = dict(config)

    @abc.abstractmethod
    def forward(self, x, y):
        """The training loss of one batch: (scalar loss, {name: scalar tensor} to log)."""

    @abc.abstractmethod
    def sample(self, n, generator=None):
        """n samples shaped like the data, on the model's device."""

    @abc.abstractmethod
    def evaluate(self, dataset, generator=None):
        """{metric: float} on a held-out FastgenDataset."""

    @property
    def device(self):
        return next(self.parameters()).device
