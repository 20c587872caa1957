"""Serializable preprocessing layers used inside the models that ``core.training`` builds.

Convention: every model built here takes RAW pixels 0..255 (float32, shape
(H, W, C)) and preprocesses them itself, so the analysis can feed it decoded
images as they are. Keras' ``Lambda`` layers would do, but a ``.keras`` file
with a Lambda layer is refused in safe mode (it stores Python bytecode); these
classes are registered under the package "core" instead, and
``core.model.load.load_model`` imports this module before loading.

Importing this module imports Keras (it is imported only when a model is built
or loaded).
"""

from __future__ import annotations

import keras

from core.errors import UserError

# keras.applications module whose preprocess_input each backbone uses.
PREPROCESS_MODULES = {
    "vgg16": "vgg16",
    "resnet50": "resnet",
    "resnet101": "resnet",
    "mobilenetv2": "mobilenet_v2",
    "efficientnetb0": "efficientnet",
}


def _preprocess_function(backbone: str):
    if backbone not in PREPROCESS_MODULES:
        raise UserError(f"`backbone` must be one of {sorted(PREPROCESS_MODULES)}. "
                         f"Received: backbone={backbone!r}")
    return getattr(keras.applications, PREPROCESS_MODULES[backbone]).preprocess_input


@keras.saving.register_keras_serializable(package="core")
class BackbonePreprocess(keras.layers.Layer):
    """Raw 0..255 pixels -> what ``backbone`` expects (its own ``preprocess_input``).

    A 1-channel input is repeated to RGB first, since ImageNet backbones take 3
    channels. Output shape (batch, H, W, 3).
    """

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self._fn = _preprocess_function(backbone)
        self.backbone = backbone

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        if x.shape[-1] == 1:
            x = keras.ops.repeat(x, 3, axis=-1)
        return self._fn(x)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}
