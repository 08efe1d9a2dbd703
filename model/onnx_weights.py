"""The PyTorch model back from an exported package: the weights are read from the ONNX graphs' initializers, so a
package is all a PyTorch user (the benchmark's PyTorch peer) needs, for the committed evlm-tiny as for evlm-base.

    model, manifest = load_package("fixtures/models/evlm-tiny")     # EVLM(manifest["config"]) with the package's weights
    check_references(model, "fixtures/models/evlm-tiny")            # its outputs on the package's reference inputs

ONNX files are read with a minimal protobuf reader (read_onnx: opsets, inputs, outputs, nodes, initializers; external
data files too), so nothing beyond torch and numpy is needed (Debian has no Python ONNX Runtime, and python3-onnx is
not required).

How initializers map to parameters (torch 1.13's exporter with constant folding, as export.py runs it):
  - a parameter used as it is keeps its name (LayerNorm weights, biases, convolutions, embeddings, positions, the
    stacked experts, 2-D linear layers exported as Gemm);
  - a linear layer on a 3-D input becomes MatMul(x, W^T) + Add(bias): the folded W^T is an unnamed initializer, found
    through the Add that takes the layer's named bias; a linear layer without bias (the router) is the one parameter
    left with W's shape; the tied LM head's W^T (a copy of the word embeddings) is checked against them and skipped;
  - the resampler's per-tap queries, sliced and unsqueezed at trace time, are L unnamed [1,Q,D] initializers, taken in
    the order the graph uses them.
Every parameter must be found exactly once (a parameter in several graphs, like the experts' LayerNorm, must be equal
in all of them) and every initializer must be used; check_references then compares the model with the package's
PyTorch reference outputs. The exporter stores equal tensors once (one initializer for all the zero biases of a freshly
initialised model), so the parameters of an exported model must be pairwise distinct: those of a trained model are;
model/build_base.py perturbs its random weights so that they are (build_base.perturb), and export.py's check 4 loads
every package it writes back this way.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from model import EVLM, EVLMConfig

# the graphs that hold EVLM's weights and the module each one exports (llava_decoder, the baseline, has its own)
GRAPH_MODULES = {"vit": "vit", "resampler": "resampler", "router": "experts", "experts": "experts", "xattn_kv": "memory",
                 "decoder": "decoder"}
MODEL_GRAPHS = tuple(GRAPH_MODULES)

# TensorProto.DataType -> numpy little-endian dtype
DTYPES = {1: "<f4", 2: "u1", 3: "i1", 5: "<i2", 6: "<i4", 7: "<i8", 9: "?", 10: "<f2", 11: "<f8"}


class PackageWeightsError(Exception):
    """The package's graphs do not map onto the model's parameters (or do not match its reference outputs)."""


# ----------------------------------------------------------------------------- a minimal protobuf reader

def _varint(b, i):
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def _fields(b):
    """(field number, value) of a protobuf message: ints for varints, memoryviews (no copies) for the rest."""
    i, n = 0, len(b)
    while i < n:
        key, i = _varint(b, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 2:
            ln, i = _varint(b, i)
            v = b[i:i + ln]
            i += ln
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError(f"protobuf wire type {wt} at byte {i}")
        yield f, v


def _ints(v):
    """A repeated int64 field's value: one varint, or a packed run of them."""
    if isinstance(v, int):
        return [v]
    out, i = [], 0
    while i < len(v):
        x, i = _varint(v, i)
        out.append(x)
    return out


@dataclass
class OnnxModel:
    opsets: dict                                   # domain -> version ("" is the default domain)
    inputs: list                                   # graph input names (initializers excluded)
    outputs: list                                  # graph output names
    nodes: list = field(default_factory=list)      # (op_type, inputs, outputs) in graph order
    initializers: dict = field(default_factory=dict)  # name -> numpy array (None with read_tensors=False)


