"""DLC-Bench: detailed localized captioning judged by an LLM (Describe Anything, Lian et al. 2025; SPEC §2).

Protocol (following NVlabs/describe-anything ``evaluation/``: ``get_model_outputs.py`` and
``eval_model_outputs.py``):
- Data: the ``DLC-bench`` folder of the Hugging Face data set ``nvidia/DLC-Bench``:
  ``annotations.json`` (COCO-style images + annotations with masks; an Objects365 subset),
  ``images/`` (the files ``annotations.json`` names), ``qa.json`` (annotation id -> list of
  questions ``{"question", "choices": [[text, score], ...], "type": "positive"|"negative"}``)
  and ``class_names.json`` (annotation id -> class name). The objects evaluated are the
  annotations that have an entry in ``qa.json`` (images and annotations in file order).
- Description: region = the annotation's mask (``--region-mode box``: its filled box); the
  model's own "detailed" instruction (``describe(task="detailed")``, e.g. "Describe in
  detail the object located at <region1> in the image."), greedy, at most
  ``--dlc-max-new-tokens`` (default 512, as DAM's script) new tokens. All objects of an
  image are described in one engine batch. (DAM's script samples at temperature 0.2 with
  its own "Describe the masked region in detail." prompt; here decoding is greedy and the
  prompt is the checkpoint's trained one.)
- Judge: any OpenAI-compatible chat-completions endpoint (the paper's: Llama-3.1-8B-Instruct
  served by vLLM); one user message per question, temperature 0, top_p 1, max_tokens 300,
  no penalties. The prompt is DAM's ``prompt_eval`` verbatim: rules, the description, the
  question and its choices lettered "A." to "E.". The judge sees the description only.
- A recognition question is asked first: "Is it likely that the object in the description
  is a(n) <class> or an object of a similar type? Again, It does not have to be an exact
  match." (plural class names: "the objects ... are <class> or objects of a similar type"),
  choices Yes / No. If the judge says No, every positive and negative score of that object
  is capped at 0. DAM decides plural and article with the ``inflect`` package; here a small
  rule does (ends in "s" but not "ss"/"us"/"is", a few irregular plurals; "an" before a
  vowel sound) — it may word a rare class name differently.
- The judge's reply is mapped to a choice with DAM's ``parse_pred`` rules (exact text,
  "X. text" or the letter; a single choice text inside the reply; an "X." prefix; the last
  of several choice texts in the reply, the longest on a tie; the reply inside a choice
  text, the longest; a lone letter). A reply that matches no choice (or a letter beyond the
  choices) is **unparsable**: scored 0 (DAM: "treat as no mention"), not retried, and
  counted in ``unparsable_replies``. An unparsable recognition reply (DAM raises) applies
  no cap and is counted too.
- Scores: per object, positive = sum of its positive questions' chosen-choice scores / the
  sum of their best choice scores, negative likewise for its negative questions (in the
  released qa.json every question's best choice scores 1, so this is DAM's per-object mean).
  The benchmark's positive score is the mean over objects, the negative score the mean over
  objects that have negative questions (objects without positives are left out of the
  positive mean), and the average is (positive + negative) / 2 — as DAM reports. Metrics are
  fractions of the maximum achievable; the table shows them x100, i.e. as percentages, as
  the paper's tables do.
- Saved per object (predictions.jsonl): the description and, per question, ``prompt_id``
  (``<ann id>/recognition`` or ``<ann id>/<index in qa.json>``), the judge's raw ``reply``,
  the parsed ``choice`` (0-based, null when unparsable) and its ``score`` (recognition:
  "correct" / "incorrect" / null). Judge calls belong to the object's prediction, so a
  resumed run asks neither the model nor the judge again about saved objects. A judge
  failure (unreachable, HTTP errors after retries, a reply that is not a chat-completions
  response) stops the run with one error line; objects of earlier batches stay saved.
  The judge's URL is recorded in the results (``metrics.judge``) but is not part of the
  run's identity, so a resumed run may reach the same judge model at another address.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

from regiongpt.data.refer import annotation_region
from regiongpt.data.files import read_json
from regiongpt.errors import InvalidInputError
from regiongpt.evaluation.runner import Benchmark, ImageJob, Query, Scores

DEFAULT_JUDGE_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct"
DEFAULT_MAX_NEW_TOKENS = 512
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 300
LETTERS = "abcde"
RETRY_STATUS = (429, 500, 502, 503, 504)
MAX_BACKOFF_S = 30.0
SNIPPET = 160

PROMPT_EVAL = """Answer the multiple-choice question based on the text description of an object in an image. You need to follow these rules:
1. Do not output any reasoning. Do not perform correction. Please output exactly one answer from the choices for each question. Do not repeat the question.
2. There is no need for exact matching. Please choose the closest option based on the description.

