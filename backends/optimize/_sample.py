"""The fixed samples variants are measured on: sentences (text encoders), labelled images
and captions (CLIP).

Agreement needs sentences that spread over many topics and lengths (pairwise similarities from
near 0 to near 1), or a Spearman correlation only ranks noise; speed needs realistic lengths
(a short query to a long paragraph). The sample is fixed, so reports compare across runs.
"""

from __future__ import annotations

import io
import random

_SENTENCES = (
    "How do I reset my password?",
    "The quarterly revenue grew by twelve percent compared with last year.",
    "A small red fox jumped over the sleeping dog in the garden.",
    "Where is the nearest train station?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The match was postponed because of heavy rain in the afternoon.",
    "Add two cups of flour and mix until the dough is smooth.",
    "Our API returns a 429 status code when the rate limit is exceeded.",
    "She played a Chopin nocturne at the evening recital.",
    "The patient reported mild headaches and occasional dizziness.",
    "Cheap flights from Paris to Lisbon in October",
    "The central bank kept interest rates unchanged this month.",
    "Kubernetes restarts a container when its liveness probe fails.",
    "My laptop battery drains very quickly after the latest update.",
    "The museum opens a new exhibition of impressionist paintings on Friday.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Please cancel my subscription and refund the last payment.",
    "The hikers reached the summit just before sunset.",
    "A gradient descent step moves the weights against the gradient of the loss.",
    "best running shoes for flat feet",
    "The novel follows three generations of a family in a fishing village.",
    "Turn left at the second traffic light and park behind the bakery.",
    "The vaccine trial enrolled over thirty thousand volunteers.",
    "This blender is loud but crushes ice in seconds.",
    "The treaty was signed in 1648 and ended the Thirty Years' War.",
    "Our team will migrate the database to the new cluster on Sunday night.",
    "Cats sleep for up to sixteen hours a day.",
    "The orchestra tuned their instruments while the audience took their seats.",
    "Can I bring a stroller on the bus?",
    "Solar panels produce less electricity on cloudy days.",
    "The defendant pleaded not guilty to all charges.",
    "Mix the paint thoroughly before applying the second coat.",
    "What are the side effects of ibuprofen?",
    "The startup raised twenty million dollars in its series B round.",
    "A gentle breeze carried the smell of pine across the lake.",
    "The compiler reports an error when a variable is used before it is declared.",
    "Tickets for the concert sold out within ten minutes.",
    "The glacier has retreated almost two kilometres since 1950.",
    "I would like to book a table for four at eight o'clock.",
    "The referee showed the defender a red card in the final minute.",
    "Knitting a scarf takes patience and a good pair of needles.",
    "The spacecraft entered orbit around Jupiter after a five-year journey.",
    "Unit tests should not depend on the order in which they run.",
    "The bakery on the corner sells the best croissants in town.",
    "Symptoms of dehydration include thirst, fatigue and dark urine.",
    "The election results will be announced tomorrow morning.",
    "Our hotel room had a beautiful view of the harbour.",
    "Rotate the tyres every ten thousand kilometres to even out wear.",
)

#: framings that change length and form while keeping each topic
_FRAMINGS = (
    "{s}",
    "Question from a customer: {s} Thanks in advance for any help you can give.",
    "summary: {s}",
    "In the report we read yesterday, the second paragraph says this: {s} The authors then "
    "discuss what it means for the next year, and why the numbers differ by region.",
)


def text_sample() -> list[str]:
    """192 sentences: 48 topics in 4 framings (short to about 60 tokens), in a fixed order."""
    return [framing.format(s=s) for framing in _FRAMINGS for s in _SENTENCES]


#: seed of the labelled image sample (fixed: reports compare across runs)
IMAGE_SEED = 20_240_613


def image_sample(per_class: int = 8, seed: int = IMAGE_SEED) -> tuple[list[bytes], list[int]]:
    """``24 * per_class`` PNG images of the demo's classes (coloured shapes) and their class
    indices, in a fixed order: every other round in the demo's house style (a filled shape on
    grey, 64 px), the others any plain drawing (outlines, any background, 40 to 256 px), so
    both easy and hard images count and resizing is part of what is timed."""
    from prism.backends.demo import _shapes  # torch comes with it: only when CLIP is measured

    rng = random.Random(seed)
    images: list[bytes] = []
    labels: list[int] = []
    for k in range(per_class):
        draw = _shapes.sample if k % 2 == 0 else _shapes.sample_varied
        for index in range(len(_shapes.CLASSES)):
            buf = io.BytesIO()
            draw(rng, index).image.save(buf, format="PNG")
            images.append(buf.getvalue())
            labels.append(index)
    return images, labels


def clip_prompts() -> list[str]:
    """The demo's zero-shot prompt of each class (``a red circle``, ...), in class order."""
    from prism.backends.demo import _shapes

    return _shapes.prompts()


def caption_sample() -> list[str]:
    """168 captions: each demo class in each of the demo's caption templates."""
    from prism.backends.demo import _shapes

    return [
        template.format(c=c, s=s, n=index + 1)
        for template in _shapes.CAPTION_TEMPLATES
        for index, (c, s) in enumerate(_shapes.CLASSES)
    ]
