"""Attributions: Grad-CAM for image models, integrated gradients for tabular models.

Both are compiled ``tf.function``s with a ``None`` batch dimension, built once per
(loaded version, layer) and kept in that version's :class:`Explainers`.

Class scores
    Grad-CAM differentiates the *logit* of the explained class when the output layer is a
    ``Dense`` with a softmax / sigmoid activation (pre-activation recomputed from its kernel
    and bias; a one-unit sigmoid gives ``+z`` for class 1 and ``-z`` for class 0), else the
    log-probability. Integrated gradients explain the *probability* ``f(x)`` of the class
    (one-unit sigmoid: ``p`` for class 1, ``1 - p`` for class 0), so completeness reads
    ``sum(attributions) == f(x) - f(baseline)``.

Predicted class
    ``class_index = -1`` asks for the predicted class: argmax of the probabilities, or for a
    one-unit sigmoid ``p >= threshold`` (the version's stored decision threshold).

Integrated gradients
    Straight path from the baseline to ``x`` with ``steps`` intervals, trapezoidal rule.
    Default baseline: the mean of the version's reference sample (raw feature space) when
    there is one, else zeros; a caller may pass ``"zeros"``, ``"reference_mean"`` or an explicit
    instance.
"""

from __future__ import annotations

import threading

import keras
import numpy as np
import tensorflow as tf

MAX_STEPS = 512


def _output_layer(model: keras.Model) -> keras.layers.Layer:
    return model.layers[-1]


def _output_activation(model: keras.Model) -> str | None:
    act = getattr(_output_layer(model), "activation", None)
    return getattr(act, "__name__", None)


def spatial_layers(model: keras.Model) -> list[str]:
    """Names of the layers with a 4-D (batch, h, w, channels) output, in order."""
    return [
        layer.name
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4
    ]


def last_conv_layer(model: keras.Model) -> str:
    """Name of the last convolutional layer; ValueError when the model has none."""
    convs = [
        layer.name
        for layer in model.layers
        if "Conv" in type(layer).__name__ and len(layer.output.shape) == 4
    ]
    if not convs:
        raise ValueError(f"model {model.name!r} has no convolutional layer; Grad-CAM needs one")
    return convs[-1]


def _resolve_class(probs, class_index, threshold):
    """class_index where >= 0, else the predicted class (int32, shape (n,))."""
    if probs.shape[-1] == 1:
        predicted = tf.cast(probs[:, 0] >= threshold, tf.int32)
    else:
        predicted = tf.cast(tf.argmax(probs, axis=-1), tf.int32)
    return tf.where(class_index >= 0, class_index, predicted)


def _class_prob(probs, cls):
    if probs.shape[-1] == 1:
        p = probs[:, 0]
        return tf.where(cls == 1, p, 1.0 - p)
    return tf.gather(probs, cls, axis=1, batch_dims=1)


class GradCam:
    """Grad-CAM from one 4-D layer of ``model``; call with a batch and class indices."""

    def __init__(self, model: keras.Model, layer: str) -> None:
        target = model.get_layer(layer)
        if len(target.output.shape) != 4:
            raise ValueError(
                f"Grad-CAM needs a layer with a (batch, height, width, channels) output; "
                f"{layer!r} outputs {tuple(target.output.shape)}; "
                f"allowed: {spatial_layers(model)}"
            )
        self.layer = layer
        head = _output_layer(model)
        use_logits = isinstance(head, keras.layers.Dense) and _output_activation(model) in (
            "softmax",
            "sigmoid",
        )
        outputs = [target.output, model.outputs[0]]
        if use_logits:
            outputs.append(head.input)
        sub = keras.Model(model.inputs, outputs)
        in_shape = tuple(model.inputs[0].shape[1:])
        binary = model.outputs[0].shape[-1] == 1

        @tf.function(
            input_signature=[
                tf.TensorSpec((None, *in_shape), tf.float32),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((), tf.float32),
            ],
            reduce_retracing=True,
        )
        def run(x, class_index, threshold):
            with tf.GradientTape() as tape:
                got = sub(x, training=False)
                feats, probs = got[0], got[1]
                tape.watch(feats)
                cls = _resolve_class(probs, class_index, threshold)
                if use_logits:
                    logits = tf.matmul(got[2], head.kernel)
                    if head.use_bias:
                        logits = logits + head.bias
                    if binary:
                        score = tf.where(cls == 1, logits[:, 0], -logits[:, 0])
                    else:
                        score = tf.gather(logits, cls, axis=1, batch_dims=1)
                else:
                    score = tf.math.log(_class_prob(probs, cls) + 1e-12)
            grads = tape.gradient(score, feats)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * feats, axis=-1))
            peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
            cam = tf.math.divide_no_nan(cam, peak)
            up = tf.image.resize(cam[..., None], in_shape[:2], method="bilinear")[..., 0]
            return cam, up, cls, probs

        self._run = run

    def __call__(self, x: np.ndarray, class_index: np.ndarray, threshold: float = 0.5) -> dict:
        """{"cam": (n,h,w) in [0,1], "cam_input": (n,H,W) at input size, "class", "probs"}."""
        cam, up, cls, probs = self._run(
            tf.convert_to_tensor(x, tf.float32),
            tf.convert_to_tensor(class_index, tf.int32),
            tf.constant(threshold, tf.float32),
        )
        return {
            "cam": cam.numpy(),
            "cam_input": up.numpy(),
            "class": cls.numpy(),
            "probs": probs.numpy(),
        }