The description is:
{pred_caption}

From the description above, please answer the following question with one of the choices:
{question_text_str}
"""
PROMPT_VERSION = hashlib.sha256(PROMPT_EVAL.encode()).hexdigest()[:12]
RECOGNITION_CHOICES = (("Yes", "correct"), ("No", "incorrect"))
IRREGULAR_PLURALS = {"people", "children", "men", "women", "feet", "teeth", "mice", "geese"}


# ----- the judge's prompts and replies ----------------------------------------------------------
def is_plural(name: str) -> bool:
    """Whether a class name reads as plural (DAM uses ``inflect``; this is a small stand-in)."""
    word = name.strip().lower().split()[-1] if name.strip() else ""
    if word in IRREGULAR_PLURALS:
        return True
    return word.endswith("s") and not word.endswith(("ss", "us", "is"))


def with_article(name: str) -> str:
    """``a``/``an`` + name by the first letter, with the usual exceptions ("a unicycle", "an hour")."""
    lower = name.strip().lower()
    vowel = lower[:1] in ("a", "e", "i", "o", "u")
    if lower.startswith(("uni", "use", "usu", "eu", "one")):
        vowel = False
    if lower.startswith(("hour", "honest", "heir")):
        vowel = True
    return f"{'an' if vowel else 'a'} {name.strip()}"


def recognition_question(class_name: str) -> dict[str, Any]:
    """DAM's recognition question for ``class_name`` (asked before the benchmark's questions)."""
    if is_plural(class_name):
        text = (f"Is it likely that the objects in the description are {class_name} or objects of a similar type? "
                "Again, It does not have to be an exact match.")
    else:
        text = (f"Is it likely that the object in the description is {with_article(class_name)} or an object of a "
                "similar type? Again, It does not have to be an exact match.")
    return {"question": text, "choices": [list(c) for c in RECOGNITION_CHOICES], "type": "recognition"}


def judge_prompt(description: str, question: dict[str, Any]) -> str:
    """DAM's ``prompt_eval`` filled with the description, the question and its lettered choices."""
    choices = [f"{LETTERS[i].upper()}. {text}" for i, (text, _) in enumerate(question["choices"])]
    lines = [question["question"], *choices]
    return PROMPT_EVAL.format(pred_caption=description, question_text_str="\n".join(lines).strip())


def parse_choice(reply: str, choices: Sequence[str]) -> int | None:
    """The 0-based choice a judge reply names (DAM's ``parse_pred`` rules), or None when none fits."""
    pred = reply.strip().lower()
    if not pred:
        return None
    texts = [c.strip().lower() for c in choices]
    letters = LETTERS[: len(texts)]
    for i, text in enumerate(texts):
        if pred in (text, f"{letters[i]}. {text}", letters[i]):
            return i
    inside = [(i, pred.index(t), len(t)) for i, t in enumerate(texts) if t in pred]
    if len(inside) == 1:
        return inside[0][0]
    if len(pred) > 1 and pred[1] == "." and pred[0] in letters:
        return letters.index(pred[0])
    if inside:  # several choice texts in the reply: the last one, the longest on a tie
        last = max(position for _, position, _ in inside)
        return max((m for m in inside if m[1] == last), key=lambda m: m[2])[0]
    containing = [(i, len(t)) for i, t in enumerate(texts) if pred in t]
    if containing:
        return max(containing, key=lambda m: m[1])[0]
    if pred[0] in letters and (len(pred) == 1 or pred[1] == "\n"):
        return letters.index(pred[0])
    return None


