"""MVDream's multi-view UNet in diffusers' terms.

MVDream denoises the ``num_frames`` views of one object together. It changes two things in a
Stable Diffusion UNet, and this module changes exactly those in ``UNet2DConditionModel``:

- **Camera embedding.** The flattened camera-to-world matrix of each view (16 numbers) goes
  through an MLP to the time-embedding width and is added to the time embedding. That is
  diffusers' ``class_embed_type="projection"`` embedding (linear, SiLU, linear), fed the camera
  instead of a class label; without a camera it is skipped.
- **3D self-attention.** Every self-attention layer attends across all views of a group: the
  tokens are folded ``(b f) l c -> b (f l) c`` around the self-attention only. Cross-attention
  and the feed-forward layers stay per view. It is an attention processor, so the weights are
  the 2D model's and a 2D checkpoint fine-tunes into a multi-view one. Attention slicing and
  xformers (``set_attention_slice``, ``enable_xformers_memory_efficient_attention``) replace every
  processor; here they become the inner attention of the multi-view processor, so the views still
  see each other.

With ``num_frames=1`` and no camera it computes what a ``UNet2DConditionModel`` with the same
weights computes. ``save_pretrained`` / ``from_pretrained`` round-trip it like any diffusers model.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from threestudio_like.utils.typing import Float, Tensor

CAMERA_DIM = 16  # a flattened 4 x 4 camera-to-world matrix


class MultiViewAttnProcessor:
    """Scaled dot-product attention; self-attention sees every view of its group.

    ``num_frames`` arrives through ``cross_attention_kwargs``. Cross-attention (a layer given
    ``encoder_hidden_states``) is left per view. ``inner`` computes the attention itself (torch's
    scaled dot product by default; a sliced or xformers processor when those options are on).
    """

    def __init__(self, inner: Optional[Any] = None) -> None:
        self.inner = inner if inner is not None else AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: Float[Tensor, "BF L C"],
        encoder_hidden_states: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        temb: Optional[Tensor] = None,
        num_frames: int = 1,
    ) -> Float[Tensor, "BF L C"]:
        if encoder_hidden_states is not None or num_frames == 1 or hidden_states.ndim != 3:
            return self._attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        views, tokens, channels = hidden_states.shape
        grouped = hidden_states.reshape(views // num_frames, num_frames * tokens, channels)
        out = self._attend(attn, grouped, None, attention_mask, temb)
        return out.reshape(views, tokens, channels)

    def _attend(
        self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor],
        attention_mask: Optional[Tensor], temb: Optional[Tensor],
    ) -> Tensor:
        if temb is None:  # diffusers' sliced processor takes no temb
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class MultiViewUNet2DConditionModel(UNet2DConditionModel):
    """``UNet2DConditionModel`` + camera embedding + 3D self-attention (see the module docstring).

    Called as ``unet(sample, t, encoder_hidden_states=..., camera=[B, 16], num_frames=n).sample``
    with the ``n`` views of each group adjacent in the batch. Build one with
    ``class_embed_type="projection", projection_class_embeddings_input_dim=16`` (``from_2d``
    does so from a 2D UNet).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_attn_processor(MultiViewAttnProcessor())

    # diffusers reads a model's config keys from its __init__ signature: keep the parent's.
    __init__.__signature__ = inspect.signature(UNet2DConditionModel.__init__)  # type: ignore[attr-defined]

    def set_attention_slice(self, slice_size: Any = "auto") -> None:
        """diffusers' attention slicing, inside the multi-view processor (slicing alone would make
        every self-attention per view)."""
        super().set_attention_slice(slice_size)
        self._keep_multiview_attention()

    def set_use_memory_efficient_attention_xformers(self, valid: bool, attention_op: Any = None) -> None:
        """xformers' attention (``enable_xformers_memory_efficient_attention``), inside the multi-view processor."""
        super().set_use_memory_efficient_attention_xformers(valid, attention_op)
        self._keep_multiview_attention()

    def _keep_multiview_attention(self) -> None:
        # the options set a plain processor on every Attention: it becomes the multi-view one's inner
        for module in self.modules():
            if isinstance(module, Attention) and not isinstance(module.processor, MultiViewAttnProcessor):
                module.set_processor(MultiViewAttnProcessor(module.processor))

    @property
    def camera_embedding(self) -> Optional[torch.nn.Module]:
        return self.class_embedding

    @classmethod
    def from_2d(cls, unet: UNet2DConditionModel, camera_dim: int = CAMERA_DIM) -> "MultiViewUNet2DConditionModel":
        """A multi-view UNet holding ``unet``'s weights, with a camera embedding that starts at zero
        (so it first computes exactly what ``unet`` computes): how MVDream starts from SD."""
        config = {**unet.config, "class_embed_type": "projection", "projection_class_embeddings_input_dim": camera_dim}
        model = cls.from_config(config)
        missing, unexpected = model.load_state_dict(unet.state_dict(), strict=False)
        if unexpected or any(not k.startswith("class_embedding.") for k in missing):
            raise ValueError(f"from_2d: the 2D UNet's weights do not fit (missing {missing}, unexpected {unexpected})")
        torch.nn.init.zeros_(model.class_embedding.linear_2.weight)
        torch.nn.init.zeros_(model.class_embedding.linear_2.bias)
        return model.to(unet.device) if unet.dtype == model.dtype else model.to(unet.device, unet.dtype)

    def get_class_embed(self, sample: Tensor, class_labels: Optional[Tensor]) -> Optional[Tensor]:
        if class_labels is None:  # no camera: the plain 2D model
            return None
        return self.class_embedding(class_labels.to(self.class_embedding.linear_1.weight.dtype)).to(sample.dtype)

    def forward(
        self,
        sample: Float[Tensor, "BF C H W"],
        timestep: Any,
        encoder_hidden_states: Float[Tensor, "BF L D"],
        camera: Optional[Float[Tensor, "BF camera_dim"]] = None,
        num_frames: int = 1,
        cross_attention_kwargs: Optional[dict[str, Any]] = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> UNet2DConditionOutput | tuple:
        if num_frames < 1 or sample.shape[0] % num_frames:
            raise ValueError(
                f"MultiViewUNet2DConditionModel: the batch ({sample.shape[0]}) must be whole groups of "
                f"num_frames={num_frames} views, each group's views adjacent."
            )
        if camera is not None and (camera.shape[0] != sample.shape[0] or camera.shape[-1] != self.config.projection_class_embeddings_input_dim):
            raise ValueError(
                f"MultiViewUNet2DConditionModel: camera must be [{sample.shape[0]}, "
                f"{self.config.projection_class_embeddings_input_dim}] (one flattened camera-to-world matrix per view), "
                f"got {list(camera.shape)}"
            )
        attention_kwargs = {**(cross_attention_kwargs or {}), "num_frames": num_frames}
        return super().forward(
            sample,
            timestep,
            encoder_hidden_states,
            class_labels=camera,
            cross_attention_kwargs=attention_kwargs,
            return_dict=return_dict,
            **kwargs,
        )


def mvdream_camera(c2w: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B 16"]:
    """MVDream's camera condition from the framework's camera-to-world matrices.

    The framework's cameras already use MVDream's (Blender) axes: z up, the camera looking down
    its -z axis. MVDream puts the camera on the unit sphere (translation normalised to unit
    length) and flattens the matrix row by row.
    """
    camera = c2w.clone()
    translation = camera[:, :3, 3]
    camera[:, :3, 3] = translation / (translation.norm(dim=-1, keepdim=True) + 1e-8)
    return camera.reshape(-1, 16)
