"""Facial-expression models in one readable file (Keras 3, TensorFlow backend).

Every model takes a float32 batch ``(N, 48, 48, 1)`` in ``[0, 1]`` (see
:mod:`ferflow.preprocess`) and returns float32 **logits** ``(N, num_classes)``; softmax is
applied by the loss and by the inference code. Pick one by name::

    model = build_model("ran", num_classes=8, width=32)

- ``ran``    Region Attention Network (Wang et al., IEEE TIP 2020). The face and K fixed
             region crops of the *image* go through ONE shared residual backbone; each
             feature F_i gets a self-attention weight μ_i = σ(q₀ᵀF_i); F_m = Σμ_iF_i / Σμ_i;
             a relation-attention weight ν_i = σ(q₁ᵀ[F_i : F_m]); the aggregate
             P = Σ μ_iν_i[F_i : F_m] / Σ μ_iν_i feeds the classifier. The region-biased loss
             max(0, margin − (max_{i≥1} μ_i − μ_0)) asks the most attended crop to beat the
             whole face by ``margin``. Crops are taken at native resolution (no upscale):
             a 2/3-side crop is a 32×32 input, so the network is fully convolutional.
- ``ran_fm`` The speed variant: the trunk of the backbone runs once on the face, the regions
             are cropped on its feature map and only the last ``head_stages`` stages run per
             region (``head_stages=0``: regions are pooled straight off the final map).
- ``cnn``    The 4-conv baseline of the well-known FER2013 Keras tutorial
             (conv 64-128-512-512 with BN/ReLU/max-pool/dropout, dense 256-512).

The backbone is a compact pre-activation-free ResNet for 48×48: a 3×3 stem at full
resolution, then ``len(depths)`` stages of basic blocks, each halving the resolution and
doubling the width (``width``, 2·``width``, ...). Convolution cost per stage is roughly
constant (≈ 5184·width² MACs per conv), so ``width`` is the main speed/accuracy dial.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import layers, ops

from ferflow.preprocess import INPUT_MEAN, INPUT_NAME, INPUT_SHAPE, INPUT_STD

# Fixed regions as (top, left, bottom, right) fractions of the face, after RAN's
# "fixed position cropping": left eye/brow, right eye/brow, nose and mouth.
DEFAULT_REGIONS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 2 / 3, 2 / 3),
    (0.0, 1 / 3, 2 / 3, 1.0),
    (1 / 3, 1 / 6, 1.0, 5 / 6),
)
DEFAULT_MARGIN = 0.02
"""Region-biased loss margin (the paper's 0.02; its reference code uses up to 0.1)."""

_SERIAL = "ferflow"

SAFE_STRIDED_1X1_CHANNELS = 16
"""Fewest input channels at which oneDNN's strided 1×1 weight gradient is safe.

TensorFlow 2.21's ``jit_1x1:avx512_core`` backward-weights kernel corrupts the heap at stride 2
with 1, 4, 8 or 12 input channels on even input sides of 48 px and up, on AVX-512 CPUs (measured
on an AMD EPYC without AMX; 16, 20, 24 and 40 channels pass up to 96 px). docs/training.md,
"oneDNN kernels", has the map."""


# ----------------------------------------------------------------------------------------
# building blocks


@keras.saving.register_keras_serializable(package=_SERIAL)
class ResidualBlock(layers.Layer):
    """Basic ResNet block: two 3×3 conv-BN, ReLU, projection shortcut when the shape changes."""

    def __init__(self, filters: int, stride: int = 1, weight_decay: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.stride, self.weight_decay = filters, stride, weight_decay
        reg = keras.regularizers.L2(weight_decay) if weight_decay else None
        conv = dict(padding="same", use_bias=False, kernel_regularizer=reg)
        self.conv1 = layers.Conv2D(filters, 3, strides=stride, **conv)
        self.bn1 = layers.BatchNormalization()
        self.conv2 = layers.Conv2D(filters, 3, **conv)
        self.bn2 = layers.BatchNormalization(gamma_initializer="zeros")  # identity at init
        self.proj = self.proj_bn = None
        self._in_channels: int | None = None

    def build(self, input_shape):
        self._in_channels = int(input_shape[-1])
        if self.stride != 1 or self._in_channels != self.filters:
            reg = keras.regularizers.L2(self.weight_decay) if self.weight_decay else None
            stride = 1 if self._subsample_first else self.stride
            self.proj = layers.Conv2D(self.filters, 1, strides=stride, use_bias=False, kernel_regularizer=reg)
            self.proj_bn = layers.BatchNormalization()
        mid = (input_shape[0], None, None, self.filters)
        self.conv1.build(input_shape)
        self.bn1.build(mid)
        self.conv2.build(mid)
        self.bn2.build(mid)
        if self.proj is not None:
            self.proj.build(input_shape)
            self.proj_bn.build(mid)

    @property
    def _subsample_first(self) -> bool:
        """Run the strided 1×1 projection as subsample + unit-stride 1×1 (see ``_shortcut``)."""
        return self.stride != 1 and (self._in_channels or 0) < SAFE_STRIDED_1X1_CHANNELS

    def _shortcut(self, x, training=None):
        """Projection shortcut: 1×1 conv at the block's stride, then batch norm.

        Below ``SAFE_STRIDED_1X1_CHANNELS`` input channels the strided conv is computed as
        ``x[:, ::s, ::s]`` followed by a unit-stride 1×1 conv: the same function with the same
        weights (a 1×1 kernel at stride s reads exactly those pixels), which keeps training off
        oneDNN's strided 1×1 weight-gradient kernel where it corrupts the heap. Wider inputs
        keep the strided conv, which is about 10 % faster here.
        """
        if self.proj is None:
            return x
        if self._subsample_first:
            x = x[:, :: self.stride, :: self.stride, :]
        return self.proj_bn(self.proj(x), training=training)

    def call(self, x, training=None):
        y = ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        return ops.relu(y + self._shortcut(x, training=training))

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        down = lambda s: None if s is None else -(-s // self.stride)  # noqa: E731
        return (n, down(h), down(w), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "stride": self.stride,
            "weight_decay": self.weight_decay,
        }


def backbone_stages(
    width: int = 32, depths: Sequence[int] = (2, 2, 2, 2), weight_decay: float = 0.0
) -> list[list[layers.Layer]]:
    """Stem + residual stages as lists of layers (stage 0 is the stem). Shared across calls."""
    stem = [
        layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv"),
        layers.BatchNormalization(name="stem_bn"),
        layers.ReLU(name="stem_relu"),
    ]
    stages = [stem]
    for s, depth in enumerate(depths):
        filters = width * 2**s
        stages.append(
            [
                ResidualBlock(
                    filters,
                    stride=2 if b == 0 else 1,
                    weight_decay=weight_decay,
                    name=f"stage{s + 1}_block{b + 1}",
                )
                for b in range(depth)
            ]
        )
    return stages


def run_layers(stack: Sequence[Sequence[layers.Layer]], x):
    for stage in stack:
        for layer in stage:
            x = layer(x)
    return x


def normalise(x):
    """The model's first layer: [0, 1] input → roughly zero mean, unit variance."""
    return layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="normalise")(x)


@keras.saving.register_keras_serializable(package=_SERIAL)
class FixedCrop(layers.Layer):
    """Crop a fixed (top, left, bottom, right) fractional box out of an NHWC tensor.

    Box edges are rounded to whole pixels/cells of the input it is applied to, so the same
    fractions work on the 48×48 image (``ran``) and on a 6×6 feature map (``ran_fm``).
    """

    def __init__(self, box: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.box = tuple(float(b) for b in box)
        if not (0 <= self.box[0] < self.box[2] <= 1 and 0 <= self.box[1] < self.box[3] <= 1):
            raise ValueError(f"region box {self.box} is not a (top, left, bottom, right) in [0, 1]")

    def _slices(self, h: int, w: int) -> tuple[int, int, int, int]:
        t, l, b, r = self.box  # noqa: E741
        top, left = round(t * h), round(l * w)
        bottom, right = max(round(b * h), top + 1), max(round(r * w), left + 1)
        return top, left, bottom, right

    def call(self, x):
        top, left, bottom, right = self._slices(x.shape[1], x.shape[2])
        return x[:, top:bottom, left:right, :]

    def compute_output_shape(self, input_shape):
        top, left, bottom, right = self._slices(input_shape[1], input_shape[2])
        return (input_shape[0], bottom - top, right - left, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "box": list(self.box)}


@keras.saving.register_keras_serializable(package=_SERIAL)
class StackRegions(layers.Layer):
    """List of R feature vectors ``(N, D)`` → ``(N, R, D)``."""

    def call(self, feats):
        return ops.stack(feats, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], len(input_shape), input_shape[0][-1])


def region_biased_loss(mu, margin: float = DEFAULT_MARGIN):
    """RAN's region-biased loss, batch mean of ``max(0, margin - (max_{i>=1} mu_i - mu_0))``.

    ``mu`` is ``(N, R)`` (or ``(N, R, 1)``) self-attention weights with the whole face at
    index 0 and the region crops after it.
    """
    mu = ops.reshape(mu, (ops.shape(mu)[0], -1))
    gap = ops.max(mu[:, 1:], axis=1) - mu[:, 0]
    return ops.mean(ops.relu(margin - gap))


@keras.saving.register_keras_serializable(package=_SERIAL)
class RegionAttention(layers.Layer):
    """Self-attention μ, relation-attention ν and the weighted aggregate P_RAN of RAN.

    Input ``(N, R, D)`` region features, index 0 = whole face. Output ``(N, 2D)``. Adds
    ``rb_weight * region_biased_loss(μ)`` to the model losses. Runs in float32 even under a
    mixed-precision policy (attention weights and the loss stay exact).
    """

    def __init__(self, margin: float = DEFAULT_MARGIN, rb_weight: float = 1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.margin, self.rb_weight = margin, rb_weight
        self.self_att = layers.Dense(1, activation="sigmoid", name="mu", dtype="float32")
        self.rel_att = layers.Dense(1, activation="sigmoid", name="nu", dtype="float32")

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.self_att.build((None, d))
        self.rel_att.build((None, 2 * d))

    def attend(self, feats):
        """Return ``(P, μ, ν)`` with μ, ν of shape ``(N, R)``."""
        feats = ops.cast(feats, "float32")
        mu = self.self_att(feats)  # (N, R, 1)
        f_m = ops.sum(mu * feats, axis=1, keepdims=True) / ops.sum(mu, axis=1, keepdims=True)
        joined = ops.concatenate([feats, ops.broadcast_to(f_m, ops.shape(feats))], axis=-1)
        nu = self.rel_att(joined)  # (N, R, 1)
        w = mu * nu
        p = ops.sum(w * joined, axis=1) / ops.sum(w, axis=1)
        return p, ops.squeeze(mu, -1), ops.squeeze(nu, -1)

    def call(self, feats):
        p, mu, _ = self.attend(feats)
        if self.rb_weight:
            self.add_loss(self.rb_weight * region_biased_loss(mu, self.margin))
        return p

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "rb_weight": self.rb_weight}


def _classifier(x, num_classes: int, dropout: float):
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    return layers.Dense(num_classes, dtype="float32", name="logits")(x)


def _input():
    return keras.Input(INPUT_SHAPE, name=INPUT_NAME, dtype="float32")


# ----------------------------------------------------------------------------------------
# models


def _attend_regions(x, tail: Sequence[Sequence[layers.Layer]], regions, margin: float, rb_weight: float):
    """Whole ``x`` plus its fixed region crops through the shared ``tail``, GAP, then RAN attention."""
    gap = layers.GlobalAveragePooling2D(name="gap")
    crops = [x] + [FixedCrop(box, name=f"region{i + 1}")(x) for i, box in enumerate(regions)]
    feats = StackRegions(name="stack_regions")([gap(run_layers(tail, c)) for c in crops])
    return RegionAttention(margin, rb_weight, name="region_attention")(feats)


def build_ran(
    num_classes: int,
    width: int = 32,
    depths: Sequence[int] = (2, 2, 2, 2),
    regions: Sequence[Sequence[float]] = DEFAULT_REGIONS,
    margin: float = DEFAULT_MARGIN,
    rb_weight: float = 1.0,
    dropout: float = 0.3,
    weight_decay: float = 0.0,
) -> keras.Model:
    """RAN with image crops: face + each region through the same backbone (cost ≈ 1 + Σ area)."""
    inp = _input()
    x = normalise(inp)
    stack = backbone_stages(width, depths, weight_decay)
    p = _attend_regions(x, stack, regions, margin, rb_weight)
    return keras.Model(inp, _classifier(p, num_classes, dropout), name="ran")


def build_ran_fm(
    num_classes: int,
    width: int = 32,
    depths: Sequence[int] = (2, 2, 2, 2),
    regions: Sequence[Sequence[float]] = DEFAULT_REGIONS,
    head_stages: int = 1,
    margin: float = DEFAULT_MARGIN,
    rb_weight: float = 1.0,
    dropout: float = 0.3,
    weight_decay: float = 0.0,
) -> keras.Model:
    """RAN cropping regions on the trunk's feature map; only ``head_stages`` stages per region."""
    if not 0 <= head_stages <= len(depths):
        raise ValueError(f"head_stages={head_stages} must be in 0..{len(depths)}")
    inp = _input()
    stack = backbone_stages(width, depths, weight_decay)
    split = len(stack) - head_stages
    fmap = run_layers(stack[:split], normalise(inp))
    p = _attend_regions(fmap, stack[split:], regions, margin, rb_weight)
    return keras.Model(inp, _classifier(p, num_classes, dropout), name="ran_fm")


def build_resnet(
    num_classes: int,
    width: int = 32,
    depths: Sequence[int] = (2, 2, 2, 2),
    dropout: float = 0.3,
    weight_decay: float = 0.0,
) -> keras.Model:
    """The bare backbone + GAP + classifier (the ablation without region attention)."""
    inp = _input()
    x = run_layers(backbone_stages(width, depths, weight_decay), normalise(inp))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, _classifier(x, num_classes, dropout), name="resnet")


def build_cnn(num_classes: int, dropout: float = 0.25, **_: Any) -> keras.Model:
    """The classic FER2013 Keras-tutorial CNN (≈ 4.5 M parameters, ≈ 290 M MACs)."""
    inp = _input()
    x = normalise(inp)
    for i, (filters, k) in enumerate([(64, 3), (128, 5), (512, 3), (512, 3)], start=1):
        x = layers.Conv2D(filters, k, padding="same", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    for i, units in enumerate([256, 512], start=1):
        x = layers.Dense(units, name=f"dense{i}")(x)
        x = layers.BatchNormalization(name=f"dense_bn{i}")(x)
        x = layers.ReLU()(x)
        x = layers.Dropout(dropout)(x)
    return keras.Model(inp, layers.Dense(num_classes, dtype="float32", name="logits")(x), name="cnn")


MODELS: dict[str, Callable[..., keras.Model]] = {
    "ran": build_ran,
    "ran_fm": build_ran_fm,
    "resnet": build_resnet,
    "cnn": build_cnn,
}


def build_model(name: str, num_classes: int, **cfg: Any) -> keras.Model:
    """Build a registered model by name; ``cfg`` goes to its builder (unknown keys raise)."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return builder(num_classes, **cfg)


def attention_weights(model: keras.Model, x) -> tuple[Any, Any]:
    """μ and ν ``(N, R)`` of a RAN model for input batch ``x`` (index 0 = whole face)."""
    att = model.get_layer("region_attention")
    feats = keras.Model(model.input, att.input)(x, training=False)
    _, mu, nu = att.attend(feats)
    return mu, nu
