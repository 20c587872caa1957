"""Models trained the users' ways, saved to files, with the users' own evaluations: a shared zoo.

Each ``build_*`` trains a tiny model in seconds on seeded synthetic colour
images where the preprocessing matters (classes told apart by the colour of a
blob: red, blue, yellow, cyan, so swapping R and B swaps classes), exactly as
a tutorial would: the training images prepared *outside* the model by the
user's code (``cv2.imread`` and /255; ``resnet.preprocess_input``; a
keras.applications backbone's 'tf' mode; torchvision's ``Normalize`` before an
ONNX export), then saves the model to a file. The test images are written as
PNG class folders; ``UserCase.user_predictions`` are the predictions of the
model *loaded back from its file* on the test images read and prepared the
user's way. ``tests/core/data/test_preprocess_targets.py`` and
``benchmarks/bench_preprocess.py`` use them.

No import of TensorFlow at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ("blue", "cyan", "red", "yellow")  # alphabetical: the folder order is the label order
_RGB = {"blue": (0, 0, 1), "cyan": (0, 1, 1), "red": (1, 0, 0), "yellow": (1, 1, 0)}
SIZE = 32


@dataclass
class UserCase:
    name: str                  # what the user did
    model_path: Path
    data: Path                 # PNG class folders of the test images
    option: dict               # what the README says to pass: {'scale': ..., 'channel_order': ...}
    default_is_right: bool     # whether --preprocess auto / rgb is already what the model needs
    user_predictions: np.ndarray  # (n,) in the order of sorted(data.rglob('*.png'))
    labels: np.ndarray


def colour_images(n: int, *, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB (n, size, size, 3) and labels (n,): a coloured square on a noisy tinted background."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    tint = rng.uniform(40, 140, (n, 1, 1, 3))
    images = tint + rng.normal(0, 20, (n, size, size, 3))
    for i, label in enumerate(labels):
        side = int(rng.integers(size // 3, size // 2 + 2))
        y, x = rng.integers(0, size - side, 2)
        colour = np.asarray(_RGB[CLASSES[label]], np.float64) * rng.uniform(170, 255) + rng.uniform(0, 50, 3) * (
            1 - np.asarray(_RGB[CLASSES[label]]))
        images[i, y:y + side, x:x + side] = colour + rng.normal(0, 12, (side, side, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_folders(images: np.ndarray, labels: np.ndarray, root: Path) -> list[Path]:
    """PNG files root/<class>/<i>.png (RGB pixels written as an image, cv2 stores them BGR on disk)."""
    import cv2

    files = []
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.png"
        cv2.imwrite(str(path), img[..., ::-1])
        files.append(path)
    return files


def _read_rgb(files) -> np.ndarray:
    """The test images read as keras.utils.load_img / PIL users read them: RGB."""
    import cv2

    return np.stack([cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files])


def _read_bgr(files) -> np.ndarray:
    """The test images read as cv2 users read them: BGR, never converted."""
    import cv2

    return np.stack([cv2.imread(str(f)) for f in files])


def _sorted_test(root: Path) -> tuple[list[Path], np.ndarray]:
    files = sorted(root.rglob("*.png"))
    return files, np.array([CLASSES.index(f.parent.name) for f in files])


def _fit(model, x, y, *, epochs: int, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def _small_cnn(inputs, *, rescale: bool = False):
    import keras
    from keras import layers

    x = layers.Rescaling(1 / 255, name="rescaling")(inputs) if rescale else inputs
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(32, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(len(CLASSES), activation="softmax")(x))


def _setup(folder: Path, n_train: int, n_test: int, seed: int):
    import keras

    # the model each builder makes next gets its first weights from this seed too (``_fit`` seeded only the
    # training, after the layers had drawn theirs: a CI run's cv2 model once fell short of the class-order bar)
    keras.utils.set_random_seed(seed)
    train_x, train_y = colour_images(n_train, seed=seed)
    test_x, test_y = colour_images(n_test, seed=seed + 1)
    data = folder / "test"
    write_folders(test_x, test_y, data)
    files, labels = _sorted_test(data)
    return train_x, train_y, data, files, labels


def _predict(model, x) -> np.ndarray:
    return np.asarray(model.predict(x, verbose=0, batch_size=64)).argmax(axis=1)


def build_cv2_bgr(folder: Path, *, n_train: int = 800, n_test: int = 300, seed: int = 0) -> UserCase:
    """The Simpsons notebook: cv2.imread (BGR, never converted), /255, a plain Sequential CNN, .keras."""
    import keras
    from keras import layers

    train_x, train_y, data, files, labels = _setup(folder, n_train, n_test, seed)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), layers.Conv2D(16, 3, activation="relu"),
                              layers.MaxPooling2D(), layers.Conv2D(32, 3, activation="relu"),
                              layers.GlobalAveragePooling2D(), layers.Dense(len(CLASSES), activation="softmax")])
    _fit(model, train_x[..., ::-1] / 255.0, train_y, epochs=6)  # cv2 images are BGR
    path = folder / "cv2_cnn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    user = _predict(loaded, _read_bgr(files) / 255.0)
    return UserCase("cv2.imread BGR /255 CNN", path, data, {"scale": "unit", "channel_order": "bgr"}, False,
                    user, labels)


def build_resnet_caffe(folder: Path, *, n_train: int = 800, n_test: int = 300, seed: int = 10) -> UserCase:
    """A residual CNN trained on keras.applications.resnet.preprocess_input (caffe) outside the model."""
    import keras
    from keras import layers
    from keras.applications.resnet import preprocess_input

    train_x, train_y, data, files, labels = _setup(folder, n_train, n_test, seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = layers.Activation("relu")(layers.BatchNormalization()(x))
    shortcut = x
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    x = layers.Activation("relu")(layers.BatchNormalization()(x))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    x = layers.Activation("relu")(layers.Add()([layers.BatchNormalization()(x), shortcut]))
    x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(32, 3, padding="same", activation="relu")(x))
    model = keras.Model(inputs, layers.Dense(len(CLASSES), activation="softmax")(x))
    _fit(model, preprocess_input(train_x.astype("float32")), train_y, epochs=6)
    path = folder / "resnet_caffe.h5"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    user = _predict(loaded, preprocess_input(_read_rgb(files).astype("float32")))
    return UserCase("ResNet-style, resnet.preprocess_input outside", path, data, {"scale": "caffe"}, False,
                    user, labels)


def build_vgg_unit(folder: Path, *, n_train: int = 800, n_test: int = 300, seed: int = 20) -> UserCase:
    """VGG16-style: ImageDataGenerator(rescale=1/255) / x / 255, Conv-Conv-Pool blocks, Flatten head."""
    import keras
    from keras import layers

    train_x, train_y, data, files, labels = _setup(folder, n_train, n_test, seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for filters in (16, 32):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Dense(32, activation="relu")(layers.Flatten()(x))
    model = keras.Model(inputs, layers.Dense(len(CLASSES), activation="softmax")(x))
    _fit(model, train_x / 255.0, train_y, epochs=6)
    path = folder / "vgg_unit.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    user = _predict(loaded, _read_rgb(files) / 255.0)
    return UserCase("VGG16-style /255", path, data, {"scale": "unit"}, True, user, labels)


def build_mobilenet_tf(folder: Path, *, n_train: int = 800, n_test: int = 300, seed: int = 30) -> UserCase:
    """keras.applications.MobileNetV2 (weights=None, 32x32, alpha 0.35) nested in a classifier, trained on
    mobilenet_v2.preprocess_input ('tf' mode, -1..1) outside the model."""
    import keras
    from keras import layers
    from keras.applications.mobilenet_v2 import preprocess_input

    train_x, train_y, data, files, labels = _setup(folder, n_train, n_test, seed)
    backbone = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False,
                                              weights=None, pooling="avg")
    for layer in backbone.layers:  # MobileNetV2's BN momentum (0.999) needs thousands of steps from scratch
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.9
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, layers.Dense(len(CLASSES), activation="softmax")(backbone(inputs)))
    _fit(model, preprocess_input(train_x.astype("float32")), train_y, epochs=9)
    path = folder / "mobilenet_tf.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    user = _predict(loaded, preprocess_input(_read_rgb(files).astype("float32")))
    return UserCase("MobileNetV2 backbone, preprocess_input ('tf')", path, data, {"scale": "tf"}, False,
                    user, labels)


def build_rescaling_inside(folder: Path, *, n_train: int = 800, n_test: int = 300, seed: int = 40) -> UserCase:
    """A Rescaling(1/255) layer inside the model, fed raw pixels: nothing to pass."""
    import keras

    train_x, train_y, data, files, labels = _setup(folder, n_train, n_test, seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    model = _small_cnn(inputs, rescale=True)
    _fit(model, train_x.astype("float32"), train_y, epochs=6)
    path = folder / "rescaling_inside.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    user = _predict(loaded, _read_rgb(files).astype("float32"))
    return UserCase("Rescaling layer inside the model", path, data, {"scale": "auto"}, True, user, labels)


def build_onnx_torchvision(folder: Path, *, n_train: int = 800, n_test: int = 300, seed: int = 50) -> UserCase:
    """A PyTorch user's path without PyTorch: a CNN trained on torchvision-Normalize'd NCHW tensors and
    exported as ONNX (Conv/Relu/MaxPool/GlobalAveragePool/Gemm/Softmax, NCHW input, dynamic batch),
    written with onnx.helper from the trained weights; the user's evaluation runs onnxruntime on the
    test images read as PIL does (RGB), ToTensor (/255) and Normalize(ImageNet mean, std)."""
    import keras
    import onnx
    import onnxruntime as ort
    from keras import layers
    from onnx import TensorProto, helper, numpy_helper

    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    train_x, train_y, data, files, labels = _setup(folder, n_train, n_test, seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="c2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(len(CLASSES), activation="softmax", name="fc")(x))
    _fit(model, (train_x / 255.0 - mean) / std, train_y, epochs=6)

    def conv_weights(name):
        kernel, bias = model.get_layer(name).get_weights()
        return kernel.transpose(3, 2, 0, 1).astype(np.float32), bias.astype(np.float32)

    w1, b1 = conv_weights("c1")
    w2, b2 = conv_weights("c2")
    wf, bf = (w.astype(np.float32) for w in model.get_layer("fc").get_weights())
    init = [numpy_helper.from_array(a, n) for a, n in
            ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (wf.T.copy(), "wf"), (bf, "bf"))]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["h1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["h2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "torchvision_cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(CLASSES)])], init)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    path = folder / "torchvision_cnn.onnx"
    onnx.save(proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tensors = ((_read_rgb(files) / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    user = session.run(["probs"], {"input": tensors})[0].argmax(axis=1)
    return UserCase("torchvision Normalize, ONNX export", path, data, {"scale": "imagenet"}, False, user, labels)


BUILDERS = {"cv2_bgr": build_cv2_bgr, "resnet_caffe": build_resnet_caffe, "vgg_unit": build_vgg_unit,
            "mobilenet_tf": build_mobilenet_tf, "rescaling_inside": build_rescaling_inside,
            "onnx_torchvision": build_onnx_torchvision}
