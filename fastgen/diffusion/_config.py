"""The small part of diffusers' ConfigMixin that scheduler users touch: `config` (a read-only
dict with attribute access), `from_config`, `save_config` / `from_pretrained` of a
scheduler_config.json. No dependency on diffusers; its configs load here and ours load there."""
import dataclasses
import inspect
import json
import os

import numpy as np
import torch


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


class ConfigMixin:
    config_name = "scheduler_config.json"

    def _register_config(self, args):
        """Call first thing in __init__ with locals(): records every constructor argument."""
        params = inspect.signature(type(self).__init__).parameters
        values = {name: args[name] for name in params if name != "self"}
        object.__setattr__(self, "_config", FrozenConfig(_class_name=type(self).__name__, **values))

    @property
    def config(self) -> FrozenConfig:
        return self._config

    @classmethod
    def from_config(cls, config=None, **kwargs):
        """Build from a config mapping (ours, diffusers' FrozenDict, or a plain dict, e.g. another
        scheduler's config): its keys this class takes are used, the rest ignored; `kwargs`
        override. Unknown `kwargs` raise TypeError."""
        if config is not None and not hasattr(config, "keys"):
            raise TypeError(f"from_config: config must be a mapping, got {type(config).__name__}")
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"{cls.__name__}.from_config: unknown arguments {unknown}; known: {params}")
        merged = {k: config[k] for k in (config or {}).keys() if k in params}
        merged.update(kwargs)
        return cls(**merged)

    def save_config(self, save_directory):
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.config_name)
        with open(path, "w") as f:
            json.dump({k: _jsonable(v) for k, v in self.config.items()}, f, indent=2, sort_keys=True)
        return path

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, **kwargs):
        """Load a local folder's scheduler_config.json (e.g. a saved diffusers pipeline's
        `scheduler/` folder). Downloads are not supported: pass a local path."""
        folder = pretrained_model_name_or_path
        if subfolder:
            folder = os.path.join(folder, subfolder)
        path = os.path.join(folder, cls.config_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{cls.__name__}.from_pretrained: no {cls.config_name} in {folder!r} "
                                    "(fastgen reads local folders only)")
        with open(path) as f:
            return cls.from_config(json.load(f), **kwargs)


@dataclasses.dataclass
class BaseOutput:
    """Output dataclass that also indexes like diffusers' outputs: out[0], out["prev_sample"],
    out.to_tuple() (fields that are None are left out, as diffusers does)."""

    def to_tuple(self):
        return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v is not None)

    def keys(self):
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

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
