"""A subclassed model (no static graph) the service can load with safe_mode=True once this
module is imported: LAYERSCOPE_CUSTOM_OBJECTS_MODULES='["tests.zoo.custom"]'.

Always import it as ``tests.zoo.custom`` (the service does), so the registered name is
the same in the test process and in the workers."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="layerscope_zoo")
class TinyResidual(keras.Model):
    """x -> dense -> relu, plus a skip connection, -> 3 softmax classes."""

    def __init__(self, units: int = 8, classes: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.classes = classes
        self.hidden = keras.layers.Dense(units, activation="relu", name="hidden")
        self.skip = keras.layers.Dense(units, name="skip")
        self.head = keras.layers.Dense(classes, activation="softmax", name="head")

    def call(self, x, training=False):
        return self.head(self.hidden(x) + self.skip(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "classes": self.classes}
