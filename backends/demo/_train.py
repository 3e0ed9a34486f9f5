"""Train the demo CLIP (``demo-clip``) on the procedural shapes data set, on a few CPU cores.

The image tower is open_clip's ModifiedResNet (``layers [1, 1, 1, 1]``, width 32, 64 px): a
small ViT learns colour but not shape in this budget, a ResNet learns both. Each step holds
``groups`` contrastive groups, and each group holds every class exactly once, so open_clip's
``ClipLoss`` never sees a false negative (two captions of the same class in one group).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._progress import progress as progress_bar
from . import _shapes

ARCH = "demo-clip"
#: the packaged open_clip config of ``demo-clip`` (also copied next to the weights)
CONFIG_DIR = Path(__file__).with_name("model_configs")

#: seeds derived from the build seed, so the held-out images never come from the train stream
_EVAL_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults take ~4 min on 2 idle CPU cores with native bf16
    (~0.155 s/step; ~0.25 s/step in float32).

    Measured with two threads on 384 plain drawings from another renderer
    (``tests/plain_drawings.py`` with seed 99; the test uses seed 13) and on the house style:
    varied drawings mixed in from 10% to 100% of the images, 1,000 float32 steps: 58% and 94%
    (filled 82%, outlined 33%; the shape wrong, the colour right: large squares were called
    circles, since a square drawn at a circle's radius is a third narrower); 1,400 bf16
    steps: 82% and 98%; with hairline strokes as common as bold ones, 83%; with every shape as
    wide as a circle of the same size, 91% and 99% (filled 99.5%, outlined 82%); 1,600 steps
    of that: 94.5% (filled 99%, outlined 90%) and 99% (the test's seed: 96.9%). House style
    alone: ~97% on it, ~36% on plain drawings. All varied from the first step, or a higher
    learning rate (2e-3), learn shape more slowly.
    """

    steps: int = 1600
    #: contrastive groups per step, each one image of every class (24 images)
    groups: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 30
    #: CPU threads used while training (restored afterwards)
    threads: int = 2
    #: share of :func:`~._shapes.render_varied` drawings among the training images (the rest
    #: in the house style), at the first step and at the last (linear in between): the
    #: house style first teaches shape, the varied drawings then generalise it
    varied_first: float = 0.1
    varied_last: float = 1.0
    #: held-out images for the zero-shot accuracy at the end
    eval_images: int = 500
    #: the forward in bfloat16 (autocast; the loss and the weights stay float32). None: where
    #: the CPU has native bf16 arithmetic (AVX512-BF16), ~1.4x the steps per second;
    #: elsewhere emulated bf16 would be slower than float32
    bf16: bool | None = None


@dataclass(frozen=True)
class TrainResult:
    steps: int
    images_seen: int
    train_seconds: float
    final_loss: float
    zero_shot_accuracy: float
    eval_images: int


