"""The i-CLEVR diffusion pipeline: the label vocabulary, the conditional UNet and the DiffusionPipeline."""

from .conditional_unet import ConditionalUNet2DModel
from .pipeline_iclevr import ICLEVRPipeline, ICLEVRPipelineOutput
from .vocabulary import LabelError, LabelVocabulary

__all__ = ["ConditionalUNet2DModel", "ICLEVRPipeline", "ICLEVRPipelineOutput", "LabelError", "LabelVocabulary"]
