"""Parameter counts from a real Keras, for checking cnndsl's counts (not a dependency).

Run in a separate virtual environment: pip install "torch==2.13.0" keras;
KERAS_BACKEND=torch python scripts/keras_counts.py
"""

import os

os.environ["KERAS_BACKEND"] = "torch"
from functools import partial

import keras
from keras import layers


def fashion():
    DefaultConv2D = partial(layers.Conv2D, kernel_size=3, activation="relu", padding="same")
    m = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            DefaultConv2D(64, kernel_size=7),
            layers.MaxPooling2D(2),
            DefaultConv2D(128),
            DefaultConv2D(128),
            layers.MaxPooling2D(2),
            DefaultConv2D(256),
            DefaultConv2D(256),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ]
    )
    return m


DefaultConv2D = partial(
    layers.Conv2D,
    kernel_size=3,
    strides=1,
    padding="same",
    kernel_initializer="he_normal",
    use_bias=False,
)


class ResidualUnit(layers.Layer):
    def __init__(self, filters, strides=1, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)
        self.main_layers = [
            DefaultConv2D(filters, strides=strides),
            layers.BatchNormalization(),
            layers.Activation(activation),
            DefaultConv2D(filters),
            layers.BatchNormalization(),
        ]
        self.skip_layers = []
        if strides > 1:
            self.skip_layers = [
                DefaultConv2D(filters, kernel_size=1, strides=strides),
                layers.BatchNormalization(),
            ]

    def call(self, inputs):
        Z = inputs
        for l in self.main_layers:
            Z = l(Z)
        s = inputs
        for l in self.skip_layers:
            s = l(s)
        return self.activation(Z + s)


def resnet34():
    m = keras.Sequential(
        [
            keras.Input((224, 224, 3)),
            DefaultConv2D(64, kernel_size=7, strides=2),
            layers.BatchNormalization(),
            layers.Activation("relu"),
            layers.MaxPool2D(pool_size=3, strides=2, padding="same"),
        ]
    )
    prev = 64
    for f in [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3:
        m.add(ResidualUnit(f, strides=1 if f == prev else 2))
        prev = f
    m.add(layers.GlobalAvgPool2D())
    m.add(layers.Flatten())
    m.add(layers.Dense(10, activation="softmax"))
    return m


def counts(m):
    t = sum(int(w.numpy().size) for w in m.trainable_weights)
    n = sum(int(w.numpy().size) for w in m.non_trainable_weights)
    return t + n, t, n


for name, fn in [("fashion_mnist", fashion), ("resnet34", resnet34)]:
    print(name, counts(fn()))
apps = keras.applications
for name, fn in [
    ("vgg16", apps.VGG16),
    ("vgg19", apps.VGG19),
    ("resnet50", apps.ResNet50),
    ("resnet101", apps.ResNet101),
    ("resnet152", apps.ResNet152),
    ("inception_v3", apps.InceptionV3),
    ("xception", apps.Xception),
    ("mobilenet", apps.MobileNet),
    ("mobilenet_v2", apps.MobileNetV2),
    ("densenet121", apps.DenseNet121),
]:
    try:
        print(name, counts(fn(weights=None)))
    except Exception as e:
        print(name, "ERR", e)
