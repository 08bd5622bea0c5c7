"""MLLM-judge overall score: a local image-text model rates each generated cover against its item title, 1..5.

The judge is any image-text folder that `AutoModelForImageTextToText` loads (LLaVA, Qwen2-VL and Qwen2.5-VL are
tested); its processor is loaded as `icg_rl.models.mllm` loads it, so Qwen folders work without torchvision.
Each cover is shown with the judge prompt (from config; `{title}` is filled in), the model answers greedily, and
`parse_score` reads the first standalone integer 1..5 from the answer. Answers that do not parse stay NaN and are
counted in `JudgeResult.unparseable`: a silent default score would bias the mean towards that default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText

from icg_rl.models.mllm import FAMILIES, Family, load_processor

DEFAULT_JUDGE_PROMPT = (
    "You are judging a cover image generated for an item titled \"{title}\".\n"
    "Rate the cover on these criteria taken together:\n"
    "1. Relevance: does the image fit the title's subject, genre and mood?\n"
    "2. Visual quality: is it clean and coherent, free of artifacts and distortions?\n"
    "3. Appeal: would it work well as a cover that makes people want to look at the item?\n"
    "Give one overall score from 1 (very poor) to 5 (excellent). "
    "Answer with a single integer from 1 to 5 and nothing else.\n"
    "Score:"
)

# A run of digits (with an optional decimal part) that is not glued to letters, digits or a decimal point, so
# "10", "2nd", "x2" and "3.5" never yield a digit of theirs as a score; ASCII so only 0-9 count as digits.
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?!\w)", re.ASCII)


def parse_score(text: str) -> int | None:
    """The first standalone integer in 1..5 in `text` ("Score: 5/5" -> 5, "I'd say 3." -> 3), else None.

    Numbers that are not integers 1..5 ("7", "10", "3.5") are skipped, never clipped or rounded into range.
    """
    for match in _NUMBER.finditer(text):
        token = match.group()
        if token.isdigit() and 1 <= int(token) <= 5:
            return int(token)
    return None


@dataclass
class JudgeResult:
    """Per-cover scores (NaN where the answer did not parse), the raw answers, and how many did not parse."""

    scores: np.ndarray  # [N] float64, 1..5 or NaN
    answers: list[str]  # [N] decoded new tokens only (the prompt is not repeated)
    unparseable: int

    @property
    def mean(self) -> float:
        """Mean over the parsed scores; NaN when none parsed (no warning, no silent 0)."""
        parsed = self.scores[~np.isnan(self.scores)]
        return float(parsed.mean()) if parsed.size else float("nan")


def _check_prompt(prompt: str) -> None:
    try:
        prompt.format(title="")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"prompt={prompt!r} is not a valid judge prompt: only the field {{title}} is allowed "
                         f"({err!r})") from None


class MLLMJudge:
    """Scores covers 1..5 with a frozen image-text model; greedy decoding, so the same inputs give the same answers."""

    def __init__(self, model, processor, prompt: str = DEFAULT_JUDGE_PROMPT, max_new_tokens: int = 8,
                 batch_size: int = 8):
        """Wrap a loaded model + processor (eval mode, left padding for batched generation)."""
        _check_prompt(prompt)
        if int(max_new_tokens) < 1 or int(batch_size) < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} and batch_size={batch_size!r} must be integers >= 1")
        self.model, self.processor = model.eval(), processor
        self.prompt, self.max_new_tokens, self.batch_size = prompt, int(max_new_tokens), int(batch_size)
        # Decoder-only generation appends after the last column: right padding would put pad tokens between a
        # short prompt and its answer, so every row is left-padded instead.
        processor.tokenizer.padding_side = "left"
        pad = processor.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else processor.tokenizer.eos_token_id

    @classmethod
    def from_pretrained(cls, folder, prompt: str = DEFAULT_JUDGE_PROMPT, max_new_tokens: int = 8,
                        batch_size: int = 8, *, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None) -> MLLMJudge:
        """Load the judge from a local folder exactly as a real checkpoint is loaded (nothing is downloaded)."""
        _check_prompt(prompt)  # before the (possibly large) weights are read
        model_type = AutoConfig.from_pretrained(str(folder)).model_type
        kwargs = {} if dtype is None else {"dtype": dtype}
        model = AutoModelForImageTextToText.from_pretrained(str(folder), **kwargs)
        if device is not None:
            model = model.to(device)
        # Known families get the torchvision-free processor fallback; others rely on AutoProcessor alone.
        family = FAMILIES.get(model_type, Family(type(model), mrope=False, image_only_processor=None))
        return cls(model, load_processor(Path(folder), family), prompt, max_new_tokens, batch_size)

    def build_prompt(self, title: str) -> str:
        """The text fed with one cover: the processor's chat template when it has one, else image token + prompt."""
        text = self.prompt.format(title=title)
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        image_token = self.processor.image_token
        config = self.model.config
        start, end = getattr(config, "vision_start_token_id", None), getattr(config, "vision_end_token_id", None)
        if start is not None and end is not None:  # Qwen models were trained with the image wrapped in these
            start, end = self.processor.tokenizer.convert_ids_to_tokens([start, end])
            image_token = f"{start}{image_token}{end}"
        return f"{image_token}\n{text}"

    def score(self, images: np.ndarray, titles: list[str]) -> JudgeResult:
        """Judge N covers: `images` uint8 [N, H, W, 3] RGB, `titles` N strings (cover i belongs to titles[i])."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            described = f"array {images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images)
            raise ValueError(f"images={described} is not allowed; pass a uint8 numpy array of shape (N, H, W, 3)")
        if not isinstance(titles, (list, tuple)) or not all(isinstance(t, str) for t in titles):
            raise ValueError(f"titles={titles!r} is not allowed; pass a list of title strings")
        if len(titles) != len(images):
            raise ValueError(f"titles has {len(titles)} entries but images has {len(images)}; pass one title per image")
        answers: list[str] = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            answers += self._generate(images[start:stop], list(titles[start:stop]))
        parsed = [parse_score(answer) for answer in answers]
        scores = np.array([np.nan if s is None else float(s) for s in parsed], dtype=np.float64)  # [N]
        return JudgeResult(scores=scores, answers=answers, unparseable=int(np.isnan(scores).sum()))

    @torch.no_grad()
    def _generate(self, images: np.ndarray, titles: list[str]) -> list[str]:
        """One batch through the processor and greedy `generate`; returns the decoded new tokens of each row."""
        pil = [Image.fromarray(image) for image in images]  # [H, W, 3] uint8 each
        inputs = self.processor(text=[self.build_prompt(t) for t in titles], images=pil, padding=True,
                                return_tensors="pt")  # Qwen's processor also returns mm_token_type_ids
        device, dtype = self.model.device, self.model.dtype
        inputs = {key: value.to(device, dtype) if value.is_floating_point() else value.to(device)
                  for key, value in inputs.items()}
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     pad_token_id=self.pad_token_id)  # [B, L + new]
        new_tokens = output[:, inputs["input_ids"].shape[1]:]  # left padding: every row's prompt ends at column L
        return [answer.strip() for answer in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]
