"""Saving and loading quantized networks as ``.safetensors``.

The file holds every tensor of the network (weights, biases, quantizer scales and zero
points, clamp bounds) and, as metadata, everything needed to rebuild it without the code
that defined the original model: the graph (nodes and their arguments), each module's type
and constructor arguments, the ``DFQConfig``, the report, the model's name and a format
version. :func:`load` returns a ``torch.fx.GraphModule`` that reproduces the saved one's
outputs bit for bit, and that ``dfq_gpu.to_int8`` can turn into an integer network.

Files are written to a temporary file next to the target and renamed into place, so an
interrupted save never leaves a half-written file, and an existing file is only replaced
with ``overwrite=True``.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import json
import math
import operator
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import TensorMetadata

from ._version import __version__
from .config import DFQConfig
from .layers import layer_type
from .modules import (QUANTIZED_LAYER_TYPES, QAdaptiveAvgPool2d, QAdd, QAvgPool, QAvgPool2d, QChannelAffine, QLookup,
                      QMul, QUpsampleBilinear)
from .nn import ChannelClamp, FakeQuant
from .report import LayerRecord, RegionRecord, Report

__all__ = ["save", "load", "FORMAT_VERSION", "SaveError", "LoadError"]

FORMAT_VERSION = "1"
_MAGIC = "dfq_gpu.quantized"

# Module types a file may hold (by class name); anything else cannot be saved.
_NN_TYPES: dict[str, type[nn.Module]] = {
    t.__name__: t for t in (
        nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU,
        nn.PReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.ELU, nn.Identity,
        nn.Flatten, nn.Dropout, nn.ZeroPad2d, nn.ConstantPad2d, nn.MaxPool2d, nn.AvgPool2d,
        nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Softmax,
    )
}
_OWN_TYPES: dict[str, type[nn.Module]] = {t.__name__: t for t in (*QUANTIZED_LAYER_TYPES, ChannelClamp, FakeQuant,
                                                                    QAdd, QAvgPool, QAvgPool2d, QAdaptiveAvgPool2d,
                                                                    QLookup, QChannelAffine, QMul, QUpsampleBilinear)}
_FUNCTION_MODULES = ("torch", "operator", "_operator", "math")


class SaveError(ValueError):
    """The network holds something the file format cannot describe (the message names it)."""


class LoadError(ValueError):
    """The file is not a dfq_gpu quantized network, is damaged, or is of another format version."""


# ----------------------------------------------------------------------------- values
def _encode(v: Any) -> Any:
    if isinstance(v, fx.Node):
        return {"node": v.name}
    if isinstance(v, tuple):
        return {"tuple": [_encode(x) for x in v]}
    if isinstance(v, list):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        return {"dict": {str(k): _encode(x) for k, x in v.items()}}
    if isinstance(v, slice):
        return {"slice": [_encode(v.start), _encode(v.stop), _encode(v.step)]}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).replace("torch.", "")}
    if isinstance(v, float) and not math.isfinite(v):
        return {"float": str(v)}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if v is Ellipsis:
        return {"ellipsis": True}
    raise SaveError(f"cannot describe the argument {v!r} of type {type(v).__name__} in a file")


def _decode(v: Any, nodes: dict[str, fx.Node]) -> Any:
    if isinstance(v, list):
        return [_decode(x, nodes) for x in v]
    if isinstance(v, dict):
        if "node" in v:
            return nodes[v["node"]]
        if "tuple" in v:
            return tuple(_decode(x, nodes) for x in v["tuple"])
        if "dict" in v:
            return {k: _decode(x, nodes) for k, x in v["dict"].items()}
        if "slice" in v:
            return slice(*(_decode(x, nodes) for x in v["slice"]))
        if "dtype" in v:
            return getattr(torch, v["dtype"])
        if "float" in v:
            return float(v["float"])
        if "ellipsis" in v:
            return Ellipsis
    return v


def _function_name(fn: Any) -> str:
    """``namespace.name`` of a torch / operator / math function, found where it is public."""
    if fn is getattr:
        return "builtins.getattr"
    name = getattr(fn, "__name__", None)
    import torch.nn.functional as F

    for ns_name, ns in (("torch", torch), ("torch.nn.functional", F), ("operator", operator), ("math", math),
                        ("torch._C._nn", torch._C._nn)):
        if name and getattr(ns, name, None) is fn:
            return f"{ns_name}.{name}"
    raise SaveError(f"cannot save a call of {fn!r}: only torch, operator and math functions are supported")


def _resolve_function(path: str) -> Any:
    if path == "builtins.getattr":
        return builtins.getattr
    mod_name, _, name = path.rpartition(".")
    if mod_name.split(".")[0] not in _FUNCTION_MODULES:
        raise LoadError(f"the file calls {path}, which is not a torch/operator/math function")
    if mod_name == "operator":
        return getattr(operator, name)
    obj: Any = importlib.import_module(mod_name)
    return getattr(obj, name)


# ----------------------------------------------------------------------------- modules
def _module_spec(name: str, m: nn.Module) -> dict[str, Any]:
    tname = type(m).__name__
    if tname in _OWN_TYPES and type(m) is _OWN_TYPES[tname]:
        kind = "own"
    elif tname in _NN_TYPES and type(m) is _NN_TYPES[tname]:
        kind = "nn"
    else:
        raise SaveError(f"module '{name}' of type {type(m).__module__}.{tname} cannot be saved; supported types "
                        f"are {', '.join(sorted(_NN_TYPES) + sorted(_OWN_TYPES))}")
    init: dict[str, Any] = {}
    cls = type(m)
    if cls in QUANTIZED_LAYER_TYPES:  # described by the float layer's constructor (dfq_gpu.layers)
        cls = layer_type(m).module_class
    if tname == "ChannelClamp":
        init = {"channels": m.channels, "passthrough": m.passthrough}
    elif tname == "FakeQuant":
        init = {"scale": float(m.scale), "zero_point": int(m.zero_point), "bits": m.bits, "symmetric": m.symmetric,
                "source": m.source, "enabled": m.enabled, "passthrough": m.passthrough}
    elif tname == "QAdd":
        init = {"a_scale": m.a_scale, "b_scale": m.b_scale, "ia": m.ia, "ib": m.ib, "multiplier": m.multiplier,
                "y_scale": m.y_scale, "zero_point": m.zero_point, "a_range": list(m.a_range),
                "b_range": list(m.b_range), "channels": m.lo.numel()}
    elif tname == "QAvgPool2d":
        init = {"kernel": list(m.kernel), "stride": list(m.stride), "padding": list(m.padding),
                "ceil_mode": m.ceil_mode, "count_include_pad": m.count_include_pad, "x_scale": m.x_scale,
                "x_range": list(m.x_range), "y_scale": m.y_scale, "zero_point": m.zero_point, "qmin": m.qmin,
                "qmax": m.qmax}
    elif tname == "QAdaptiveAvgPool2d":
        init = {"output_size": list(m.output_size), "x_scale": m.x_scale, "x_range": list(m.x_range),
                "y_scale": m.y_scale, "zero_point": m.zero_point, "qmin": m.qmin, "qmax": m.qmax}
    elif tname == "QMul":
        init = {"a_scale": m.a_scale, "a_range": list(m.a_range), "b_scale": m.b_scale, "b_range": list(m.b_range),
                "multiplier": m.multiplier, "y_scale": m.y_scale, "zero_point": m.zero_point, "qmin": m.qmin,
                "qmax": m.qmax}
    elif tname == "QLookup":
        init = {"fn": m.fn, "fn_kwargs": _encode(dict(m.fn_kwargs)), "x": list(m.x), "y": list(m.y), "integer": m.integer}
    elif tname == "QUpsampleBilinear":
        init = {"size": None if m.size is None else list(m.size),
                "scale_factor": None if m.scale_factor is None else list(m.scale_factor),
                "align_corners": m.align_corners, "x_scale": m.x_scale, "x_range": list(m.x_range),
                "y_scale": m.y_scale, "zero_point": m.zero_point, "qmin": m.qmin, "qmax": m.qmax}
    elif tname == "QChannelAffine":
        init = {"channels": m.channels, "x": list(m.x), "y": list(m.y), "integer": m.integer}
    elif tname == "QAvgPool":
        init = {"x_scale": m.x_scale, "x_range": list(m.x_range), "keepdim": m.keepdim, "y_scale": m.y_scale,
                "zero_point": m.zero_point, "qmin": m.qmin, "qmax": m.qmax}
    else:
        for p in list(inspect.signature(cls.__init__).parameters)[1:]:
            if p in ("device", "dtype", "args", "kwargs"):
                continue
            if p == "bias":
                init["bias"] = getattr(m, "bias", None) is not None
            elif hasattr(m, p):
                val = getattr(m, p)
                if isinstance(val, (torch.Tensor, nn.Module)):
                    continue
                init[p] = _encode(val)
    extra: dict[str, Any] = {}
    if type(m) in QUANTIZED_LAYER_TYPES:
        extra = {"w_bits": m.w_bits, "w_symmetric": m.w_symmetric, "integer_path": m.integer_path_spec()}
    return {"type": tname, "kind": kind, "init": init, "extra": extra, "training": m.training}


def _build_module(name: str, spec: dict[str, Any]) -> nn.Module:
    tname = spec["type"]
    init = {k: _decode(v, {}) for k, v in spec["init"].items()}
    if tname == "ChannelClamp":
        c = init["channels"]
        clamp = ChannelClamp(torch.zeros(c), torch.zeros(c))
        clamp.passthrough = bool(init.get("passthrough", False))
        return clamp
    if tname == "FakeQuant":
        fq = FakeQuant(init["scale"], init["zero_point"], init["bits"], init["symmetric"], init.get("source", ""))
        fq.enabled = bool(init.get("enabled", True))
        fq.passthrough = bool(init.get("passthrough", False))
        return fq
    if _OWN_TYPES.get(tname) in QUANTIZED_LAYER_TYPES:
        q = _OWN_TYPES[tname](**init)
        q._init_quant(torch.ones(1), torch.zeros(1), spec["extra"]["w_bits"], spec["extra"]["w_symmetric"])
        if spec["extra"].get("integer_path"):
            q.restore_integer_path(spec["extra"]["integer_path"])  # its buffers are loaded next
        return q
    if tname == "QAdd":
        c = init.pop("channels")
        return QAdd(**init, lo=torch.zeros(c, dtype=torch.int64), hi=torch.zeros(c, dtype=torch.int64))
    if tname == "QAvgPool":
        return QAvgPool(**init)
    if tname == "QMul":
        return QMul(**init)
    if tname == "QAvgPool2d":
        return QAvgPool2d(**init)
    if tname == "QAdaptiveAvgPool2d":
        return QAdaptiveAvgPool2d(**init)
    if tname == "QLookup":
        return QLookup(init["fn"], dict(init["fn_kwargs"]), *init["x"], *init["y"], integer=bool(init["integer"]))
    if tname == "QUpsampleBilinear":
        return QUpsampleBilinear(**init)
    if tname == "QChannelAffine":  # its scale, shift and tables are loaded next
        c = init["channels"]
        return QChannelAffine(torch.ones(c), torch.zeros(c), *init["x"], *init["y"], integer=bool(init["integer"]))
    cls = _NN_TYPES.get(tname)
    if cls is None:
        raise LoadError(f"module '{name}' has unknown type {tname}")
    return cls(**init)


# ----------------------------------------------------------------------------- report
def _report_from_dict(d: dict[str, Any]) -> Report:
    def arr(v: Any) -> Any:
        return np.asarray(v, dtype=np.float64) if isinstance(v, list) else v

    r = Report(config=d.get("config", {}), steps=list(d.get("steps", [])), cle_iterations=d.get("cle_iterations", 0),
               timings=dict(d.get("timings", {})), passes=[dict(p) for p in d.get("passes", [])])
    for name, ld in d.get("layers", {}).items():
        rec = LayerRecord(name=ld["name"], kind=ld["kind"], weight_shape=tuple(ld["weight_shape"]))
        for k, v in ld.items():
            if k in ("name", "kind", "weight_shape"):
                continue
            if k in ("range_folded", "range_equalized") and v is not None:
                v = (np.asarray(v[0], dtype=np.float64), np.asarray(v[1], dtype=np.float64))
            elif k in ("act_in", "act_out", "notes"):
                pass
            else:
                v = arr(v)
            setattr(rec, k, v)
        r.layers[name] = rec
    for rd in d.get("regions", []):
        rd = dict(rd)
        rd["srcs"], rd["sinks"] = tuple(rd["srcs"]), tuple(rd["sinks"])
        r.regions.append(RegionRecord(**rd))
    r.skipped = [(s["what"], s["why"]) for s in d.get("skipped", [])]
    r.sensitivity, r.fallback = d.get("sensitivity"), d.get("fallback")
    return r


# ----------------------------------------------------------------------------- save / load
def save(q: nn.Module, path: str | os.PathLike, *, model_name: str | None = None, overwrite: bool = False,
         extra_metadata: dict[str, str] | None = None) -> Path:
    """Write a quantized network (from :func:`dfq_gpu.quantize`) to ``path`` (``.safetensors``).

    Args:
        q: the simulated quantized network (a ``torch.fx.GraphModule``).
        path: the file to write; an existing file is replaced only with ``overwrite=True``.
        model_name: the zoo name or spec of the original model, kept so that tools can rebuild
            the FP32 reference (``dfq-gpu eval``).
        extra_metadata: more string metadata to store.

    Raises:
        SaveError: the network holds a module or call the format cannot describe.
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    from safetensors.torch import save_file

    if not isinstance(q, fx.GraphModule):
        raise SaveError(f"save expects the GraphModule returned by dfq_gpu.quantize/prepare, got {type(q).__name__}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
    if path.is_dir():
        raise SaveError(f"{path} is a folder")
    nodes = []
    used_modules: dict[str, dict[str, Any]] = {}
    for n in q.graph.nodes:
        rec: dict[str, Any] = {"op": n.op, "name": n.name, "args": _encode(tuple(n.args)),
                               "kwargs": _encode(dict(n.kwargs))}
        tm = n.meta.get("tensor_meta")
        if tm is not None and hasattr(tm, "shape"):
            rec["meta"] = {"shape": list(tm.shape), "dtype": str(tm.dtype).replace("torch.", ""),
                           "stride": list(tm.stride)}
        if n.op == "call_function":
            rec["target"] = _function_name(n.target)
        elif n.op == "call_module":
            rec["target"] = str(n.target)
            used_modules[str(n.target)] = _module_spec(str(n.target), q.get_submodule(str(n.target)))
        elif n.op == "get_attr":
            rec["target"] = str(n.target)
        else:
            rec["target"] = str(n.target)
        nodes.append(rec)
    tensors: dict[str, torch.Tensor] = {}
    for mname in used_modules:
        m = q.get_submodule(mname)
        for k, v in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if v is not None:
                tensors[f"{mname}.{k}"] = v.detach().cpu().contiguous()
    for n in q.graph.nodes:
        if n.op == "get_attr":
            obj: Any = q
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            if not isinstance(obj, torch.Tensor):
                raise SaveError(f"get_attr {n.target} is not a tensor")
            tensors[str(n.target)] = obj.detach().cpu().contiguous()
    cfg = getattr(q, "dfq_config", None)
    report = getattr(q, "report", None)
    meta = {
        "format": _MAGIC,
        "format_version": FORMAT_VERSION,
        "dfq_gpu_version": __version__,
        "graph": json.dumps(nodes),
        "modules": json.dumps(used_modules),
        "config": json.dumps(cfg.to_dict() if isinstance(cfg, DFQConfig) else None),
        "report": json.dumps(report.to_dict() if isinstance(report, Report) else None),
        "model": model_name or getattr(q, "dfq_model_name", "") or "",
    }
    meta.update(extra_metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a saved network (raises :class:`LoadError` for other files)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise LoadError(f"{p} does not exist" if not p.exists() else f"{p} is not a file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoadError(f"{p} is not a safetensors file, or it is damaged ({exc})") from exc
    if meta.get("format") != _MAGIC:
        raise LoadError(f"{p} is a safetensors file but not a dfq_gpu quantized network")
    if meta.get("format_version") != FORMAT_VERSION:
        raise LoadError(f"{p} has format version {meta.get('format_version')!r} (written by dfq_gpu "
                        f"{meta.get('dfq_gpu_version', '?')}); this dfq_gpu {__version__} reads version "
                        f"{FORMAT_VERSION}")
    return meta


def load(path: str | os.PathLike) -> fx.GraphModule:
    """Rebuild a network written by :func:`save` (with its ``report`` and ``dfq_config``)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        nodes = json.loads(meta["graph"])
        specs = json.loads(meta["modules"])
        tensors = load_file(str(path))
    except (KeyError, json.JSONDecodeError) as exc:
        raise LoadError(f"{path}: damaged metadata ({exc})") from exc
    root = nn.Module()
    gm_modules: dict[str, nn.Module] = {}
    for name, spec in specs.items():
        m = _build_module(name, spec)
        own = {k: v for k, v in tensors.items() if k.rsplit(".", 1)[0] == name}
        for key, value in own.items():
            attr = key.rsplit(".", 1)[1]
            if isinstance(getattr(m, attr, None), nn.Parameter):
                setattr(m, attr, nn.Parameter(value.clone(), requires_grad=False))
            elif attr in dict(m.named_buffers(recurse=False)) or attr in ("w_scale", "w_zero_point", "lo", "hi"):
                m.register_buffer(attr, value.clone())
            else:
                raise LoadError(f"{path}: tensor {key} does not belong to a {spec['type']}")
        m.train(bool(spec.get("training", False)))
        gm_modules[name] = m
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for rec in nodes:
        args = _decode(rec["args"], env)
        kwargs = _decode(rec["kwargs"], env)
        op = rec["op"]
        if op == "placeholder":
            n = graph.placeholder(rec["target"])
        elif op == "output":
            n = graph.output(args[0])
        elif op == "call_module":
            n = graph.call_module(rec["target"], args, kwargs)
        elif op == "call_function":
            n = graph.call_function(_resolve_function(rec["target"]), args, kwargs)
        elif op == "call_method":
            n = graph.call_method(rec["target"], args, kwargs)
        elif op == "get_attr":
            n = graph.get_attr(rec["target"])
        else:
            raise LoadError(f"{path}: unknown node kind {op!r}")
        n.name = rec["name"]
        if "meta" in rec:
            mt = rec["meta"]
            n.meta["tensor_meta"] = TensorMetadata(torch.Size(mt["shape"]), getattr(torch, mt["dtype"]), False,
                                                   tuple(mt["stride"]), None, False, {})
        env[rec["name"]] = n
    for name, m in gm_modules.items():
        _set_submodule(root, name, m)
    for rec in nodes:
        if rec["op"] == "get_attr":
            _set_tensor(root, rec["target"], tensors[rec["target"]])
    gm = fx.GraphModule(root, graph, "DFQQuantized")
    gm.eval()
    cfg = json.loads(meta.get("config") or "null")
    gm.dfq_config = DFQConfig.from_dict(cfg) if cfg else None  # type: ignore[attr-defined]
    rep = json.loads(meta.get("report") or "null")
    gm.report = _report_from_dict(rep) if rep else Report()  # type: ignore[attr-defined]
    gm.dfq_model_name = meta.get("model", "")  # type: ignore[attr-defined]
    return gm


def _set_submodule(root: nn.Module, dotted: str, m: nn.Module) -> None:
    parts = dotted.split(".")
    cur = root
    for p in parts[:-1]:
        if not hasattr(cur, p):
            cur.add_module(p, nn.Module())
        cur = getattr(cur, p)
    cur.add_module(parts[-1], m)


def _set_tensor(root: nn.Module, dotted: str, t: torch.Tensor) -> None:
    parts = dotted.split(".")
    cur = root
    for p in parts[:-1]:
        if not hasattr(cur, p):
            cur.add_module(p, nn.Module())
        cur = getattr(cur, p)
    cur.register_buffer(parts[-1], t)