# ----- the HTTP client --------------------------------------------------------------------------
@dataclass
class JudgeConfig:
    """How to reach the judge: an OpenAI-compatible API base (``.../v1``) or its ``/chat/completions`` URL."""

    url: str
    model: str = DEFAULT_JUDGE_MODEL
    api_key_env: str | None = None  # name of the environment variable holding the API key
    timeout_s: float = 60.0
    retries: int = 4  # extra tries after a 429 / 5xx / connection failure
    backoff_s: float = 1.0  # first retry delay; doubles per try (Retry-After wins when given)
    workers: int = 8  # judge requests in flight at once


class JudgeHTTPError(InvalidInputError):
    """The judge answered an HTTP error status (kept in ``status``)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _tries(n: int) -> str:
    return "1 try" if n == 1 else f"{n} tries"


def _one_line(text: str, limit: int = SNIPPET) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class JudgeClient:
    """Chat completions over ``urllib`` with timeouts, retries with backoff and one-line errors."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        url = config.url.strip().rstrip("/")
        if not re.match(r"^https?://[^/]+", url):
            raise InvalidInputError(f"--judge-url {config.url!r} must be an http(s) URL such as "
                                    "http://localhost:8000/v1")
        if url.endswith("/chat/completions"):
            self.chat_url, self.base_url = url, url[: -len("/chat/completions")]
        else:
            self.chat_url, self.base_url = url + "/chat/completions", url
        self.api_key = self._api_key(config.api_key_env)
        if config.retries < 0 or config.workers < 1 or config.timeout_s <= 0:
            raise InvalidInputError("--judge-retries must be >= 0, --judge-workers >= 1 and --judge-timeout > 0")

    @staticmethod
    def _api_key(env: str | None) -> str | None:
        if not env:
            return None
        key = os.environ.get(env, "").strip()
        if not key:
            raise InvalidInputError(f"--judge-api-key-env names {env}, but that environment variable is empty or "
                                    f"unset; export {env}=<key> or drop the option for a server without a key")
        return key

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(MAX_BACKOFF_S, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(MAX_BACKOFF_S, self.config.backoff_s * 2**attempt) * (0.5 + 0.5 * random.random())

    def _http_error(self, url: str, error: urllib.error.HTTPError) -> JudgeHTTPError:
        try:
            body = _one_line(error.read().decode("utf-8", "replace"))
        except OSError:
            body = ""
        detail = f"HTTP {error.code}: {body or error.reason}"
        if error.code in (401, 403):
            fix = "set --judge-api-key-env to the environment variable holding its API key"
        elif error.code == 404:
            fix = ("--judge-url must be the API base, e.g. http://localhost:8000/v1, and --judge-model a model it "
                   f"serves (now {self.config.model})")
        elif error.code in RETRY_STATUS:
            fix = f"it kept failing after {_tries(self.config.retries + 1)}; retry later or raise --judge-retries"
        else:
            fix = f"check --judge-model ({self.config.model}) and --judge-url"
        return JudgeHTTPError(f"the DLC-Bench judge at {url} answered {detail}; {fix}", error.code)

    def _send(self, url: str, data: bytes | None, retries: int) -> bytes:
        """The response body of GET (``data`` None) or POST ``url``, retrying 429 / 5xx / network failures."""
        for attempt in range(retries + 1):
            request = urllib.request.Request(url, data=data, headers=self._headers(), method="POST" if data else "GET")
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                    return response.read()
            except urllib.error.HTTPError as error:
                if error.code not in RETRY_STATUS or attempt == retries:
                    raise self._http_error(url, error) from None
                time.sleep(self._delay(attempt, error.headers.get("Retry-After")))
            except (OSError, HTTPException) as error:  # refused, DNS, timeout, reset
                if attempt == retries:
                    reason = _one_line(getattr(error, "reason", None) or error or type(error).__name__)
                    raise InvalidInputError(
                        f"the DLC-Bench judge at {url} cannot be reached ({reason}; {_tries(attempt + 1)}); start the "
                        f"OpenAI-compatible server (e.g. `vllm serve {self.config.model} --port 8000`) or fix "
                        "--judge-url") from None
                time.sleep(self._delay(attempt, None))
        raise AssertionError("unreachable")

    def _garbage(self, why: str, body: bytes) -> InvalidInputError:
        return InvalidInputError(
            f"the DLC-Bench judge at {self.chat_url} did not answer like an OpenAI chat-completions endpoint ({why}: "
            f"{_one_line(body.decode('utf-8', 'replace'), 80)!r}); point --judge-url at the /v1 base of an "
            "OpenAI-compatible server")

    def complete(self, prompt: str) -> str:
        """The judge's reply to one user message (temperature 0, max_tokens 300, as DAM asks)."""
        payload = {"model": self.config.model, "messages": [{"role": "user", "content": prompt}],
                   "temperature": JUDGE_TEMPERATURE, "max_tokens": JUDGE_MAX_TOKENS, "top_p": 1,
                   "frequency_penalty": 0, "presence_penalty": 0}
        body = self._send(self.chat_url, json.dumps(payload).encode(), self.config.retries)
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise self._garbage("not JSON", body) from None
        except (KeyError, IndexError, TypeError):
            raise self._garbage("no choices[0].message.content", body) from None
        if not isinstance(content, str):
            raise self._garbage("message content is not text", body)
        return content

    def complete_many(self, prompts: Sequence[str]) -> list[str]:
        """Replies in order, ``workers`` requests at a time; the first failure cancels the rest."""
        if not prompts:
            return []
        with ThreadPoolExecutor(min(self.config.workers, len(prompts))) as pool:
            futures = [pool.submit(self.complete, p) for p in prompts]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def check(self) -> None:
        """Fail fast (one try) when the endpoint cannot be reached; warn when it does not list the model.

        ``GET /models`` is optional in OpenAI-compatible servers: a 404 or an odd answer is ignored.
        """
        try:
            body = self._send(self.base_url + "/models", None, retries=0)
        except JudgeHTTPError as error:
            if error.status in (404, 405):
                return
            raise
        try:
            served = [m["id"] for m in json.loads(body)["data"]]
        except (ValueError, KeyError, TypeError):
            return
        if served and self.config.model not in served:
            warnings.warn(f"the judge at {self.base_url} lists {', '.join(served[:5])}, not {self.config.model}; "
                          "set --judge-model to a model it serves")


# ----- the data ---------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist; --data must be the DLC-bench folder holding {what}")
    return read_json(path)


def check_question(key: str, index: int, question: Any) -> None:
    """A qa.json question: {"question": str, "choices": [[text, number], ...] (2-5), "type": positive|negative}."""
    where = f"qa.json[{key!r}][{index}]"
    if not isinstance(question, dict) or not isinstance(question.get("question"), str):
        raise InvalidInputError(f"{where} must be {{\"question\", \"choices\", \"type\"}}")
    if question.get("type") not in ("positive", "negative"):
        raise InvalidInputError(f"{where}: type must be 'positive' or 'negative', got {question.get('type')!r}")
    choices = question.get("choices")
    ok = isinstance(choices, list) and 2 <= len(choices) <= len(LETTERS) and all(
        isinstance(c, (list, tuple)) and len(c) == 2 and isinstance(c[0], str)
        and isinstance(c[1], (int, float)) and not isinstance(c[1], bool) for c in choices)
    if not ok:
        raise InvalidInputError(f"{where}: choices must be 2 to 5 [text, score] pairs")
    if max(c[1] for c in choices) <= 0:
        raise InvalidInputError(f"{where}: no choice scores above 0, so the question cannot be normalised")


def read_qa(path: Path) -> dict[str, list[dict[str, Any]]]:
    """qa.json: annotation id (string) -> its questions, checked."""
    data = _read_json(path, "qa.json")
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} must map annotation ids to lists of questions")
    for key, questions in data.items():
        if not isinstance(questions, list):
            raise InvalidInputError(f"qa.json[{key!r}] must be a list of questions")
        for index, question in enumerate(questions):
            check_question(key, index, question)
    return {str(k): v for k, v in data.items()}


