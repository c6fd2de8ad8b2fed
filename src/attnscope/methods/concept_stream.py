"""ConceptAttention's concept stream: concept tokens as a third stream through the joint blocks.

``attnscope.trace(pipe, concepts=["circle", "square", "background"])`` creates a
:class:`ConceptStream` (a :class:`~attnscope.core.extension.TraceExtension`). At every denoising
call the trace reads it:

1. the concepts' text-encoder features go through the transformer's context embedder: one stream
   token per concept token, per image. Each concept is encoded as the pipeline encodes a one-word
   prompt, padded to the traced prompt's lengths (so T5, which attends to its padding, sees the
   same context size), once per pipeline call, at its first denoising call; *every* token of a
   multi-token concept is kept. The words are checked against the tokenizers when the trace is
   created;
2. in each double-stream block, the stream is modulated, projected and QK-normed with the block's
   **text-stream** weights (the adapter's ``text_stream_in``), attends to ``[concept keys ; image
   keys]`` — the image keys and values exactly as the model computed them at its SDPA call — and is
   updated through the text stream's output projection and MLP (``text_stream_out``), keeping its
   own residual across blocks. Prompt and image tokens never see it: the image is bit-for-bit the
   untraced one;
3. per block, four concept × patch score maps are summed over calls (see :data:`SPACES`), each both
   as raw concept logits and after a softmax over concepts at every patch.

A concept of several tokens scores as the **mean of its tokens' scores** (its tokens attend, and
are attended to, as separate stream members; scores are linear in each token's vector, so this is
the score of the tokens' mean vector); the softmax over concepts comes after that mean.
The modulation uses the block's own conditioning (timestep and the prompt's pooled vector); the
reference code feeds a zero pooled vector instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.extension import TraceExtension

#: Score spaces, each a (concepts × patches) map per block and call:
#: ``output``: concept · image attention outputs before the output projection, heads concatenated
#: (ConceptAttention, the paper's method); ``value``: the same on the value vectors (the paper's
#: value-space ablation); ``cross_attention``: image queries · concept keys per head, softmax over
#: concepts per head, mean over heads (the paper's cross-attention baseline); ``query``: image
#: queries · concept queries, heads concatenated (what the reference *code* computes as its
#: "cross attention" maps).
SPACES = ("output", "value", "cross_attention", "query")


def check_concepts(concepts) -> list[str]:
    """``concepts`` as a list of distinct non-empty words, or a one-line ValueError saying what to pass."""
    if isinstance(concepts, str):
        concepts = [concepts]
    concepts = list(concepts or [])
    if not concepts:
        raise ValueError("concepts= is empty; pass the words to locate, e.g. concepts=['cat', 'sky', 'background'].")
    if not all(isinstance(c, str) and c.strip() for c in concepts):
        raise ValueError(f"concepts= must be non-empty words (got {concepts!r}).")
    seen = [c for i, c in enumerate(concepts) if c.strip().casefold() in [d.strip().casefold() for d in concepts[:i]]]
    if seen:
        raise ValueError(f"concepts= lists {sorted(set(seen))} more than once; give each concept once.")
    return [c.strip() for c in concepts]


class ConceptStream(TraceExtension):
    """The ``concepts=`` option of :func:`attnscope.trace` (see the module docstring)."""

    name = "concept_attention"

    def __init__(self, trace, concepts):
        self.concepts = check_concepts(concepts)
        adapter = trace.adapter
        if not hasattr(adapter, "joint_blocks"):
            raise ValueError(f"ConceptAttention needs a multi-modal diffusion transformer (SD3, SD3.5, Flux); "
                             f"this {adapter.family} pipeline has no joint attention blocks — use tc.daam() instead.")
        self.adapter = adapter
        adapter.check_words(self.concepts)
        self.blocks = adapter.joint_blocks()
        self.tokens = None
        self.to_concepts = None
        self._encoded: dict = {}
        self.trace = None
        self._state = None
        self._conditioning: dict = {}

    def install(self, trace) -> None:
        self.trace = trace
        trace.hook(self.adapter.denoiser().register_forward_pre_hook(trace.timed(self._on_call)))
        for info, block in self.blocks:
            trace.hook(block.register_forward_pre_hook(trace.timed(self._on_block), with_kwargs=True))
            trace.tap(block.attn, info, self._observer(info, block))

    # -- per denoising call ------------------------------------------------------------------------
    def _on_call(self, module, args) -> None:
        gen = self.trace.active_generation()
        self._state = None
        if gen is None:
            return
        if self.name not in gen.extras:
            self._encode(gen)
            gen.extras[self.name] = self._new_record()
        embedded = self.adapter.embed_text_tokens(self.tokens.features)
        self._state = embedded.unsqueeze(0).expand(gen.n_images, -1, -1)

    def _encode(self, gen) -> None:
        """Encode the concepts padded like ``gen``'s prompt (cached per set of lengths)."""
        if gen.segments:
            lengths = {s.name: s.length for s in gen.segments}
        elif gen.prompt_ids is not None:
            lengths = {self.adapter.prompt_segments()[0].name: int(gen.prompt_ids.shape[-1])}
        else:
            lengths = {}
        key = tuple(sorted(lengths.items()))
        if key not in self._encoded:
            with self.trace.paused():
                self._encoded[key] = self.adapter.concept_tokens(self.concepts, lengths)
        self.tokens = self._encoded[key]
        owner = torch.tensor(self.tokens.owner)
        counts = torch.bincount(owner, minlength=len(self.concepts)).float()
        self.to_concepts = F.one_hot(owner, len(self.concepts)).float() / counts  # a token joins its concept's mean

    def _new_record(self) -> dict:
        return {"concepts": list(self.concepts), "token_owner": list(self.tokens.owner),
                "token_strings": list(self.tokens.strings), "token_sources": list(self.tokens.sources),
                "soft": {s: {} for s in SPACES}, "logits": {s: {} for s in SPACES}, "calls": {}, "grid": {},
                "per_step": {s: {} for s in SPACES}, "steps": []}

    def _on_block(self, module, args, kwargs) -> None:
        if self._state is not None:
            self._conditioning = self.adapter.block_conditioning(args, kwargs)

    def _observer(self, info, block):
        def observe(query, key, value, mask, scale, output):
            if self._state is not None:
                self._step(info, block, query, key, value, scale, output)

        return observe

    # -- one joint block -----------------------------------------------------------------------------
    def _step(self, info, block, query, key, value, scale, output) -> None:
        gen = self.trace.active_generation()
        rows = gen.conditional_rows()
        image, _ = self.adapter.token_layout(info, int(query.shape[-2]), int(key.shape[-2]), gen.latent_hw)
        grid = self.adapter.layer_grid(info, image.stop - image.start, gen.latent_hw)[:2]
        batch = query.shape[0]
        cond = {k: (v[rows] if torch.is_tensor(v) and v.dim() and v.shape[0] == batch else v)
                for k, v in self._conditioning.items()}
        stream = self._state.to(query.dtype)
        qc, kc, vc, carry = self.adapter.text_stream_in(block, stream, cond)
        qx, kx, vx = (t[rows][..., image, :] for t in (query, key, value))
        ox = output[rows][..., image, :]  # the image tokens' attention outputs, (n, heads, patches, dim)
        oc = F.scaled_dot_product_attention(qc, torch.cat([kc, kx], 2), torch.cat([vc, vx], 2), scale=scale)
        flat = lambda t: t.transpose(1, 2).flatten(2).float()  # noqa: E731  (n, tokens, heads·dim)
        token_scores = {
            "output": flat(oc) @ flat(ox).transpose(1, 2),
            "value": flat(vc) @ flat(vx).transpose(1, 2),
            "query": flat(qc) @ flat(qx).transpose(1, 2),
        }
        to_concepts = self.to_concepts.to(ox.device)
        logits = {s: torch.einsum("ntp,tc->ncp", t, to_concepts) for s, t in token_scores.items()}
        soft = {s: l.softmax(1) for s, l in logits.items()}
        heads = torch.einsum("nhpd,nhtd->nhtp", qx.float(), kc.float()) * scale  # image queries · concept keys
        head_logits = torch.einsum("nhtp,tc->nhcp", heads, to_concepts)
        logits["cross_attention"] = head_logits.mean(1)
        soft["cross_attention"] = head_logits.softmax(2).mean(1)
        self._accumulate(gen, info.name, grid, logits, soft)
        self._state = self.adapter.text_stream_out(block, stream, flat(oc).to(stream.dtype), carry)

    def _accumulate(self, gen, layer: str, grid, logits: dict, soft: dict) -> None:
        record = gen.extras[self.name]
        record["grid"][layer] = list(grid)
        record["calls"][layer] = record["calls"].get(layer, 0) + 1
        if not record["steps"] or record["steps"][-1] != gen.call_index:
            record["steps"].append(gen.call_index)
        for space in SPACES:
            for kind, values in (("logits", logits), ("soft", soft)):
                total = record[kind][space].get(layer)
                current = values[space].to("cpu")
                record[kind][space][layer] = current.clone() if total is None else total.add_(current)
            if self.trace.keep_steps:
                record["per_step"][space].setdefault(layer, []).append(soft[space].to("cpu"))
