"""The Python API: load a RegionGPT and ask it about many regions of an image at once.

    from regiongpt import RegionGPT
    m = RegionGPT.load()                      # the built-in demo model
    m.describe("scene.png", [[10, 20, 80, 90], mask], task="brief")
    m.ground("scene.png", regions, "the red star left of the ring")
    m.chat("scene.png", regions, [{"role": "user", "content": "How is <region1> related to <region2>?"}])

All regions of one image are answered in one engine batch: the image is encoded once and
its shared prompt prefix prefilled once. Prompts come from the task-guided instructions with
the checkpoint's own system prompt and category list, as in training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from regiongpt.errors import InvalidInputError
from regiongpt.inference.engine import ConversationState, Engine, Request, SamplingParams, VisualInputs
from regiongpt.processing.instructions import build_instruction, parse_rec_answer

BUILTIN_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo-model"
DESCRIBE_TASKS = ("brief", "detailed", "classify", "label")
DEFAULT_MAX_NEW_TOKENS = {"brief": 24, "detailed": 128, "classify": 8, "label": 16, "rec": 8, "chat": 256}
REC_TOKENS_PER_CANDIDATE = 24  # a checked REC answer spends ~14 tokens on each candidate it checks


def rec_max_new_tokens(candidates: int) -> int:
    """The token budget of a REC answer over ``candidates`` regions: room for a checked answer
    (a brief caption and yes/no per candidate, :func:`rec_checked_answer`); a direct answer
    ("Region [2]") ends long before it."""
    return DEFAULT_MAX_NEW_TOKENS["rec"] + REC_TOKENS_PER_CANDIDATE * candidates


@dataclass
class RegionAnswer:
    region: int  # 0-based index of the region in the input list
    text: str
    score: float | None = None  # log-likelihood of the answer (return_scores=True)
    category_scores: dict[str, float] | None = None  # classify + return_scores: log-likelihood per category


@dataclass
class Question:
    """A free-form question about item ``item`` of a batch of (image, regions) items;
    ``region_map[k]`` is the item's region that ``<region{k+1}>`` stands for (all of the
    item's regions, in order, when None), so a question may use any subset in any order."""

    item: int
    text: str
    region_map: Sequence[int] | None = None
    max_new_tokens: int = 64


@dataclass
class Answer:
    text: str
    score: float  # log-likelihood of the answer


@dataclass
class GroundingResult:
    region: int | None  # 0-based index of the region the phrase refers to, or None
    text: str  # the model's raw answer ("Region [k]" or "No corresponding options found.")


def resolve_model_path(name_or_path: str | Path | None) -> str:
    """The built-in model for None; an existing folder; otherwise a hub id (needs the hub)."""
    if name_or_path is None:
        if not (BUILTIN_MODEL_DIR / "config.json").exists():
            raise InvalidInputError(
                f"the built-in model is missing from {BUILTIN_MODEL_DIR}; reinstall regiongpt or "
                "retrain it with `python bench/demo_model.py`"
            )
        return str(BUILTIN_MODEL_DIR)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise InvalidInputError(f"{path} has no config.json: it is not a saved RegionGPT model folder")
        return str(path)
    text = str(name_or_path)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise InvalidInputError(f"model path {text} does not exist; give a model folder or a hub id like org/name")
    return text