def read_annotations(path: Path) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]], dict[int, str]]:
    """annotations.json: images (file order), annotations by id, category names by id (may be empty)."""
    data = _read_json(path, "annotations.json")
    if not isinstance(data, dict) or not {"images", "annotations"} <= set(data):
        raise InvalidInputError(f"{path} is not COCO-style: it needs 'images' and 'annotations'")
    anns: dict[int, dict[str, Any]] = {}
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann or "image_id" not in ann:
            raise InvalidInputError(f"{path}: annotations[{index}] lacks id or image_id")
        if not ann.get("segmentation") and "bbox" not in ann:
            raise InvalidInputError(f"{path}: annotation {ann['id']} has neither segmentation nor bbox")
        anns[int(ann["id"])] = ann
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise InvalidInputError(f"{path}: images[{index}] lacks id or file_name")
    categories = {int(c["id"]): str(c["name"]) for c in data.get("categories") or [] if "id" in c and "name" in c}
    return list(data["images"]), anns, categories


# ----- scoring ----------------------------------------------------------------------------------
def object_scores(record: dict[str, Any], questions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One object's normalised positive / negative score (None without such questions) from its judge answers."""
    answers = record["judge"]
    recognition = next((a["score"] for a in answers if a["type"] == "recognition"), None)
    capped = recognition == "incorrect"
    sums = {"positive": [0.0, 0.0], "negative": [0.0, 0.0]}
    for answer in answers:
        if answer["type"] == "recognition":
            continue
        index = int(answer["prompt_id"].rsplit("/", 1)[1])
        got = float(answer["score"] or 0.0)
        sums[answer["type"]][0] += min(0.0, got) if capped else got
        sums[answer["type"]][1] += max(c[1] for c in questions[index]["choices"])
    scores: dict[str, Any] = {kind: (total / best if best else None) for kind, (total, best) in sums.items()}
    return scores | {"recognition": recognition}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# ----- the benchmark ----------------------------------------------------------------------------
class DlcBench(Benchmark):
    task = "dlc-bench"

    def __init__(self, root: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                 judge: JudgeConfig | None = None, region_mode: str = "mask",
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InvalidInputError(f"DLC-Bench folder {self.root} does not exist; give the DLC-bench folder holding "
                                    "annotations.json, qa.json, class_names.json and images/")
        if judge is None or not judge.url:
            raise InvalidInputError("dlc-bench needs a judge: --judge-url URL of an OpenAI-compatible endpoint, e.g. "
                                    "http://localhost:8000/v1 (`vllm serve meta-llama/Meta-Llama-3.1-8B-Instruct`)")
        if max_new_tokens < 1:
            raise InvalidInputError(f"--dlc-max-new-tokens must be >= 1, got {max_new_tokens}")
        self.images_dir = Path(images_dir) if images_dir else self.root / "images"
        self.region_mode = region_mode
        self.max_new_tokens = max_new_tokens
        self.judge = judge
        self.client = JudgeClient(judge)
        self._checked = False
        self.qa = read_qa(self.root / "qa.json")
        self.images, self.anns, categories = read_annotations(self.root / "annotations.json")
        self.class_names = self._class_names(categories)

    def _class_names(self, categories: dict[int, str]) -> dict[str, str]:
        """class_names.json; without it, each annotation's category name (annotations.json's categories)."""
        missing = [k for k in self.qa if not k.isdigit() or int(k) not in self.anns]
        if missing:
            raise InvalidInputError(f"qa.json has questions for {len(missing)} annotation(s) not in annotations.json, "
                                    f"e.g. {missing[0]}; use the qa.json and annotations.json of the same release")
        path = self.root / "class_names.json"
        names = {str(k): str(v) for k, v in _read_json(path, "class_names.json").items()} if path.exists() else {}
        for key in self.qa:
            if key not in names:
                category = categories.get(self.anns[int(key)].get("category_id"))
                if category is None:
                    raise InvalidInputError(f"no class name for annotation {key}: add it to {path} (annotation id -> "
                                            "class name), as DLC-Bench ships it")
                names[key] = category
        return names

    def settings(self) -> dict[str, Any]:
        return {"judge_model": self.judge.model, "judge_prompt": PROMPT_VERSION, "judge_temperature": JUDGE_TEMPERATURE,
                "judge_max_tokens": JUDGE_MAX_TOKENS, "region_mode": self.region_mode,
                "max_new_tokens": self.max_new_tokens}

    def data_files(self) -> list[Path]:
        files = [self.root / "annotations.json", self.root / "qa.json"]
        return files + [p for p in (self.root / "class_names.json",) if p.exists()]

    def preflight(self) -> None:
        if not self._checked:
            self.client.check()
            self._checked = True

    def jobs(self, limit: int | None = None) -> list[ImageJob]:
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in self.anns.values():
            if str(ann["id"]) in self.qa:
                by_image.setdefault(ann["image_id"], []).append(ann)
        jobs = []
        for image in self.images:
            anns = by_image.get(image["id"])
            if not anns:
                continue
            queries = [Query(str(a["id"]), {"image_id": image["id"], "ann_id": a["id"],
                                            "class_name": self.class_names[str(a["id"])]},
                             annotation_region(a, self.region_mode)) for a in anns]
            jobs.append(ImageJob(self.images_dir / image["file_name"], queries))
            if limit is not None and len(jobs) >= limit:
                break
        return jobs

    def questions(self, ann_id: int | str) -> list[tuple[str, dict[str, Any]]]:
        """(prompt id, question) for an object: the recognition question, then qa.json's in order."""
        key = str(ann_id)
        return [(f"{key}/recognition", recognition_question(self.class_names[key]))] + [
            (f"{key}/{i}", q) for i, q in enumerate(self.qa[key])]

    def predict(self, model, jobs: Sequence[ImageJob]) -> list[list[dict[str, Any]]]:
        answers = model.describe_many([(str(job.image), [q.payload for q in job.queries]) for job in jobs],
                                      task="detailed", max_new_tokens=self.max_new_tokens)
        objects = [(query, answer.text) for job, image_answers in zip(jobs, answers)
                   for query, answer in zip(job.queries, image_answers)]
        asked = [(index, prompt_id, question) for index, (query, _) in enumerate(objects)
                 for prompt_id, question in self.questions(query.record["ann_id"])]
        try:
            replies = self.client.complete_many([judge_prompt(objects[i][1], q) for i, _, q in asked])
        except InvalidInputError as error:
            raise InvalidInputError(f"{error} (objects of earlier batches are saved in predictions.jsonl; run the same "
                                    "command again to resume)") from None
        fields = [{"description": text, "judge": []} for _, text in objects]
        for (index, prompt_id, question), reply in zip(asked, replies):
            choice = parse_choice(reply, [text for text, _ in question["choices"]])
            fields[index]["judge"].append({"prompt_id": prompt_id, "type": question["type"], "reply": reply,
                                           "choice": choice,
                                           "score": question["choices"][choice][1] if choice is not None else None})
        out, position = [], 0
        for job in jobs:
            out.append(fields[position : position + len(job.queries)])
            position += len(job.queries)
        return out

    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        per_object = [object_scores(r, self.qa[str(r["ann_id"])]) for r in records]
        positives = [s["positive"] for s in per_object if s["positive"] is not None]
        negatives = [s["negative"] for s in per_object if s["negative"] is not None]
        positive, negative = _mean(positives), _mean(negatives)
        metrics = {
            "objects": len(records),
            "questions": sum(len(r["judge"]) for r in records),
            "positive": positive,
            "negative": negative,
            "average": (positive + negative) / 2,
            "objects_with_negatives": len(negatives),
            "recognition_incorrect": sum(s["recognition"] == "incorrect" for s in per_object),
            "unparsable_replies": sum(a["choice"] is None for r in records for a in r["judge"]),
            "judge": {"model": self.judge.model, "url": self.client.chat_url},
        }
        rows: list[tuple[str, str, Any]] = [("all", "objects", metrics["objects"]),
                                             ("all", "positive score (%)", positive),
                                             ("all", "negative score (%)", negative),
                                             ("all", "average of positive and negative (%)", metrics["average"]),
                                             ("judge", "questions asked", metrics["questions"]),
                                             ("judge", "recognition said no (scores capped at 0)",
                                              metrics["recognition_incorrect"]),
                                             ("judge", "unparsable replies (scored 0)", metrics["unparsable_replies"])]
        plots = {"dlc_positive_distribution": {"kind": "histogram", "title": "dlc-bench: per-object positive score",
                                               "values": positives, "xlabel": "positive score (fraction of max)"}}
        return Scores(metrics, rows, plots)
