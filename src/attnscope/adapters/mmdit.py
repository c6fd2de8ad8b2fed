"""What SD3 and Flux share: multi-modal diffusion transformers (MM-DiT) with joint attention.

An MM-DiT runs image and prompt tokens through one attention per block (*joint attention*): the
queries and keys of one SDPA call hold both. The family adapters (:mod:`.sd3`, :mod:`.flux`) say
in which order (:attr:`MMDiTAdapter.image_first`), how to read the latent grid and how to encode a
prompt; this base turns that into the core's hooks:

- :meth:`token_layout`: the image queries and the prompt keys of a joint-attention call, so DAAM
  reads the image-query → prompt-key block of probabilities normalised over *all* keys, exactly as
  the model computes them;
- :meth:`layer_grid`: the patch grid (latent / patch size), from the configs, never ``sqrt``;
- the **text stream** of a joint block (:meth:`text_stream_in`, :meth:`text_stream_out`): extra
  tokens (ConceptAttention's concepts) pushed through a block's text-side weights — adaLN
  modulation, QKV projections, QK-norm, output projection and MLP — without touching the block;
- :meth:`concept_tokens`: words encoded the way the pipeline encodes a prompt, every token kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..core.layers import LayerInfo
from ..core.prompt import SegmentIds, content_end
from .base import Adapter


class ConceptEncodingError(ValueError):
    """A concept word the pipeline's tokenizers cannot encode."""


@dataclass
class ConceptTokens:
    """Words encoded for the concept stream.

    Attributes:
        features: ``(tokens, joint_attention_dim)`` text-encoder features, the context embedder's input.
        owner: per token, the index of the word it belongs to.
        strings: per token, its string as its tokenizer names it; ``sources``: that tokenizer's segment.
    """

    features: torch.Tensor
    owner: list[int]
    strings: list[str]
    sources: list[str]