class RegionGPT:
    """A loaded RegionGPT model with its processor and inference engine."""

    def __init__(self, model, processor, max_rows: int = 64):
        self.model = model.eval()
        self.processor = processor
        self.engine = Engine(model, max_rows=max_rows)
        tokenizer = processor.tokenizer
        self.stop_token_ids = tuple(t for t in {tokenizer.eos_token_id} if t is not None)

    @classmethod
    def load(cls, name_or_path: str | Path | None = None, dtype: torch.dtype | str | None = None,
             device: str | torch.device | None = None) -> RegionGPT:
        """Load a model by folder or hub id (default: the built-in demo model)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        import regiongpt  # noqa: F401  (registers the Auto classes)

        path = resolve_model_path(name_or_path)
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise InvalidInputError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
            dtype = getattr(torch, dtype)
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or torch.float32)
            processor = AutoProcessor.from_pretrained(path)
        except OSError as error:
            raise InvalidInputError(f"could not load a model from {path}: {error}") from None
        if device is not None:
            model = model.to(device)
        return cls(model, processor)

    # ----- tasks -------------------------------------------------------------------------------
    def describe(self, image: Any, regions: Sequence[Any], task: str = "brief",
                 categories: Sequence[str] | None = None, return_scores: bool = False,
                 max_new_tokens: int | None = None, vocabulary: str | None = None) -> list[RegionAnswer]:
        """One answer per region: a brief or detailed description, a category or a free label.

        For ``classify``: ``categories`` other than the checkpoint's own are listed in the
        prompt, unless ``vocabulary`` names them (the paper's "Answer the question using COCO-80
        category names."); the checkpoint's own set is named as in training.
        """
        return self.describe_many([(image, regions)], task, categories, return_scores, max_new_tokens, vocabulary)[0]

    def describe_many(self, items: Sequence[tuple[Any, Sequence[Any]]], task: str = "brief",
                      categories: Sequence[str] | None = None, return_scores: bool = False,
                      max_new_tokens: int | None = None, vocabulary: str | None = None) -> list[list[RegionAnswer]]:
        """:meth:`describe` for several (image, regions) pairs in one engine batch."""
        if task not in DESCRIBE_TASKS:
            raise InvalidInputError(f"unknown task {task!r}; choose one of {', '.join(DESCRIBE_TASKS)}")
        items = [(image, list(regions)) for image, regions in items]
        for image, regions in items:
            if not regions:
                raise InvalidInputError(f"give at least one region for {image if isinstance(image, str) else 'the image'}")
        # The checkpoint's own label set is named as in training (e.g. "COCO-80 category names");
        # a different set given by the caller is listed in the prompt.
        own = self.processor.categories
        listed = list(categories) if categories and list(categories) != own and vocabulary is None else None
        categories = list(categories) if categories else own
        if vocabulary is None:
            vocabulary = "the listed" if listed else self.processor.category_vocabulary
        limit = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[task]
        questions = [
            Question(index, self.instruction(task, region=i, categories=listed if task == "classify" else None,
                                             vocabulary=vocabulary), max_new_tokens=limit)
            for index, (_, regions) in enumerate(items) for i in range(len(regions))
        ]
        requests, visual = self._requests(items, questions)
        completions = self.engine.generate(requests, visual)
        flat = [RegionAnswer(0, self._decode(c.token_ids), c.score if return_scores else None) for c in completions]
        if task == "classify" and return_scores:
            if not categories:
                raise InvalidInputError("per-category scores need categories (pass categories=[...])")
            options = [self._answer_ids(self._question_prompt(q), categories) for q in questions]
            for answer, row in zip(flat, self.engine.score(requests, options, visual)):
                answer.category_scores = dict(zip(categories, row))
        out, position = [], 0
        for _, regions in items:
            answers = flat[position : position + len(regions)]
            for i, answer in enumerate(answers):
                answer.region = i
            out.append(answers)
            position += len(regions)
        return out

    def instruction(self, task: str, **fields: Any) -> str:
        """The task-guided question for ``task`` (``build_instruction``'s fields), with the scope
        suffix only when this checkpoint was trained with it (``processor.task_suffix``)."""
        return build_instruction(task, use_suffix=getattr(self.processor, "task_suffix", True), **fields)

    def ground(self, image: Any, regions: Sequence[Any], phrase: str) -> GroundingResult:
        """Which region (0-based) the phrase refers to, or None when none fits."""
        regions = list(regions)
        if not regions:
            raise InvalidInputError("give the candidate regions to choose from")
        question = self.instruction("rec", regions=range(len(regions)), phrase=phrase)
        budget = rec_max_new_tokens(len(regions))
        text = self.ask_many([(image, regions)], [Question(0, question, max_new_tokens=budget)])[0].text
        index = parse_rec_answer(text)
        return GroundingResult(index if index is not None and index < len(regions) else None, text)

    def chat(self, image: Any, regions: Sequence[Any], messages: Sequence[dict], max_new_tokens: int | None = None,
             temperature: float = 0.0, top_p: float = 1.0, stream: bool = False) -> str | Iterator[str]:
        """The assistant's next reply to a conversation about the image and its ``<regionK>`` s.

        With ``stream=True``, yields the reply's text as it grows (one piece per token).
        """
        messages = [dict(m) for m in messages]
        if not messages or messages[-1].get("role") != "user":
            raise InvalidInputError("messages must end with a user message")
        first_user = next(m for m in messages if m.get("role") == "user")
        if "<image>" not in str(first_user.get("content", "")):
            first_user["content"] = f"<image>\n{first_user['content']}"
        regions = list(regions)
        ids, refs = self.processor.encode_prompt(self._prompt(messages), len(regions))
        params = SamplingParams(max_new_tokens or DEFAULT_MAX_NEW_TOKENS["chat"], temperature, top_p,
                                self.stop_token_ids)
        events = self.engine.stream([Request(ids, 0, refs, params)], self._visual([(image, regions)]))
        if stream:
            return self._stream_text(events)
        return "".join(self._stream_text(events)).strip()

    def ask_many(self, items: Sequence[tuple[Any, Sequence[Any]]], questions: Sequence[Question]) -> list[Answer]:
        """Greedy answers to one-turn questions about (image, regions) items, in one engine
        batch: each image encoded once, each region pooled once (evaluation uses this)."""
        if not questions:
            return []
        items = [(image, list(regions)) for image, regions in items]
        requests, visual = self._requests(items, questions)
        return [Answer(self._decode(c.token_ids), c.score) for c in self.engine.generate(requests, visual)]

    def chat_session(self, image: Any, regions: Sequence[Any] = ()) -> ChatSession:
        """A multi-turn conversation about one image: the image is encoded once and each turn
        prefills only its new tokens (the conversation's KV is kept between turns)."""
        return ChatSession(self, image, list(regions))

    # ----- pieces --------------------------------------------------------------------------------
    def _prompt(self, messages: list[dict]) -> str:
        return self.processor.format_conversation(messages, add_generation_prompt=True).text

    def _visual(self, items) -> VisualInputs:
        """Pixels and region masks of (image, regions) items, on the model's device."""
        visual_inputs = self.processor.prepare_images([image for image, _ in items], [r for _, r in items])
        device = self.model.device
        return VisualInputs(*(visual_inputs[k].to(device) for k in
                              ("pixel_values", "region_masks", "region_boxes", "region_image_index")))

    def _question_prompt(self, question: Question) -> str:
        return self._prompt([{"role": "user", "content": f"<image>\n{question.text}"}])

    def _requests(self, items, questions: Sequence[Question]):
        """Engine requests (greedy, stopping at the end token) and the visual inputs of the items."""
        offsets = [0]
        for _, regions in items:
            offsets.append(offsets[-1] + len(regions))
        numbered = bool(getattr(self.model.config, "region_number_embedding", False))
        requests = []
        reordered: dict[tuple[int, tuple[int, ...]], int] = {}  # (item, region_map) -> its first region
        extra: list[int] = []  # the regions of those groups, as indices of the items' regions
        extra_numbers: list[int] = []  # and the number each has in its question
        for q in questions:
            if not 0 <= q.item < len(items):
                raise InvalidInputError(f"a question refers to item {q.item} but {len(items)} item(s) were given")
            n_item = len(items[q.item][1])
            mapping = list(q.region_map) if q.region_map is not None else list(range(n_item))
            bad = [m for m in mapping if not 0 <= m < n_item]
            if bad:
                raise InvalidInputError(f"a question's region_map names region {bad[0]} of item {q.item}, "
                                        f"which has {n_item} region(s) (valid: 0..{n_item - 1})")
            ids, refs = self.processor.encode_prompt(self._question_prompt(q), len(mapping))
            params = SamplingParams(max_new_tokens=q.max_new_tokens, stop_token_ids=self.stop_token_ids)
            if numbered and any(m != k for k, m in enumerate(mapping)):
                # A model that codes region numbers must see <regionK> numbered K-1 in this question's
                # order: the item's regions are pooled again as a group of their own, in that order.
                key = (q.item, tuple(mapping))
                if key not in reordered:
                    reordered[key] = offsets[-1] + len(extra)
                    extra += [offsets[q.item] + m for m in mapping]
                    extra_numbers += range(len(mapping))
                regions = [reordered[key] + r for r in refs]
            else:
                regions = [offsets[q.item] + mapping[r] for r in refs]
            requests.append(Request(ids, image=q.item, regions=regions, sampling=params))
        visual = self._visual(items)
        if extra:
            visual = _with_reordered_regions(visual, [len(r) for _, r in items], extra, extra_numbers)
        return requests, visual

    def _decode(self, token_ids: list[int]) -> str:
        ids = [t for t in token_ids if t not in self.stop_token_ids]
        return self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _answer_ids(self, prompt: str, answers: Sequence[str]) -> list[list[int]]:
        """Token ids of each answer as it follows the prompt in the template (with the end token)."""
        tokenizer = self.processor.tokenizer
        head = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        out = []
        for answer in answers:
            full = tokenizer(f"{prompt} {answer}</s>", add_special_tokens=True)["input_ids"]
            if full[: len(head)] != head:  # the tokenizer merged across the boundary: fall back
                full = head + tokenizer(f" {answer}</s>", add_special_tokens=False)["input_ids"]
            out.append(full[len(head):])
        return out

    def _stream_text(self, events) -> Iterator[str]:
        tokens: list[int] = []
        shown = ""
        for event in events:
            if event.token_id not in self.stop_token_ids:
                tokens.append(event.token_id)
            text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                continue
            if len(text) > len(shown):
                yield text[len(shown):] if shown else text.lstrip()
                shown = text


class ChatSession:
    """A conversation about one image and its regions (see :meth:`RegionGPT.chat_session`)."""

    def __init__(self, api: RegionGPT, image: Any, regions: list[Any]):
        self.api = api
        self.regions = regions
        self.messages: list[dict] = []
        self.state = ConversationState()
        self._visual = api._visual([(image, regions)])

    def send(self, message: str, max_new_tokens: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
             stream: bool = False) -> str | Iterator[str]:
        """The reply to ``message`` (which may use ``<regionK>``); with ``stream``, its pieces as they come."""
        content = message if self.messages else f"<image>\n{message}"
        messages = self.messages + [{"role": "user", "content": content}]
        prompt = self.api._prompt(messages)
        ids, refs = self.api.processor.encode_prompt(prompt, len(self.regions))
        params = SamplingParams(max_new_tokens or DEFAULT_MAX_NEW_TOKENS["chat"], temperature, top_p,
                                self.api.stop_token_ids)
        events = self.api.engine.converse(self.state, Request(ids, 0, refs, params), self._visual)
        pieces = self._record(messages, self.api._stream_text(events))
        return pieces if stream else "".join(pieces).strip()

    def _record(self, messages: list[dict], pieces: Iterator[str]) -> Iterator[str]:
        reply = []
        for piece in pieces:
            reply.append(piece)
            yield piece
        self.messages = messages + [{"role": "assistant", "content": "".join(reply).strip()}]


def _with_reordered_regions(visual: VisualInputs, per_item: Sequence[int], extra: Sequence[int],
                            extra_numbers: Sequence[int]) -> VisualInputs:
    """``visual`` with the regions ``extra`` (indices into its regions) appended, and every region
    numbered: the items' own regions by their position in their item, the appended ones by
    ``extra_numbers``."""
    index = torch.tensor(list(extra), dtype=torch.long, device=visual.region_masks.device)
    numbers = [k for n in per_item for k in range(n)] + list(extra_numbers)

    def grow(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else torch.cat([t, t[index.to(t.device)]])

    return VisualInputs(visual.pixel_values, grow(visual.region_masks), grow(visual.region_boxes),
                        grow(visual.region_image_index),
                        torch.tensor(numbers, dtype=torch.long, device=visual.region_masks.device))