@contextmanager
def _quiet_root_warnings() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16: every CPU with AMX has it
    too)."""
    return bool(torch.cpu._is_avx512_bf16_supported())


def register_config() -> None:
    """Make ``demo-clip`` known to open_clip (idempotent)."""
    import open_clip

    if ARCH not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR / f"{ARCH}.json")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # CLIP's recipe: no decay on gains, biases, embeddings and the logit scale
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        is_matrix = p.ndim >= 2 and "embedding" not in name
        (decay if is_matrix else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _batch(
    rng: random.Random, groups: int, preprocess: Any, tokenizer: Any, varied: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    images, captions = [], []
    for _ in range(groups):
        order = list(range(len(_shapes.CLASSES)))
        rng.shuffle(order)
        for index in order:
            # no draw at all when nothing is varied: the house-style stream stays as it was
            if varied > 0 and rng.random() < varied:
                s = _shapes.sample_varied(rng, index)
            else:
                s = _shapes.sample(rng, index)
            images.append(preprocess(s.image))
            captions.append(_shapes.caption(rng, s.color, s.shape))
    return torch.stack(images), tokenizer(captions)


def zero_shot_accuracy(
    model: Any, preprocess: Any, tokenizer: Any, *, seed: int, n: int = 500
) -> float:
    """Fraction of ``n`` fresh images whose best-scoring class prompt is their own class."""
    rng = random.Random(seed + _EVAL_SEED_OFFSET)
    truth = [rng.randrange(len(_shapes.CLASSES)) for _ in range(n)]
    images = torch.stack([preprocess(_shapes.sample(rng, y).image) for y in truth])
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        labels = model.encode_text(tokenizer(_shapes.prompts()), normalize=True)
        feats = model.encode_image(images.contiguous(memory_format=torch.channels_last), True)
        predicted = (feats @ labels.T).argmax(dim=1).tolist()
    model.train(was_training)
    return sum(p == y for p, y in zip(predicted, truth, strict=True)) / n


def train_demo_clip(
    weights_path: Path,
    *,
    seed: int = 0,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``demo-clip`` from scratch and save an open_clip checkpoint to ``weights_path``.

    Deterministic for a given seed and thread count. The checkpoint is
    ``{"state_dict": ..., "arch": "demo-clip", ...}``, which ``open_clip.load_checkpoint`` reads.
    """
    import open_clip
    from open_clip.loss import ClipLoss

    cfg = config or TrainConfig()
    register_config()
    with threads(cfg.threads):
        torch.manual_seed(seed)
        # training from scratch is the point here: silence open_clip's root-logger warning
        # that the model "initialized randomly", which reads like a failure in the build log
        with _quiet_root_warnings():
            model, _, preprocess = open_clip.create_model_and_transforms(ARCH)
        tokenizer = open_clip.get_tokenizer(ARCH)
        # channels_last: oneDNN convolutions are ~15% faster this way on CPU
        model = model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = torch.optim.AdamW(
            _param_groups(model, cfg.weight_decay),
            lr=cfg.lr,
            betas=(0.9, 0.98),
            eps=1e-6,
            # one kernel for all parameters: the unfused loop cost ~40 ms of a ~250 ms step,
            # most of it on the text tower's 49k-token embedding table
            fused=True,
        )

        def lr_factor(step: int) -> float:  # linear warm-up, then cosine to zero
            warm = min(1.0, (step + 1) / cfg.warmup_steps)
            return warm * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        loss_fn = ClipLoss()
        bf16 = cfg.bf16 if cfg.bf16 is not None else native_bf16()
        rng = random.Random(seed)
        group = len(_shapes.CLASSES)
        started = time.perf_counter()
        loss_value = float("nan")
        bar = progress_bar(range(cfg.steps), desc="train demo-clip", unit="step", enabled=progress)
        for step in bar:
            varied = cfg.varied_first + (cfg.varied_last - cfg.varied_first) * step / cfg.steps
            images, texts = _batch(rng, cfg.groups, preprocess, tokenizer, varied)
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                image_feats, text_feats, logit_scale = model(images, texts)[:3]
            image_feats, text_feats = image_feats.float(), text_feats.float()
            loss = (
                sum(
                    loss_fn(
                        image_feats[g * group : (g + 1) * group],
                        text_feats[g * group : (g + 1) * group],
                        logit_scale,
                    )
                    for g in range(cfg.groups)
                )
                / cfg.groups
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():  # CLIP caps the temperature at 100
                model.logit_scale.clamp_(0, math.log(100))
            loss_value = loss.item()
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)  # drawn at the bar's pace
        seconds = time.perf_counter() - started
        accuracy = zero_shot_accuracy(model, preprocess, tokenizer, seed=seed, n=cfg.eval_images)

    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = weights_path.with_suffix(".tmp")
    torch.save({"state_dict": state, "arch": ARCH, "seed": seed, "steps": cfg.steps}, tmp)
    tmp.replace(weights_path)  # atomic: a crash never leaves half a checkpoint
    return TrainResult(
        steps=cfg.steps,
        images_seen=cfg.steps * cfg.groups * group,
        train_seconds=seconds,
        final_loss=loss_value,
        zero_shot_accuracy=accuracy,
        eval_images=cfg.eval_images,
    )
