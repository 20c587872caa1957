"""Writes the legacy .h5 fixtures of tests/core/test_models.py with tf.keras 2.x (the ``tf_keras`` package).

Run from the repository root after ``.venv/bin/python -m pip install --no-deps tf_keras==2.21.0``
(``--no-deps``: tf_keras requires the ``tensorflow`` distribution, which would install the full
TensorFlow wheel over the pinned ``tensorflow-cpu``)::

    .venv/bin/python tests/core/data/make_tf_keras2_h5.py

The files are committed, so the tests need neither tf_keras nor this script:

* ``tf_keras2_transfer.h5``: the transfer-learning architecture of course notebooks, a frozen
  backbone named 'vgg16' (VGG-like: five blocks of Conv2D + MaxPooling2D, 8 filters each,
  built with ``input_shape`` like ``keras.applications.VGG16``) applied to ``Rescaling(1/255)``
  of a (32, 32, 3) input inside a Functional model, then Flatten, Dense 256, Dropout, Dense 128,
  Dropout, Dense 3 softmax. tf.keras 2.x refers to the backbone's call as node 1.
* ``tf_keras2_sequential.h5``: the same kind of backbone inside a Sequential model, then
  Flatten and Dense 3 softmax.
* ``tf_keras2_expected.npz``: ``x`` (4, 32, 32, 3) uint8 pixels and what tf_keras computes on
  them as float32: ``probs`` and ``embeddings`` (the output of the Dense 128 layer) of the
  transfer model, ``block5_pool`` (its backbone's last feature map) and ``sequential_probs``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _vgg_like(tf_keras, name: str):
    inputs = tf_keras.Input((32, 32, 3))
    x = inputs
    for block in range(1, 6):
        x = tf_keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"block{block}_conv1")(x)
        x = tf_keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return tf_keras.Model(inputs, x, name=name)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    backbone = _vgg_like(tf_keras, "vgg16")
    backbone.trainable = False
    inputs = tf_keras.Input((32, 32, 3))
    x = tf_keras.layers.Rescaling(1 / 255.0)(inputs)
    x = backbone(x, training=False)
    x = tf_keras.layers.Flatten()(x)
    x = tf_keras.layers.Dense(256, activation="relu")(x)
    x = tf_keras.layers.Dropout(0.5)(x)
    x = tf_keras.layers.Dense(128, activation="relu", name="embedding")(x)
    x = tf_keras.layers.Dropout(0.3)(x)
    outputs = tf_keras.layers.Dense(3, activation="softmax")(x)
    transfer = tf_keras.Model(inputs, outputs)
    transfer.save(HERE / "tf_keras2_transfer.h5")

    sequential = tf_keras.Sequential([tf_keras.Input((32, 32, 3)), tf_keras.layers.Rescaling(1 / 255.0),
                                      _vgg_like(tf_keras, "vgg16"), tf_keras.layers.Flatten(),
                                      tf_keras.layers.Dense(3, activation="softmax")])
    sequential.save(HERE / "tf_keras2_sequential.h5")

    # noise at four brightness levels, so that the four predictions differ clearly
    noise = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3))
    pixels = (noise * np.array([0.25, 0.5, 0.75, 1.0])[:, None, None, None]).astype(np.uint8)
    x = pixels.astype("float32")
    embedding = tf_keras.Model(transfer.inputs, transfer.get_layer("embedding").output)
    block5 = backbone.get_layer("block5_pool").output
    np.savez_compressed(
        HERE / "tf_keras2_expected.npz", x=pixels,
        probs=transfer.predict(x, verbose=0), embeddings=embedding.predict(x, verbose=0),
        block5_pool=tf_keras.Model(backbone.inputs, block5).predict(x / 255.0, verbose=0),
        sequential_probs=sequential.predict(x, verbose=0),
    )


if __name__ == "__main__":
    main()