def _tensor(t, base_dir, read):
    dims, dtype, name, raw, floats, int64s, external, location = [], 1, "", None, None, None, {}, 0
    for f, v in _fields(t):
        if f == 1:
            dims += _ints(v)
        elif f == 2:
            dtype = v
        elif f == 8:
            name = bytes(v).decode()
        elif f == 9:
            raw = v
        elif f == 4:
            floats = v if not isinstance(v, int) else None
        elif f == 7:
            int64s = (int64s or []) + _ints(v)
        elif f == 13:
            kv = dict(_fields(v))
            external[bytes(kv.get(1, b"")).decode()] = bytes(kv.get(2, b"")).decode()
        elif f == 14:
            location = v
    if not read:
        return name, None
    if dtype not in DTYPES:
        raise PackageWeightsError(f"initializer {name}: unsupported data type {dtype}")
    dt = np.dtype(DTYPES[dtype])
    count = int(np.prod(dims)) if dims else 1
    if location == 1:  # external data: a file beside the graph (offset and length in bytes)
        path = os.path.join(base_dir, external["location"])
        offset, length = int(external.get("offset", 0)), int(external.get("length", count * dt.itemsize))
        with open(path, "rb") as fh:
            fh.seek(offset)
            arr = np.frombuffer(fh.read(length), dt)
    elif raw is not None:
        arr = np.frombuffer(raw, dt)
    elif floats is not None:
        arr = np.frombuffer(floats, "<f4")
    elif int64s is not None:
        arr = np.array(int64s, np.uint64).astype(np.int64)  # varints are two's complement in 64 bits
    else:
        arr = np.zeros(count, dt)
    if arr.size != count:
        raise PackageWeightsError(f"initializer {name}: {arr.size} values for dims {dims}")
    return name, arr.reshape(dims)


def read_onnx(path, tensors=True) -> OnnxModel:
    """Opsets, graph inputs / outputs, nodes and initializers of an ONNX file (tensors=False: names only)."""
    with open(path, "rb") as fh:
        data = memoryview(fh.read())
    m = OnnxModel({}, [], [])
    inits = []
    for f, v in _fields(data):
        if f == 8:
            d = dict(_fields(v))
            m.opsets[bytes(d.get(1, b"")).decode()] = d.get(2)
        elif f == 7:
            for gf, gv in _fields(v):
                if gf == 1:
                    node = {1: [], 2: [], 4: ""}
                    for nf, nv in _fields(gv):
                        if nf in (1, 2):
                            node[nf].append(bytes(nv).decode())
                        elif nf == 4:
                            node[4] = bytes(nv).decode()
                    m.nodes.append((node[4], node[1], node[2]))
                elif gf in (11, 12):
                    name = bytes(dict(_fields(gv))[1]).decode()
                    (m.inputs if gf == 11 else m.outputs).append(name)
                elif gf == 5:
                    name, arr = _tensor(gv, os.path.dirname(os.path.abspath(path)), tensors)
                    m.initializers[name] = arr
                    inits.append(name)
    m.inputs = [n for n in m.inputs if n not in m.initializers]
    return m


# ----------------------------------------------------------------------------- initializers -> parameters

def _graph_weights(g: OnnxModel, params: dict, linear: set, found: dict, graph: str):
    """Assigns this graph's initializers to parameters in `found` (name -> tensor); see the module docstring.
    params: the parameters of the module the graph exports (name -> tensor); linear: the names of nn.Linear weights."""
    consumers = {}
    for k, (op, ins, outs) in enumerate(g.nodes):
        for x in ins:
            consumers.setdefault(x, []).append(k)

    def put(name, value, how):
        want = tuple(params[name].shape)
        if tuple(value.shape) != want:
            raise PackageWeightsError(f"{graph}: {how} gives {name} shape {tuple(value.shape)}, the model has {want}")
        t = torch.from_numpy(np.array(value, copy=True))
        if name in found:
            if not torch.equal(found[name], t):
                raise PackageWeightsError(f"{graph}: {name} differs from its copy in another graph")
            return
        found[name] = t

    def first_use(name):
        return min(consumers.get(name, [len(g.nodes)]))

    matmul_left, other_left = [], []
    for name, value in g.initializers.items():
        if name in params:
            put(name, value, "its name")
            continue
        bias = None
        for k in consumers.get(name, []):
            op, ins, outs = g.nodes[k]
            if op == "MatMul" and ins[1] == name:
                for j in consumers.get(outs[0], []):
                    op2, ins2, _ = g.nodes[j]
                    named = [x for x in ins2 if x.endswith(".bias") and x in params]
                    if op2 == "Add" and named:
                        bias = named[0]
                if bias is None:
                    matmul_left.append(name)
                break
        else:
            other_left.append(name)
            continue
        if bias is not None:
            put(bias[:-len(".bias")] + ".weight", value.T, f"the MatMul before {bias}")

    for name in matmul_left:  # linear layers without a bias, and the tied LM head
        w = g.initializers[name].T
        free = [p for p in params if p not in found and p in linear and tuple(params[p].shape) == w.shape]
        tied = [p for p in found if tuple(found[p].shape) == w.shape and torch.equal(found[p], torch.from_numpy(np.array(w)))]
        if len(free) == 1:
            put(free[0], w, f"the bias-free MatMul {name}")
        elif tied and not free:
            continue  # a transposed copy of a parameter already found (the LM head tied to the embeddings)
        else:
            raise PackageWeightsError(f"{graph}: the MatMul weight {name} {w.shape} matches {free or 'no parameter'}")

    by_shape = {}
    for name in sorted(other_left, key=first_use):  # slices of one parameter, in the order the graph uses them
        by_shape.setdefault(tuple(g.initializers[name].shape), []).append(name)
    for shape, names in by_shape.items():
        free = [p for p in params if p not in found and tuple(params[p].shape) == (len(names), *shape[1:])]
        if shape[:1] != (1,) or len(free) != 1:
            raise PackageWeightsError(f"{graph}: initializers {names} {shape} match no parameter")
        put(free[0], np.concatenate([g.initializers[n] for n in names]), f"{len(names)} slices")


