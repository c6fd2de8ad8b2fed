"""Concept vocabularies for HRV construction, and encoding each concept word on its own.

Two vocabularies ship: :func:`shapes_concepts` for the ShapesWorld models (their whole caption
vocabulary of colours, shapes, sizes and relations) and :data:`DEFAULT_CONCEPTS` for real models
(written for attnscope: 21 concepts of 10 everyday words each). Any ``{concept: [words]}`` works.

Example:
    >>> sorted(shapes_concepts())
    ['colour', 'relation', 'shape', 'size']
    >>> len(DEFAULT_CONCEPTS), {len(words) for words in DEFAULT_CONCEPTS.values()}
    (21, {10})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

DEFAULT_CONCEPTS: dict[str, list[str]] = {
    "colour": ["scarlet", "teal", "magenta", "beige", "turquoise", "maroon", "indigo", "amber", "ivory", "charcoal"],
    "shape": ["sphere", "cube", "pyramid", "cylinder", "hexagon", "spiral", "crescent", "ring", "cone", "zigzag"],
    "material": ["marble", "velvet", "copper", "porcelain", "leather", "granite", "wool", "glass", "steel", "cork"],
    "pattern": ["striped", "checkered", "plaid", "paisley", "speckled", "floral", "herringbone", "mottled",
                "woven", "dotted"],
    "animal": ["otter", "giraffe", "penguin", "fox", "owl", "tortoise", "zebra", "hedgehog", "dolphin", "camel"],
    "plant": ["fern", "sunflower", "orchid", "ivy", "maple", "lily", "palm", "clover", "willow", "lotus"],
    "food": ["pizza", "croissant", "sushi", "noodles", "pancake", "burrito", "cupcake", "dumpling", "salad", "pretzel"],
    "person": ["chef", "astronaut", "nurse", "knight", "sailor", "grandmother", "toddler", "dancer", "firefighter",
               "musician"],
    "vehicle": ["tractor", "scooter", "submarine", "helicopter", "tram", "canoe", "van", "rocket", "sled", "jeep"],
    "building": ["cathedral", "lighthouse", "skyscraper", "cottage", "barn", "castle", "pagoda", "igloo",
                 "warehouse", "temple"],
    "furniture": ["armchair", "bookshelf", "wardrobe", "sofa", "stool", "desk", "bench", "hammock", "dresser",
                  "cradle"],
    "clothing": ["scarf", "raincoat", "sneakers", "tuxedo", "kimono", "hoodie", "sombrero", "mittens", "overalls",
                 "sandals"],
    "weather": ["snowy", "rainy", "foggy", "stormy", "sunny", "windy", "cloudy", "hail", "drizzle", "blizzard"],
    "time of day": ["dawn", "sunrise", "noon", "dusk", "sunset", "midnight", "twilight", "evening", "morning",
                    "night"],
    "lighting": ["backlit", "candlelit", "neon", "spotlight", "silhouette", "moonlit", "glowing", "shadowy", "dim",
                 "bright"],
    "art style": ["watercolor", "cubism", "impressionism", "anime", "sketch", "baroque", "woodcut", "mosaic",
                  "cartoon", "surrealism"],
    "camera view": ["closeup", "aerial", "panoramic", "macro", "overhead", "fisheye", "portrait", "telephoto",
                    "isometric", "profile"],
    "place": ["desert", "glacier", "canyon", "meadow", "jungle", "harbor", "volcano", "swamp", "prairie", "reef"],
    "emotion": ["joyful", "angry", "sleepy", "surprised", "anxious", "calm", "proud", "lonely", "playful", "grumpy"],
    "number": ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "dozen"],
    "size": ["tiny", "huge", "giant", "miniature", "enormous", "massive", "petite", "colossal", "small", "tall"],
}


def shapes_concepts() -> dict[str, list[str]]:
    """The concepts of the shipped ShapesWorld models, from the dataset's own vocabulary."""
    from ..datasets.shapes import COLORS, RELATIONS, SHAPES, SIZES

    return {"colour": list(COLORS), "shape": list(SHAPES), "size": list(SIZES), "relation": list(RELATIONS)}


def check_concepts(concepts: Mapping[str, Any]) -> dict[str, list[str]]:
    """``concepts`` as ``{name: [words]}``, or a one-line error that says what is wrong."""
    if not isinstance(concepts, Mapping) or len(concepts) < 2:
        raise ValueError("concepts= needs at least two concepts as {name: [words]}, e.g. "
                         "{'colour': ['red', 'blue'], 'shape': ['circle', 'square']}.")
    out = {}
    for name, words in concepts.items():
        words = [words] if isinstance(words, str) else [str(w).strip() for w in words]
        if not words or not all(words):
            raise ValueError(f"Concept {name!r} needs at least one non-empty example word.")
        out[str(name)] = words
    return out


@dataclass
class EncodedWords:
    """Every concept word encoded on its own.

    Attributes:
        embeddings: ``(total word tokens, dim)``: the words' token embeddings, one word after another.
        spans: ``{concept: [(start, stop) rows of each word]}``.
        start: ``(dim,)`` the start token's embedding, or None for a tokenizer without one.
    """

    embeddings: torch.Tensor
    spans: dict[str, list[tuple[int, int]]]
    start: torch.Tensor | None


def encode_words(pipe: Any, concepts: Mapping[str, list[str]], tokenizer: Any) -> EncodedWords:
    """Encode each word alone with the pipeline's own prompt encoder; keep its tokens without start/end.

    A word the tokenizer splits keeps all its tokens. Embeddings are exactly what the denoiser's
    cross-attention sees for a prompt made of that word (CLIP's causal mask makes padding irrelevant).
    """
    words = [w for ws in concepts.values() for w in ws]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    positions = []
    for word in words:
        ids = tokenizer(word).input_ids
        kept = [i for i, t in enumerate(ids) if t not in special]
        if not kept:
            raise ValueError(f"The concept word {word!r} has no tokens of its own; remove it or spell it out.")
        positions.append(kept)
    with torch.no_grad():
        device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", "cpu")
        embeds = pipe.encode_prompt(prompt=words, device=device, num_images_per_prompt=1,
                                    do_classifier_free_guidance=False)[0]
    first_ids = tokenizer(words[0]).input_ids
    start = embeds[0, 0].float() if first_ids and first_ids[0] in special else None
    rows, spans, offset, i = [], {}, 0, 0
    for name, ws in concepts.items():
        spans[name] = []
        for _ in ws:
            rows.append(embeds[i, positions[i]].float())
            spans[name].append((offset, offset + len(positions[i])))
            offset += len(positions[i])
            i += 1
    return EncodedWords(torch.cat(rows), spans, start)
