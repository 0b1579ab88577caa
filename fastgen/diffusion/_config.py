"""Config plumbing for fastgen's schedulers.

When diffusers is importable, the schedulers are genuine diffusers schedulers: they subclass
diffusers' `SchedulerMixin` and `ConfigMixin`, record their constructor arguments with diffusers'
`register_to_config`, and return diffusers' output classes. So `save_pretrained` /
`from_pretrained` (with `subfolder`), `from_config`, `compatibles`, a pipeline's
`save_pretrained` and its reload all behave exactly as with diffusers' own schedulers.

Without diffusers, the small part of that API scheduler users touch is provided here: `config`
(a read-only dict with attribute access), `from_config`, `save_config` / `save_pretrained`,
`from_pretrained` of a local scheduler_config.json, `compatibles`, and dict-like outputs.
Configs written by either load in the other.
"""
import collections
import dataclasses
import functools
import inspect
import json
import os

import numpy as np
import torch

try:
    from diffusers.configuration_utils import ConfigMixin as _DiffusersConfigMixin
    from diffusers.configuration_utils import register_to_config as _diffusers_register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
    from diffusers.utils import BaseOutput as _DiffusersBaseOutput
except ImportError as e:  # diffusers is optional: the schedulers then work on their own
    HAVE_DIFFUSERS = False
    DIFFUSERS_IMPORT_ERROR = f"{type(e).__name__}: {e}"
else:
    HAVE_DIFFUSERS = True
    DIFFUSERS_IMPORT_ERROR = None

# the names diffusers' DDPM/DDIM list as compatible (its KarrasDiffusionSchedulers enum), so
# from_config accepts their configs without warnings either way
KARRAS_COMPATIBLES = [
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler", "EDMEulerScheduler",
]
if HAVE_DIFFUSERS:
    KARRAS_COMPATIBLES = [e.name for e in KarrasDiffusionSchedulers]


class FrozenConfig(dict):
    """A read-only dict whose keys are also attributes (like diffusers' FrozenDict)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no attribute {name!r}") from None

    def _read_only(self, *args, **kwargs):
        raise TypeError("scheduler config is read-only; build a new scheduler with from_config(config, key=value)")

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = _read_only
    update = pop = popitem = setdefault = clear = _read_only


def _jsonable(value):
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    return value


def _fallback_register_to_config(init):
    """Decorator for a scheduler's __init__: records every constructor argument (defaults
    included) as the read-only `config`, as diffusers' register_to_config does."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = {k: v for k, v in bound.arguments.items() if k != "self"}
        object.__setattr__(self, "_config", FrozenConfig(_class_name=type(self).__name__, **values))
        init(self, *args, **kwargs)

    return wrapped


class _FallbackSchedulerBase:
    """The scheduler API surface of diffusers' SchedulerMixin + ConfigMixin, without diffusers."""

    config_name = "scheduler_config.json"
    _compatibles = []
    _deprecated_kwargs = []
    _classes = {}  # every scheduler class defined on this base, by name (for `compatibles`)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _FallbackSchedulerBase._classes[cls.__name__] = cls

    @property
    def config(self) -> FrozenConfig:
        return self._config

    @classmethod
    def _init_keys(cls):
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    @classmethod
    def from_config(cls, config=None, **kwargs):
        """Build from a config mapping (ours, diffusers' FrozenDict, or a plain dict, e.g. another
        scheduler's config): its keys this class takes are used, the rest ignored; `kwargs`
        override. Unknown `kwargs` raise TypeError."""
        if config is not None and not hasattr(config, "keys"):
            raise TypeError(f"from_config: config must be a mapping, got {type(config).__name__}")
        params = cls._init_keys()
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"{cls.__name__}.from_config: unknown arguments {unknown}; known: {params}")
        merged = {k: config[k] for k in (config or {}).keys() if k in params}
        merged.update(kwargs)
        return cls(**merged)

    def save_config(self, save_directory, **kwargs):
        if os.path.isfile(save_directory):
            raise AssertionError(f"save_directory ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.config_name)
        with open(path, "w") as f:
            json.dump({k: _jsonable(v) for k, v in self.config.items()}, f, indent=2, sort_keys=True)
        return path

    def save_pretrained(self, save_directory, **kwargs):
        """Write scheduler_config.json into `save_directory` (as diffusers does)."""
        return self.save_config(save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder=None, **kwargs):
        """Load a local folder's scheduler_config.json (e.g. a saved diffusers pipeline's
        `scheduler/` folder). Without diffusers installed, downloads are not supported."""
        folder = os.fspath(pretrained_model_name_or_path)
        if subfolder:
            folder = os.path.join(folder, subfolder)
        path = os.path.join(folder, cls.config_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{cls.__name__}.from_pretrained: no {cls.config_name} in {folder!r} "
                                    "(without diffusers installed, fastgen reads local folders only)")
        with open(path) as f:
            return cls.from_config(json.load(f), **kwargs)

    @property
    def compatibles(self):
        """fastgen's scheduler classes that can be built from this scheduler's config."""
        return self._get_compatibles()

    @classmethod
    def _get_compatibles(cls):
        names = set([cls.__name__] + list(cls._compatibles))
        return [cls._classes[n] for n in sorted(names) if n in cls._classes]


@dataclasses.dataclass
class _FallbackBaseOutput:
    """Output dataclass that also indexes like diffusers' outputs: out[0], out["prev_sample"],
    out.to_tuple(), keys() / values() / items() (fields that are None are left out, as
    diffusers does)."""

    def to_tuple(self):
        return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v is not None)

    def keys(self):
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self):
        return [getattr(self, k) for k in self.keys()]

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())


if HAVE_DIFFUSERS:
    class SchedulerBase(SchedulerMixin, _DiffusersConfigMixin):
        """diffusers' SchedulerMixin + ConfigMixin: fastgen's schedulers are diffusers schedulers."""

        config_name = "scheduler_config.json"

    register_to_config = _diffusers_register_to_config
    BaseOutput = _DiffusersBaseOutput
else:
    SchedulerBase = _FallbackSchedulerBase
    register_to_config = _fallback_register_to_config
    BaseOutput = _FallbackBaseOutput


def make_output(cls, **values):
    """`cls(**values)` for a step's output, without diffusers' per-instance __post_init__ (field
    reflection and a Python __setattr__ / __setitem__ per field: ~7 us of a ~50 us DDIM step on
    this CPU). The object is the same: an OrderedDict holding the fields that are not None, in
    field order, with every field also an attribute."""
    if not HAVE_DIFFUSERS or not issubclass(cls, _DiffusersBaseOutput):
        return cls(**values)
    out = cls.__new__(cls)
    collections.OrderedDict.__init__(out)
    for name in _field_names(cls):
        value = values.get(name)
        object.__setattr__(out, name, value)
        if value is not None:
            collections.OrderedDict.__setitem__(out, name, value)
    return out


@functools.lru_cache(maxsize=None)
def _field_names(cls):
    return tuple(f.name for f in dataclasses.fields(cls))
