"""Recipe: an RVQ audio codec trained as a GAN (``recipe``), its config, its codebook
maintenance (``dead_codes``), what its evaluation writes for listening (``artifacts``), and the
one loader of trained codecs (``load``)."""

from aurora.tasks.codec.config import DISCRIMINATOR, CodecTrainConfig
from aurora.tasks.codec.load import CODEC, LoadedCodec, export_codec, load_codec, load_discriminator
from aurora.tasks.codec.recipe import CodecTask

__all__ = ["CODEC", "DISCRIMINATOR", "CodecTask", "CodecTrainConfig", "LoadedCodec", "export_codec",
           "load_codec", "load_discriminator"]