class IntegratedGradients:
    """Integrated gradients of the explained class's probability w.r.t. the raw input."""

    def __init__(self, model: keras.Model) -> None:
        in_shape = tuple(model.inputs[0].shape[1:])
        self.input_shape = in_shape
        ones = [1] * (1 + len(in_shape))

        @tf.function(
            input_signature=[
                tf.TensorSpec((None, *in_shape), tf.float32),
                tf.TensorSpec(in_shape, tf.float32),
                tf.TensorSpec((None,), tf.float32),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((), tf.float32),
            ],
            reduce_retracing=True,
        )
        def run(x, baseline, alphas, class_index, threshold):
            probs = model(x, training=False)
            cls = _resolve_class(probs, class_index, threshold)
            base_probs = model(tf.broadcast_to(baseline, tf.shape(x)), training=False)
            f_x = _class_prob(probs, cls)
            f_b = _class_prob(base_probs, cls)
            diff = x - baseline
            m1, n = tf.shape(alphas)[0], tf.shape(x)[0]
            path = baseline + tf.reshape(alphas, [-1, *ones]) * diff[None]
            flat = tf.reshape(path, tf.concat([[m1 * n], tf.shape(x)[1:]], 0))
            with tf.GradientTape() as tape:
                tape.watch(flat)
                score = _class_prob(model(flat, training=False), tf.tile(cls, [m1]))
            grads = tf.reshape(tape.gradient(score, flat), tf.shape(path))
            avg = tf.reduce_mean((grads[:-1] + grads[1:]) / 2.0, axis=0)
            return diff * avg, cls, probs, f_x, f_b

        self._run = run

    def __call__(
        self,
        x: np.ndarray,
        baseline: np.ndarray,
        class_index: np.ndarray,
        steps: int = 64,
        threshold: float = 0.5,
    ) -> dict:
        """Attributions (n, *input) plus the completeness check per instance."""
        if not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}]; received {steps}")
        alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
        attr, cls, probs, f_x, f_b = (
            t.numpy()
            for t in self._run(
                tf.convert_to_tensor(x, tf.float32),
                tf.convert_to_tensor(baseline, tf.float32),
                tf.convert_to_tensor(alphas),
                tf.convert_to_tensor(class_index, tf.int32),
                tf.constant(threshold, tf.float32),
            )
        )
        total = attr.reshape(len(attr), -1).sum(axis=1, dtype=np.float64)
        delta = f_x.astype(np.float64) - f_b.astype(np.float64)
        abs_err = np.abs(total - delta)
        rel_err = abs_err / np.maximum(np.abs(delta), 1e-6)
        return {
            "attributions": attr,
            "class": cls,
            "probs": probs,
            "f_x": f_x,
            "f_baseline": f_b,
            "sum": total,
            "delta": delta,
            "absolute_error": abs_err,
            "relative_error": rel_err,
        }


class Explainers:
    """The compiled attribution functions of one loaded model, each built on first use.

    Hold one per loaded version (the service keys it weakly by runtime); it references only
    the model, so an unloaded version is freed with its functions."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._gradcam: dict[str, GradCam] = {}
        self._ig: IntegratedGradients | None = None

    def gradcam(self, layer: str | None = None) -> GradCam:
        """Grad-CAM for ``layer`` (default: the last convolutional layer)."""
        layer = layer or last_conv_layer(self.model)
        with self._lock:
            if layer not in self._gradcam:
                self._gradcam[layer] = GradCam(self.model, layer)
            return self._gradcam[layer]

    def integrated_gradients(self) -> IntegratedGradients:
        with self._lock:
            if self._ig is None:
                self._ig = IntegratedGradients(self.model)
            return self._ig
