"""ONNX image classifiers run with onnxruntime: class outputs and embeddings in one pass.

Conventions. A batch handed to ``OnnxClassifier.predict_on_batch`` is float32
(N, H, W, C), pixels already preprocessed (``core.data.preprocess.feed``), as for a
Keras model; it is transposed to the model's own input layout, NCHW (what
``torch.onnx.export`` writes) or NHWC (Keras/tf2onnx exports), which is read
from the input shape: the channel axis is the one fixed at 1 or 3. The call
returns the first graph output, (N, K) logits or probabilities, and the
features, (N, D). A dynamic batch dimension takes any batch; a fixed one of B
is fed B images at a time (the last chunk padded, the padding dropped).

Features default to the input of the last Gemm/MatMul node (the classifier
head, e.g. torchvision's ``fc``); ``layer`` names any node output (or a node,
meaning its first output), which is exposed by adding it to the graph's
outputs with the ``onnx`` package. A feature map (rank 4) is averaged over its
spatial axes: ONNX's own layout is NCHW (every Conv and pooling operator), so
axes 2 and 3, unless the map comes out of a Transpose to NHWC; other ranks are
flattened.

Safety: an ONNX file is a graph of standard operators and weights, i.e. data.
It is run by onnxruntime in its default mode on the CPU provider; no
custom-operator library is ever registered, so no code from the file or
beside it runs. Importing this module imports neither onnx nor onnxruntime
(nor TensorFlow: an ONNX analysis never needs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.preprocess import Preprocessing, check_channels
from core.model.formats.base import InferenceModel, ModelError

# Operators whose tensors are NCHW by the ONNX specification.
_NCHW_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "BatchNormalization",
                       "InstanceNormalization", "LRN", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
# Operators that keep the layout of their (first non-constant) input.
_LAYOUT_KEEPING_OPS = frozenset({"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "Tanh", "Clip",
                                 "HardSigmoid", "HardSwish", "Mish", "Gelu", "Softplus", "Add", "Sub", "Mul",
                                 "Div", "Identity", "Dropout", "Cast", "Pad", "Resize", "Upsample"})
# Operators that pass values through without changing them (for finding the output's activation).
_PASS_THROUGH_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"})
_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class OnnxGraphInfo:
    """What is known about an ONNX classifier from its graph, before a session is made.

    ``input_shape`` has None for dynamic dimensions; ``layout`` is 'NCHW' or 'NHWC';
    ``batch`` is the fixed batch size or None; ``n_outputs`` is K, or None when the
    graph does not say (found by running the model once).
    """

    path: Path
    input_name: str
    input_shape: tuple[int | None, ...]
    layout: str
    batch: int | None
    channels: int
    input_size: tuple[int, int] | None
    output_name: str
    n_outputs: int | None
    output_activation: str | None
    rescales_input: bool


class OnnxModel:
    """An ONNX file parsed and checked as an image classifier (``load_onnx``); no session yet."""

    def __init__(self, path: Path, proto, info: OnnxGraphInfo):
        self.path, self.proto, self.info = path, proto, info
        self.name = path.stem

    def __repr__(self) -> str:
        i = self.info
        return f"OnnxModel({self.path.name!r}, input {list(i.input_shape)} {i.layout}, outputs {i.n_outputs})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    for line in text.splitlines():  # onnxruntime prefixes its messages with '[ONNXRuntimeError] : 2 : ...'
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


def _dims(value_info) -> tuple[int | None, ...] | None:
    """Shape of a graph input/output: ints, None for a symbolic or unknown dimension."""
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in t.tensor_type.shape.dim)


def detect_layout(shape: tuple[int | None, ...], *, name: str = "input") -> str:
    """'NCHW' or 'NHWC' for an image input of ``shape`` (None = dynamic dimension).

    The channel axis is the one fixed at 1 or 3; when both axes 1 and 3 are,
    ONNX's own convention (NCHW) wins.

    >>> detect_layout((None, 3, 224, 224)), detect_layout((None, 28, 28, 1)), detect_layout((1, 3, None, None))
    ('NCHW', 'NHWC', 'NCHW')
    """
    if len(shape) != 4:
        raise ModelError(f"Expected an image model with input (batch, channels, height, width) or (batch, height, "
                         f"width, channels). Received input {name!r} of shape {_shape_text(shape)}")
    if shape[1] in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3):
        return "NHWC"
    raise ModelError(f"Cannot tell the layout of input {name!r} of shape {_shape_text(shape)}: neither axis 1 "
                     "(NCHW) nor axis 3 (NHWC) is fixed at 1 or 3 channels")


def _shape_text(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def load_onnx(path: str | Path) -> OnnxModel:
    """Parse ``path`` with the ``onnx`` package and read its input/output conventions.

    Raises ModelError (one line) for a file that is not ONNX, a model with
    other than one input, an input that is not an image batch or not float.
    """
    import onnx

    p = Path(path)
    try:
        proto = onnx.load(str(p))
    except Exception as exc:  # boundary: protobuf DecodeError, OSError, onnx's own errors for external data
        raise ModelError(f"Not an ONNX model file: {str(p)!r} ({_first_line(exc)})") from None
    graph = proto.graph
    if not graph.node:
        raise ModelError(f"Not an ONNX model file: {str(p)!r} (its graph has no nodes)")
    constants = _constant_names(graph)
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise ModelError(f"ONNX model {str(p)!r} takes {len(inputs)} inputs "
                         f"({[i.name for i in inputs]}); expected one image batch")
    inp = inputs[0]
    shape = _dims(inp)
    if shape is None:
        raise ModelError(f"ONNX model {str(p)!r}: input {inp.name!r} has no declared shape; expected "
                         "(batch, channels, height, width) or (batch, height, width, channels)")
    layout = detect_layout(shape, name=inp.name)
    elem = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type) \
        if inp.type.tensor_type.elem_type else None
    if elem is None or np.dtype(elem).kind != "f":
        raise ModelError(f"ONNX model {str(p)!r}: input {inp.name!r} is of type {elem}; only float inputs "
                         "(float32, float16, float64) are supported")
    channels, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    if not graph.output:
        raise ModelError(f"ONNX model {str(p)!r} has no outputs")
    out = graph.output[0]
    out_shape = _dims(out)
    # K is every non-batch dimension: (N, K), or (N, K, 1, 1) from a convolutional head
    n_outputs = int(np.prod(out_shape[1:])) if out_shape and len(out_shape) > 1 and all(out_shape[1:]) else None
    names = [n.name.lower() for n in graph.node]
    info = OnnxGraphInfo(
        path=p, input_name=inp.name, input_shape=shape, layout=layout, batch=shape[0], channels=int(channels),
        input_size=(h, w) if h and w else None, output_name=out.name, n_outputs=n_outputs,
        output_activation=_output_activation(graph, out.name),
        # a Keras model exported with tf2onnx keeps its layer names: its own rescaling means raw pixels
        rescales_input=any("rescaling" in n or "normalization" in n for n in names),
    )
    return OnnxModel(p, proto, info)


def external_data_files(path: str | Path) -> list[Path]:
    """The files beside ``path`` that hold its weights ("external data", used above 2 GB), sorted.

    Empty for a model that keeps its weights inside (most do) and for a file
    that does not parse (loading it says why). the ONNX format's hash (``core.model.formats.onnx``)
    hashes them with the model, so new weights make a new run.
    """
    import onnx

    p = Path(path)
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception:  # boundary: not ONNX: load_onnx reports it
        return []
    folder = p.parent.resolve()
    files = set()
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            target = (folder / location).resolve() if location else None
            if target is not None and target.is_relative_to(folder):  # onnx refuses the others when loading
                files.add(target)
    return sorted(files)


def _constant_names(graph) -> set[str]:
    """Tensors that are weights: initializers and Constant node outputs."""
    names = {t.name for t in graph.initializer}
    names |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return names


def _producers(graph) -> dict[str, object]:
    return {o: node for node in graph.node for o in node.output if o}


def _output_activation(graph, output: str) -> str | None:
    """'softmax' or 'sigmoid' when the output comes (through reshapes) from that operator, else None."""
    producers = _producers(graph)
    node = producers.get(output)
    for _ in range(16):
        if node is None:
            return None
        if node.op_type == "Softmax":
            return "softmax"
        if node.op_type == "Sigmoid":
            return "sigmoid"
        if node.op_type not in _PASS_THROUGH_OPS or not node.input:
            return None
        node = producers.get(node.input[0])
    return None


def default_feature_tensor(graph) -> tuple[str, str]:
    """(tensor name, description) of the input of the last Gemm/MatMul node: the classifier's input.

    Nodes of an ONNX graph are stored in topological order, so the last such
    node is the head. Raises ModelError when the graph has none.
    """
    constants = _constant_names(graph)
    for node in reversed(graph.node):
        if node.op_type in ("Gemm", "MatMul"):
            data = [t for t in node.input if t and t not in constants]
            if data:
                return data[0], f"{node.name or node.op_type}:input"
    outputs = [o for n in graph.node for o in n.output if o]
    raise ModelError("No Gemm or MatMul node found to take features from: pass --layer with a node output "
                     f"(last ones: {outputs[-8:]})")


def find_tensor(graph, layer: str) -> str:
    """The tensor that ``layer`` names: a node output, or a node's name (its first output)."""
    outputs = [o for n in graph.node for o in n.output if o]
    if layer in set(outputs):
        return layer
    for node in graph.node:
        if node.name == layer and node.output:
            return node.output[0]
    raise ModelError(f"No node output named {layer!r} in the ONNX graph. Last node outputs: {outputs[-8:]} "
                     f"({len(outputs)} in all)")