class MMDiTAdapter(Adapter):
    """Shared base of the SD3 and Flux adapters (not registered itself)."""

    #: Joint attention orders its sequence [image ; text] (SD3) or [text ; image] (Flux).
    image_first: bool = True
    #: The transformer's attribute lists of blocks: (double-stream, single-stream).
    block_lists: tuple[str, ...] = ("transformer_blocks",)

    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    def patch_size(self) -> int:
        """Latent pixels per side of one image token."""
        return int(self.pipe.transformer.config.patch_size)

    # -- layers ----------------------------------------------------------------------------------
    def attention_layers(self) -> list[tuple[LayerInfo, torch.nn.Module]]:
        """Every block's joint attention (``<blocks>.<i>.attn``), double-stream blocks first.

        SD3.5's second, image-only attention (``attn2``) is a different module and never traced.
        """
        found = []
        for attr in self.block_lists:
            for i, block in enumerate(getattr(self.pipe.transformer, attr, None) or []):
                name = f"{attr}.{i}.attn"
                kind = "joint" if attr == self.block_lists[0] else "single"
                found.append((LayerInfo(name=name, index=0, heads=int(block.attn.heads), block=kind), block.attn))
        return found

    def joint_blocks(self) -> list[tuple[LayerInfo, torch.nn.Module]]:
        """The double-stream blocks (text and image weights apart), with their attention's LayerInfo."""
        blocks = getattr(self.pipe.transformer, self.block_lists[0])
        return [(info, blocks[int(re.findall(r"\d+", info.name)[0])])
                for info, _ in self.attention_layers() if info.block == "joint"]

    def layer_grid(self, layer: LayerInfo, pixels: int, latent_hw: tuple[int, int]) -> tuple[int, int, int]:
        """Every block sees the latent cut into ``patch × patch`` tokens, row-major.

        >>> class _T: config = type("C", (), {"patch_size": 2})
        >>> a = MMDiTAdapter(type("P", (), {"transformer": _T})())
        >>> a.layer_grid(None, 8 * 12, (16, 24))
        (8, 12, 2)
        """
        p = self.patch_size()
        h, w = latent_hw[0] // p, latent_hw[1] // p
        if h * w != pixels:
            raise ValueError(f"A joint-attention layer has {pixels} image tokens, not the {h}x{w} patches of the "
                             f"{latent_hw[0]}x{latent_hw[1]} latent; this denoiser needs its own adapter.")
        return h, w, p

    def token_layout(self, layer: LayerInfo, queries: int, keys: int, latent_hw: tuple[int, int]) -> tuple[slice, slice]:
        """Image queries and prompt keys of a joint call: the image tokens are the latent's patches,
        every other key is a prompt token.

        >>> class _T: config = type("C", (), {"patch_size": 2})
        >>> a = MMDiTAdapter(type("P", (), {"transformer": _T})())
        >>> a.token_layout(None, 16 + 5, 16 + 5, (8, 8))       # SD3: [image ; text]
        (slice(0, 16, None), slice(16, 21, None))
        """
        p = self.patch_size()
        image = (latent_hw[0] // p) * (latent_hw[1] // p)
        if image > queries or queries != keys:
            raise ValueError(f"A joint-attention call with {queries} queries and {keys} keys cannot hold the "
                             f"{image} image tokens of a {latent_hw[0]}x{latent_hw[1]} latent.")
        text = keys - image
        if self.image_first:
            return slice(0, image), slice(image, keys)
        return slice(text, keys), slice(0, text)

    def processor_hint(self) -> str:
        return ("reset the transformer's attention processors to diffusers' defaults "
                "(pipe.transformer.set_default_attn_processor() or the family's own processor) before tracing.")

    def size_multiple(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 1) or 1) * self.patch_size()

    # -- one denoising pass on given images (real images) --------------------------------------------
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latents of images in [-1, 1] ``(n, 3, H, W)``: the VAE's mean, shifted and scaled as the
        pipelines undo it before decoding."""
        vae = self.pipe.vae
        with torch.no_grad():
            latents = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mean
        return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor

    def noise_latents(self, latents: torch.Tensor, noise: torch.Tensor, level: float):
        """Flow matching: ``x = (1 - σ)·latents + σ·noise`` at ``σ = level``; returns ``(x, σ)``."""
        sigma = float(level)
        return (1 - sigma) * latents + sigma * noise.to(latents), sigma

    # -- prompts ---------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str], lengths: dict[str, int] | None = None) -> torch.Tensor:
        """``(prompts, text tokens, joint_attention_dim)``: the features the pipeline feeds the
        transformer's context embedder for ``prompts`` (no guidance); ``lengths``: ids per prompt
        segment (by name) where the pipeline lets them be chosen (its T5 ``max_sequence_length``)."""
        raise NotImplementedError

    def encode_words(self, words: list[str], lengths: dict[str, int] | None = None) -> tuple[torch.Tensor, list[SegmentIds]]:
        """Encode ``words`` as prompts of one word each; returns their features and the ids every
        prompt segment's encoder saw (read with temporary forward pre-hooks)."""
        seen: dict[str, torch.Tensor] = {}
        handles = []

        def recorder(name):
            def hook(module, args, kwargs):
                ids = args[0] if args else kwargs.get("input_ids")
                if name not in seen and torch.is_tensor(ids):
                    seen[name] = ids.detach().cpu()
            return hook

        segments = self.prompt_segments()
        for seg in segments:
            if seg.encoder is not None:
                handles.append(seg.encoder.register_forward_pre_hook(recorder(seg.name), with_kwargs=True))
        try:
            with torch.no_grad():
                features = self.encode_prompts(list(words), lengths or {})
        finally:
            for handle in handles:
                handle.remove()
        return features, [SegmentIds(s.name, s.tokenizer, seen[s.name]) for s in segments if s.name in seen]

    def check_words(self, words: list[str]) -> None:
        """Raise :class:`ConceptEncodingError` (one line) for a word that a prompt tokenizer maps to
        its unknown token or to no token at all; tokenizers only, no encoder runs."""
        for seg in self.prompt_segments():
            tokenizer = seg.tokenizer
            unknown = getattr(tokenizer, "unk_token_id", None)
            framing = {getattr(tokenizer, f"{t}_token_id", None) for t in ("bos", "eos", "pad")}
            for word in words:
                ids = tokenizer(word).input_ids
                if unknown not in framing and unknown in ids:
                    raise ConceptEncodingError(f"Concept {word!r} contains characters the {seg.name} tokenizer cannot "
                                               f"encode (it becomes {tokenizer.unk_token}); use another word.")
                if all(i in tokenizer.all_special_ids for i in ids):
                    raise ConceptEncodingError(f"Concept {word!r} encodes to no token; use a non-empty word.")

    def concept_tokens(self, words: list[str], lengths: dict[str, int] | None = None) -> ConceptTokens:
        """Every token of every word, in every prompt segment (SD3: its CLIP and its T5 tokens).

        A word is encoded as a prompt on its own, as the pipeline encodes a prompt (with ``lengths``:
        padded to the same lengths as the traced prompt), and all its content tokens are kept (none
        is cut): start, end and padding positions are dropped.
        """
        self.check_words(words)
        features, segments = self.encode_words(words, lengths)
        rows, owner, strings, sources = [], [], [], []
        for w in range(len(words)):
            start = 0
            for seg in segments:
                ids = seg.ids[w].tolist()
                tokens = seg.tokenizer.convert_ids_to_tokens(ids)
                special = seg.special()
                content = [i for i in range(content_end(ids, seg.tokenizer)) if tokens[i] not in special]
                for i in content:
                    rows.append(features[w, start + i])
                    owner.append(w)
                    strings.append(tokens[i])
                    sources.append(seg.name)
                start += seg.length
        return ConceptTokens(torch.stack(rows), owner, strings, sources)

    # -- the text stream of a joint block ----------------------------------------------------------
    def block_conditioning(self, args: tuple, kwargs: dict) -> dict:
        """What a joint block's forward receives that the text stream needs: ``temb`` (and
        ``rotary`` for families with rotary position embeddings)."""
        temb = kwargs["temb"] if "temb" in kwargs else args[2]
        return {"temb": temb}

    def embed_text_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Text-encoder features → the transformer's text-stream width (its context embedder)."""
        embedder = self.pipe.transformer.context_embedder
        weight = next(embedder.parameters())
        return embedder(features.to(device=weight.device, dtype=weight.dtype))

    def text_stream_in(self, block: torch.nn.Module, tokens: torch.Tensor, conditioning: dict):
        """Modulate ``tokens`` ``(batch, n, dim)`` with the block's text-side adaLN and project them to
        ``q, k, v`` ``(batch, heads, n, head_dim)`` (QK-norm included). Returns ``(q, k, v, carry)``."""
        temb = conditioning["temb"]
        if getattr(block, "context_pre_only", False):  # SD3's last block: continuous adaLN, no update
            normed, carry = block.norm1_context(tokens, temb), None
        else:
            normed, gate, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(tokens, emb=temb)
            carry = (gate, shift_mlp, scale_mlp, gate_mlp)
        attn = block.attn
        heads = int(attn.heads)

        def project(linear, norm):
            x = linear(normed)
            x = x.view(x.shape[0], x.shape[1], heads, -1)  # (batch, n, heads, head_dim)
            return norm(x) if norm is not None else x

        q = project(attn.add_q_proj, getattr(attn, "norm_added_q", None))
        k = project(attn.add_k_proj, getattr(attn, "norm_added_k", None))
        v = project(attn.add_v_proj, None)
        q, k = self.rotate_text_tokens(q, k, conditioning)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), carry

    def rotate_text_tokens(self, q: torch.Tensor, k: torch.Tensor, conditioning: dict):
        """Position embedding of extra text-stream tokens ``(batch, n, heads, head_dim)`` (none here)."""
        return q, k

    def text_stream_out(self, block: torch.nn.Module, tokens: torch.Tensor, attended: torch.Tensor, carry) -> torch.Tensor:
        """The block's text-side residual update of ``tokens`` given their attention output
        ``attended`` ``(batch, n, heads · head_dim)`` before the output projection."""
        if carry is None:
            return tokens
        gate, shift_mlp, scale_mlp, gate_mlp = carry
        tokens = tokens + gate.unsqueeze(1) * block.attn.to_add_out(attended)
        normed = block.norm2_context(tokens) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return tokens + gate_mlp.unsqueeze(1) * block.ff_context(normed)