def package_state_dict(pkg_dir, cfg: EVLMConfig) -> dict:
    """EVLM(cfg)'s state dict from the package's ONNX initializers."""
    with torch.random.fork_rng():
        model = EVLM(cfg)
    return graphs_state_dict(graph_paths(pkg_dir), model)


def graph_paths(pkg_dir) -> dict:
    manifest = json.load(open(os.path.join(pkg_dir, "manifest.json")))
    return {g: os.path.join(pkg_dir, manifest["graphs"][g]["file"]) for g in MODEL_GRAPHS}


def graphs_state_dict(paths: dict, model: EVLM) -> dict:
    """A state dict for `model` (its parameter names, shapes and linear layers; its values are not read or changed)
    from the initializers of its graphs ({graph: ONNX file} for MODEL_GRAPHS)."""
    params = dict(model.named_parameters())
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    found = {}
    for graph in MODEL_GRAPHS:
        prefix = GRAPH_MODULES[graph] + "."
        own = {n: p for n, p in params.items() if n.startswith(prefix)}
        _graph_weights(read_onnx(paths[graph]), own, linear, found, graph)
    missing = [p for p in params if p not in found]
    if missing:
        raise PackageWeightsError(
            f"no initializer for {missing[:5]}{' ...' if len(missing) > 5 else ''}: torch's exporter stores equal "
            "tensors once, so only a model whose parameters are pairwise distinct (trained, or build_base.perturb-ed) "
            "maps back")
    return {name: found[name] for name in params}


def load_package(pkg_dir):
    """(EVLM with the package's weights, in eval mode; the manifest). The architecture is the manifest's "config"."""
    manifest = json.load(open(os.path.join(pkg_dir, "manifest.json")))
    cfg = EVLMConfig(**manifest["config"])
    with torch.random.fork_rng():
        model = EVLM(cfg)
    model.load_state_dict(graphs_state_dict(graph_paths(pkg_dir), model))
    return model.eval(), manifest


def _read_ref(pkg_dir, ref):
    raw = open(os.path.join(pkg_dir, ref["file"]), "rb").read()
    arr = np.frombuffer(raw, "<f4" if ref["dtype"] == "float32" else "<i8").reshape(ref["dims"])
    return torch.from_numpy(arr.copy())


@torch.no_grad()
def check_references(model: EVLM, pkg_dir, graphs=MODEL_GRAPHS) -> dict:
    """Runs each graph's PyTorch function (export.py's wrappers) on the package's reference inputs: {case: max |diff|}
    against the reference outputs PyTorch wrote at export."""
    from export import graph_modules
    manifest = json.load(open(os.path.join(pkg_dir, "manifest.json")))
    modules = graph_modules(model, baseline=False)
    diffs = {}
    for graph in graphs:
        for rel in manifest["reference"]["graphs"].get(graph, []):
            case = json.load(open(os.path.join(pkg_dir, rel)))
            out = modules[graph](*[_read_ref(pkg_dir, r) for r in case["inputs"]])
            out = out if isinstance(out, tuple) else (out,)
            d = 0.0
            for got, ref in zip(out, case["outputs"]):
                want = _read_ref(pkg_dir, ref)
                if tuple(got.shape) != tuple(want.shape):
                    raise PackageWeightsError(f"{graph}.{case['case']}: {ref['name']} has shape {tuple(got.shape)}, the reference {tuple(want.shape)}")
                d = max(d, float((got.float() - want.float()).abs().max()) if want.numel() else 0.0)
            diffs[graph if case["case"] == "default" else f"{graph}.{case['case']}"] = d
    return diffs
