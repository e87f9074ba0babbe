"""`PSResNetBackbone`: the zoo's ResNet / ResNeXt / SE-ResNet as a keras-hub
`FeaturePyramidBackbone`."""

import warnings

import keras
from keras_hub.models import FeaturePyramidBackbone

from psconv_tf.hub import saving
from psconv_tf.hub import zoo_configs
from psconv_tf.models.resnet import ResNet
from psconv_tf.models.resnet import Stage


@keras.saving.register_keras_serializable(package="psconv_tf")
class PSResNetBackbone(saving.PresetLoading, saving.StagedSaving, FeaturePyramidBackbone):
    """ResNet, ResNeXt or SE-ResNet with standard or Poly-Scale 3x3 convs.

    The graph is the zoo's (`psconv_tf.models.resnet.ResNet`, torchvision
    layout and layer names, so `load_torch` reads PyTorch checkpoints into
    it) without the classifier. The output is the last stage's feature map;
    `pyramid_outputs` holds every stage's, "Pk" at stride 2**k: P2-P5 for the
    ImageNet stem, which keras-hub's RetinaNet and DeepLabV3 consume.

    Args:
        stackwise_num_blocks: residual blocks per stage.
        stackwise_num_filters: planes per stage (the block's output is 4x
            this for bottlenecks).
        stackwise_num_strides: stride of each stage's first block.
        block_type: "bottleneck" or "basic".
        stem: "imagenet" (7x7/2 conv, 3x3/2 max pool) or "cifar" (3x3 conv).
        stem_filters, groups, width_per_group, se_reduction: as for `ResNet`.
        conv: "standard", "psconv" (every 3x3 conv of the blocks a
            `PSConv2D`, the paper's layer), "dynamic" or "psconv_official"
            (`OfficialPSConv2D`, the authors' released grouped layer, as in
            the presets "ps_resnext50_32x4d_official", ...).
        pattern, cyclic, dilation_rate: of every `PSConv2D`.
        frozen_stages: -1 (none), 0 (the stem) or k (the stem and stages
            1..k) not trainable, their BatchNorm statistics frozen too.
        norm_eval: if True, every BatchNorm layer normalizes with its moving
            statistics, also in training; its scale and offset still train.
        image_shape: input shape without batch; spatial sizes may be None.
        dtype: dtype policy of every layer (e.g. "bfloat16").

    Use `PSResNetBackbone.from_zoo("ps_resnet50")` for a zoo architecture,
    or its named preset, `keras_hub.models.Backbone.from_preset("ps_resnet50",
    load_weights=False)`: every zoo name is one, a documented configuration
    without weights (none are hosted; with `load_weights=True` the backbone
    stays randomly initialised, with a warning).
    """

    def __init__(
        self,
        stackwise_num_blocks,
        stackwise_num_filters=(64, 128, 256, 512),
        stackwise_num_strides=(1, 2, 2, 2),
        block_type="bottleneck",
        stem="imagenet",
        stem_filters=64,
        groups=1,
        width_per_group=64,
        se_reduction=None,
        conv="standard",
        pattern=(1, 2, 1, 4),
        cyclic="both",
        dilation_rate=1,
        frozen_stages=-1,
        norm_eval=False,
        image_shape=(None, None, 3),
        dtype=None,
        **kwargs,
    ):
        lengths = {
            len(stackwise_num_blocks),
            len(stackwise_num_filters),
            len(stackwise_num_strides),
        }
        if len(lengths) != 1:
            raise ValueError(
                "Arguments `stackwise_num_blocks`, `stackwise_num_filters` and "
                "`stackwise_num_strides` must have one entry per stage. Received: "
                f"{list(stackwise_num_blocks)}, {list(stackwise_num_filters)}, "
                f"{list(stackwise_num_strides)}"
            )
        stages = tuple(
            Stage(blocks, planes, stride)
            for blocks, planes, stride in zip(
                stackwise_num_blocks, stackwise_num_filters, stackwise_num_strides
            )
        )
        graph = ResNet(
            stages,
            block=block_type,
            stem=stem,
            stem_filters=stem_filters,
            groups=groups,
            width_per_group=width_per_group,
            se_reduction=se_reduction,
            conv=conv,
            pattern=tuple(pattern),
            cyclic=cyclic,
            dilation_rate=dilation_rate,
            include_top=False,
            feature_maps=True,
            input_shape=tuple(image_shape),
            frozen_stages=frozen_stages,
            norm_eval=norm_eval,
            dtype=dtype,
        )
        features = graph.output  # {"Pk": stride 2**k}
        last = list(features)[-1]
        super().__init__(inputs=graph.inputs[0], outputs=features[last], dtype=dtype, **kwargs)
        self.pyramid_outputs = dict(features)

        self.stackwise_num_blocks = list(stackwise_num_blocks)
        self.stackwise_num_filters = list(stackwise_num_filters)
        self.stackwise_num_strides = list(stackwise_num_strides)
        self.block_type = block_type
        self.stem = stem
        self.stem_filters = stem_filters
        self.groups = groups
        self.width_per_group = width_per_group
        self.se_reduction = se_reduction
        self.conv = conv
        self.pattern = list(pattern)
        self.cyclic = cyclic
        self.dilation_rate = dilation_rate
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.image_shape = tuple(image_shape)

    @classmethod
    def from_zoo(cls, name, **kwargs):
        """The backbone of the zoo model `name` ("ps_resnet50", "resnext50_32x4d",
        ...), randomly initialized and named so; `kwargs` override its
        arguments."""
        return cls(**{"name": name, **zoo_configs.backbone_config(name), **kwargs})

    def get_config(self):
        config = super().get_config()
        config.update(
            stackwise_num_blocks=self.stackwise_num_blocks,
            stackwise_num_filters=self.stackwise_num_filters,
            stackwise_num_strides=self.stackwise_num_strides,
            block_type=self.block_type,
            stem=self.stem,
            stem_filters=self.stem_filters,
            groups=self.groups,
            width_per_group=self.width_per_group,
            se_reduction=self.se_reduction,
            conv=self.conv,
            pattern=self.pattern,
            cyclic=self.cyclic,
            dilation_rate=self.dilation_rate,
            frozen_stages=self.frozen_stages,
            norm_eval=self.norm_eval,
            image_shape=self.image_shape,
        )
        return config

    def load_weights(self, filepath, *args, **kwargs):
        """As Keras's. The weights file of a named preset holds no weights:
        the backbone keeps its random initialisation, with a warning."""
        name = zoo_configs.named_preset_of(filepath)
        if name is None:
            return super().load_weights(filepath, *args, **kwargs)
        warnings.warn(
            f"Preset {name!r} is a configuration without weights (none are hosted): "
            "the backbone is randomly initialised. Pass load_weights=False to say "
            "so; psconv_tf.load_torch reads the official PyTorch weights.",
            stacklevel=2,
        )