def feature_map_layout(graph, tensor: str, *, input_layout: str) -> str:
    """'NCHW' or 'NHWC' for a rank-4 tensor, by walking back to the nearest operator of known layout.

    ONNX's convolution and pooling operators are NCHW; a Transpose with perm
    [0, 2, 3, 1] makes NHWC (and [0, 3, 1, 2] NCHW again); the graph input has the
    model's input layout. Unknown: NCHW, ONNX's convention.
    """
    producers, constants = _producers(graph), _constant_names(graph)
    input_names = {i.name for i in graph.input}
    name = tensor
    for _ in range(64):
        if name in input_names:
            return input_layout
        node = producers.get(name)
        if node is None:
            return "NCHW"
        if node.op_type in _NCHW_OPS:
            return "NCHW"
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if perm == [0, 2, 3, 1]:
                return "NHWC"
            if perm == [0, 3, 1, 2]:
                return "NCHW"
            return "NCHW"
        if node.op_type not in _LAYOUT_KEEPING_OPS:
            return "NCHW"
        data = [t for t in node.input if t and t not in constants]
        if not data:
            return "NCHW"
        name = data[0]
    return "NCHW"


def pool_features(features: np.ndarray, *, layout: str) -> np.ndarray:
    """(N, D) float32 from a feature tensor: a rank-4 map averaged over its spatial axes, else flattened.

    >>> pool_features(np.ones((2, 5, 3, 3)), layout="NCHW").shape
    (2, 5)
    >>> pool_features(np.ones((2, 3, 3, 5)), layout="NHWC").shape
    (2, 5)
    """
    f = np.asarray(features)
    if f.ndim == 4:
        f = f.mean(axis=(2, 3) if layout == "NCHW" else (1, 2))
    elif f.ndim != 2:
        f = f.reshape(len(f), -1)
    return f.astype(np.float32, copy=False)


class OnnxClassifier:
    """An onnxruntime session that gives (class outputs, features) per batch (see the module docstring)."""

    def __init__(self, model: OnnxModel, *, feature_tensor: str, feature_layout: str):
        import onnx
        import onnxruntime as ort

        self.info = model.info
        self.feature_tensor, self.feature_layout = feature_tensor, feature_layout
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        outputs = {o.name for o in proto.graph.output}
        if feature_tensor not in outputs:
            # type and shape are left for onnxruntime to infer
            proto.graph.output.append(onnx.ValueInfoProto(name=feature_tensor))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are not the user's business
        try:
            # Default mode, CPU provider, no register_custom_ops_library: standard operators only.
            self.session = ort.InferenceSession(proto.SerializeToString(), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # boundary: onnxruntime raises its own exception types
            raise ModelError(f"onnxruntime cannot run {str(model.path)!r}: {_first_line(exc)}") from None
        session_input = self.session.get_inputs()[0]
        self.input_dtype = _FLOAT_TYPES.get(session_input.type, np.float32)
        self.name = model.name

    def predict_on_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x`` float32 (N, H, W, C) -> (outputs (N, K) float32, features (N, D) float32)."""
        x = np.asarray(x)
        if x.ndim != 4:
            raise ModelError(f"Expected a batch of shape (N, H, W, C). Received shape {x.shape}")
        if self.info.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        n, step = len(x), self.info.batch or max(len(x), 1)
        names = [self.info.output_name] + ([self.feature_tensor] if self.feature_tensor != self.info.output_name
                                           else [])
        outs, feats = [], []
        for start in range(0, n, step):
            chunk = x[start:start + step]
            if self.info.batch and len(chunk) < self.info.batch:  # a fixed batch size: pad, drop afterwards
                pad = np.zeros((self.info.batch - len(chunk), *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            try:
                result = self.session.run(names, {self.info.input_name: chunk})
            except Exception as exc:  # boundary: onnxruntime's InvalidArgument, Fail, ... (wrong size, bad graph)
                raise ModelError(f"onnxruntime failed on {self.info.path.name!r} with input of shape "
                                 f"{list(chunk.shape)}: {_first_line(exc)}") from None
            m = min(len(chunk), n - start)
            out = np.asarray(result[0])[:m]
            outs.append(out.reshape(m, -1).astype(np.float32, copy=False))
            feats.append(pool_features(np.asarray(result[-1])[:m], layout=self.feature_layout))
        if not outs:
            return np.zeros((0, self.info.n_outputs or 0), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(outs), np.concatenate(feats)


def onnx_inference_model(model: OnnxModel, *, layer: str | None = None,
                         preprocessing: Preprocessing = Preprocessing()) -> InferenceModel:
    """Wrap ``model`` for ``core.run.analyze``: one call gives class outputs and features.

    ``preprocessing`` 'auto' is 'raw' for a model whose node names show its own
    rescaling layer (a Keras export), else 'unit'; a torchvision model needs
    'imagenet' (or Keras' name for it, 'torch'). Raises ModelError (one line)
    for an unknown ``layer``, a preprocessing the input cannot take, or a model
    whose output size cannot be found.
    """
    info = model.info
    resolved = preprocessing.resolved("raw" if info.rescales_input else "unit")
    try:
        check_channels(resolved, info.channels)
    except ValueError as exc:
        raise ModelError(f"ONNX model {model.path.name!r}: {exc}") from None
    graph = model.proto.graph
    if layer is None:
        try:
            tensor, layer_name = default_feature_tensor(graph)
        except ModelError:
            # a graph onnxruntime cannot run (an unknown custom operator, which may stand for the head) says
            # so first: 'no Gemm or MatMul' alone sent the user after --layer
            out = graph.output[0].name
            OnnxClassifier(model, feature_tensor=out, feature_layout=feature_map_layout(graph, out,
                                                                                        input_layout=info.layout))
            raise
    else:
        tensor = find_tensor(graph, layer)
        layer_name = tensor
    classifier = OnnxClassifier(model, feature_tensor=tensor,
                                feature_layout=feature_map_layout(graph, tensor, input_layout=info.layout))
    n_outputs = info.n_outputs
    if n_outputs is None:  # the graph leaves K symbolic: run one blank image to learn it
        if info.input_size is None:
            raise ModelError(f"ONNX model {model.path.name!r} declares neither its image size nor its number "
                             "of classes; export it with a fixed height and width")
        probe = np.zeros((info.batch or 1, *info.input_size, info.channels), np.float32)
        n_outputs = int(classifier.predict_on_batch(probe)[0].shape[1])
    return InferenceModel(
        model=classifier, input_size=info.input_size, channels=info.channels, n_outputs=int(n_outputs),
        layer=layer_name, output_activation=info.output_activation, preprocessing=resolved, has_features=True,
        rescales_input=info.rescales_input,
    )
