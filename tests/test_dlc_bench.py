"""DLC-Bench end to end: a tiny DLC-Bench-format data set built from the synthetic world, the
built-in model describing its objects, and a local OpenAI-compatible judge over real HTTP
(http.server on 127.0.0.1) that answers by rule. The reported scores are recomputed by hand
from the judge's saved replies; resume, judge failures and the HTTP client's retries and
errors are checked against the requests the server counted."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from regiongpt.cli.main import main
from regiongpt.data.synth import write_world
from regiongpt.errors import InvalidInputError
from regiongpt.evaluation.dlc_bench import (DlcBench, JudgeClient, JudgeConfig, judge_prompt, object_scores,
                                            parse_choice, recognition_question)
from regiongpt.evaluation.runner import read_predictions

JUDGE_MODEL = "judge-test"
GARBLED_REPLY = "I would rather not say."


# ----- a rule-based judge behind a real HTTP server -----------------------------------------------
def rule_reply(prompt: str) -> str:
    """The choice whose quoted key words all appear in the description (the most such words wins),
    else the choice without key words ("not mentioned"); recognition: Yes iff the class name appears;
    a question containing GARBLE gets a reply naming no choice."""
    description = prompt.split("The description is:\n", 1)[1].split("\n\nFrom the description above", 1)[0].lower()
    lines = prompt.split("with one of the choices:\n", 1)[1].strip().splitlines()
    question, choices = lines[0], [line[3:] for line in lines[1:]]
    if "GARBLE" in question:
        return GARBLED_REPLY
    named = re.search(r"(?:is an? |are )(.+?) or (?:an object|objects) of a similar type", question)
    if named:
        return "A. Yes" if named.group(1).lower() in description else "B. No"

    def mentioned(word: str) -> bool:
        return re.search(rf"\b{re.escape(word.lower())}\b", description) is not None

    best = next(i for i, text in enumerate(choices) if "'" not in text)
    most = 0
    for i, text in enumerate(choices):
        keys = re.findall(r"'([^']+)'", text)
        if keys and all(mentioned(k) for k in keys) and len(keys) > most:
            best, most = i, len(keys)
    return f"{'ABCDE'[best]}. {choices[best]}"


class FakeJudge:
    """State of the local judge: counts chat requests; can throttle, fail, garble or demand a key."""

    def __init__(self):
        self.lock = threading.Lock()
        self.chat_requests = 0
        self.prompts: list[str] = []
        self.fail_after: int | None = None  # chat requests after this many answer HTTP 500
        self.throttle = 0  # the next N chat requests answer HTTP 429
        self.garbage = False  # answer 200 with a body that is not JSON
        self.api_key: str | None = None

    def handle(self, handler: BaseHTTPRequestHandler) -> tuple[int, bytes, dict[str, str]]:
        if self.api_key and handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, b'{"error": {"message": "invalid api key"}}', {}
        if handler.command == "GET" and handler.path == "/v1/models":
            return 200, json.dumps({"object": "list", "data": [{"id": JUDGE_MODEL}]}).encode(), {}
        if handler.command != "POST" or handler.path != "/v1/chat/completions":
            return 404, b'{"error": "not found"}', {}
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        assert body["temperature"] == 0 and body["max_tokens"] == 300 and body["model"] == JUDGE_MODEL
        prompt = body["messages"][0]["content"]
        with self.lock:
            self.chat_requests += 1
            if self.throttle:
                self.throttle -= 1
                return 429, b'{"error": "slow down"}', {"Retry-After": "0"}
            if self.fail_after is not None and self.chat_requests > self.fail_after:
                return 500, b'{"error": "judge crashed"}', {}
            self.prompts.append(prompt)
        if self.garbage:
            return 200, b"<html>not an API</html>", {}
        reply = {"id": "x", "object": "chat.completion", "model": JUDGE_MODEL,
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": rule_reply(prompt)}}]}
        return 200, json.dumps(reply).encode(), {}


@pytest.fixture(scope="module")
def judge():
    state = FakeJudge()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            status, payload, headers = state.handle(self)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def fresh_judge(judge):
    """The module's server with its counters and failure modes reset."""
    judge.chat_requests, judge.prompts = 0, []
    judge.fail_after, judge.throttle, judge.garbage, judge.api_key = None, 0, False, None
    yield judge
    judge.fail_after, judge.throttle, judge.garbage, judge.api_key = None, 0, False, None


# ----- a DLC-Bench-format data set from the synthetic world -------------------------------------
def questions_for(ann: dict, category: str, others: list[str]) -> list[dict]:
    attrs = ann["attributes"]
    colour, texture = attrs["colour"], attrs["texture"]
    wrong_colour = "black" if colour != "black" else "white"
    wrong_texture = "striped" if texture != "striped" else "solid"
    other = next(o for o in others if o != category)

    def positive(kind: str, right: str, wrong: str) -> dict:
        return {"question": "Which of the following is applicable to the description?", "type": "positive",
                "choices": [[f"The {category} is not mentioned.", 0],
                            [f"The '{category}' is mentioned, but not its {kind}.", 0.5],
                            [f"The '{category}' is mentioned and its {kind} is '{wrong}'.", -1],
                            [f"The '{category}' is mentioned and its {kind} is '{right}'.", 1]]}

    negative = {"question": "Which of the following is applicable to the description?", "type": "negative",
                "subtype": "salient negative",
                "choices": [[f"The {other}s are not mentioned in the description.", 1],
                            [f"The '{other}' is mentioned in the description.", -1]]}
    return [positive("colour", colour, wrong_colour), positive("texture", texture, wrong_texture), negative]


@pytest.fixture(scope="module")
def dlc(tmp_path_factory):
    """DLC-bench/ with annotations.json, images/, qa.json, class_names.json for 2 synthetic images.

    One annotation has no questions (not evaluated), one object's class name is wrong ("zebra":
    the judge's recognition says No), one object has an extra question the judge garbles."""
    world = tmp_path_factory.mktemp("world")
    write_world(world, images=2, seed=5, val_fraction=0.5, progress=False)
    root = tmp_path_factory.mktemp("dlc") / "DLC-bench"
    shutil.copytree(world / "images", root / "images")
    instances = json.loads((world / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    annotations = {"images": instances["images"], "annotations": instances["annotations"]}  # no categories, as O365's
    (root / "annotations.json").write_text(json.dumps(annotations))
    anns = instances["annotations"][:-1]
    qa = {str(a["id"]): questions_for(a, names[a["category_id"]], ["arrow", "heart", "ring"]) for a in anns}
    garbled = dict(qa[str(anns[0]["id"])][0], question="GARBLE Which of the following is applicable?")
    qa[str(anns[0]["id"])].append(garbled)
    (root / "qa.json").write_text(json.dumps(qa))
    class_names = {str(a["id"]): names[a["category_id"]] for a in anns}
    class_names[str(anns[1]["id"])] = "zebra"
    (root / "class_names.json").write_text(json.dumps(class_names))
    return root


def eval_args(dlc, judge_url: str, out, *extra: str) -> list[str]:
    return ["eval", "dlc-bench", "--data", str(dlc), "--out", str(out), "--judge-url", judge_url,
            "--judge-model", JUDGE_MODEL, "--dlc-max-new-tokens", "40", "--quiet", *extra]


def error_line(stderr: str) -> str:
    """The CLI's one error line (other stderr lines are progress bars)."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("regiongpt eval: error: "), stderr
    return lines[0]


def hand_scores(records: list[dict], qa: dict) -> dict:
    """DLC-Bench's scores recomputed from the judge's saved raw replies and qa.json alone."""
    positives, negatives, unparsable, said_no = [], [], 0, 0
    for record in records:
        key = str(record["ann_id"])
        answers = {a["prompt_id"]: a for a in record["judge"]}
        assert len(answers) == len(qa[key]) + 1
        recognition = answers[f"{key}/recognition"]["reply"]
        assert recognition in ("A. Yes", "B. No")
        capped = recognition == "B. No"
        said_no += capped
        sums = {"positive": [0.0, 0.0], "negative": [0.0, 0.0]}
        for index, question in enumerate(qa[key]):
            answer = answers[f"{key}/{index}"]
            if re.match(r"^[A-E]\. ", answer["reply"]):
                chosen = "ABCDE".index(answer["reply"][0])
                assert answer["choice"] == chosen and answer["score"] == question["choices"][chosen][1]
                got = question["choices"][chosen][1]
            else:
                assert answer["choice"] is None and answer["score"] is None
                unparsable += 1
                got = 0
            sums[question["type"]][0] += min(0, got) if capped else got
            sums[question["type"]][1] += max(score for _, score in question["choices"])
        positives.append(sums["positive"][0] / sums["positive"][1])
        if sums["negative"][1]:
            negatives.append(sums["negative"][0] / sums["negative"][1])
    positive, negative = sum(positives) / len(positives), sum(negatives) / len(negatives)
    return {"positive": positive, "negative": negative, "average": (positive + negative) / 2,
            "unparsable_replies": unparsable, "recognition_incorrect": said_no}


@pytest.fixture(scope="module")
def full_run(dlc, judge, tmp_path_factory):
    judge.chat_requests, judge.prompts = 0, []
    out = tmp_path_factory.mktemp("dlc-run")
    assert main(eval_args(dlc, judge.url, out)) == 0
    return out, judge.chat_requests, list(judge.prompts)


# ----- tests ------------------------------------------------------------------------------------
def test_cli_run_scores_equal_a_hand_computation_from_the_saved_judge_answers(full_run, dlc):
    out, requests, prompts = full_run
    qa = json.loads((dlc / "qa.json").read_text())
    records = read_predictions(out / "predictions.jsonl")
    assert sorted(r["query_id"] for r in records) == sorted(qa)  # the annotation without questions is skipped
    assert requests == sum(len(q) + 1 for q in qa.values())  # one judge call per question, recognition included
    assert {r["description"] for r in records} == {p.split("The description is:\n")[1].split("\n\nFrom")[0]
                                                  for p in prompts}
    assert all(p.startswith("Answer the multiple-choice question based on the text description") for p in prompts)
    results = json.loads((out / "results.json").read_text())
    metrics, expected = results["metrics"], hand_scores(records, qa)
    for name in ("positive", "negative", "average"):
        assert metrics[name] == pytest.approx(expected[name], abs=1e-12)
    assert metrics["unparsable_replies"] == expected["unparsable_replies"] == 1  # the GARBLE question
    assert metrics["recognition_incorrect"] == expected["recognition_incorrect"] >= 1  # the "zebra"
    assert metrics["objects"] == len(qa) and metrics["judge"]["model"] == JUDGE_MODEL
    assert results["settings"]["judge_model"] == JUDGE_MODEL
    report = (out / "report.md").read_text()
    assert "| all | positive score (%) |" in report and f"{100 * expected['average']:.2f}" in report
    assert "recognition question" in report  # the protocol is the module docstring


def test_interrupted_run_keeps_saved_objects_and_resume_does_not_ask_the_judge_again(full_run, dlc, fresh_judge,
                                                                                     tmp_path, capsys):
    qa = json.loads((dlc / "qa.json").read_text())
    first_image = [q.id for q in DlcBench(dlc, judge=JudgeConfig(fresh_judge.url)).jobs(1)[0].queries]
    first_image_questions = sum(len(qa[k]) + 1 for k in first_image)
    out = tmp_path / "run"
    fresh_judge.fail_after = first_image_questions + 2  # dies during the second image's batch
    assert main(eval_args(dlc, fresh_judge.url, out, "--batch-images", "1", "--judge-retries", "0")) == 2
    error = error_line(capsys.readouterr().err)
    assert "HTTP 500" in error and "run the same command again to resume" in error
    saved = read_predictions(out / "predictions.jsonl")
    assert [r["query_id"] for r in saved] == first_image  # the first batch survived the judge failure

    fresh_judge.fail_after, fresh_judge.chat_requests = None, 0
    assert main(eval_args(dlc, fresh_judge.url, out, "--batch-images", "1")) == 0
    remaining = sum(len(q) + 1 for k, q in qa.items() if k not in first_image)
    assert fresh_judge.chat_requests == remaining  # saved objects were not judged again
    resumed = json.loads((out / "results.json").read_text())["metrics"]
    uninterrupted = json.loads((full_run[0] / "results.json").read_text())["metrics"]
    for name in ("objects", "questions", "positive", "negative", "average", "unparsable_replies"):
        assert resumed[name] == pytest.approx(uninterrupted[name])

    fresh_judge.chat_requests = 0
    assert main(eval_args(dlc, fresh_judge.url, out)) == 0  # everything saved: nothing asked
    assert fresh_judge.chat_requests == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_or_missing_judge_is_a_one_line_error_with_exit_code_2(dlc, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main(eval_args(dlc, url, tmp_path / "o")) == 2
    error = error_line(capsys.readouterr().err)
    assert "cannot be reached" in error and url in error and "--judge-url" in error
    assert not (tmp_path / "o" / "predictions.jsonl").exists()  # failed before any work
    args = [a for a in eval_args(dlc, url, tmp_path / "o") if a not in ("--judge-url", url)]
    assert main(args) == 2
    assert "needs a judge: --judge-url" in capsys.readouterr().err


def test_judge_client_retries_throttling_and_rejects_garbage_and_missing_keys(fresh_judge, monkeypatch):
    prompt = judge_prompt("A red square.", recognition_question("square"))
    client = JudgeClient(JudgeConfig(fresh_judge.url, JUDGE_MODEL, retries=2, backoff_s=0.01))
    fresh_judge.throttle = 2
    assert client.complete(prompt) == "A. Yes" and fresh_judge.chat_requests == 3  # two 429s, then the answer
    fresh_judge.throttle, fresh_judge.chat_requests = 3, 0
    with pytest.raises(InvalidInputError, match="HTTP 429.*raise --judge-retries"):
        client.complete(prompt)
    assert fresh_judge.chat_requests == 3
    fresh_judge.throttle, fresh_judge.garbage = 0, True
    with pytest.raises(InvalidInputError, match="did not answer like an OpenAI chat-completions endpoint"):
        client.complete(prompt)
    fresh_judge.garbage, fresh_judge.api_key = False, "sesame"
    with pytest.raises(InvalidInputError, match="HTTP 401.*--judge-api-key-env"):
        client.check()
    with pytest.raises(InvalidInputError, match="JUDGE_KEY.*unset"):
        JudgeClient(JudgeConfig(fresh_judge.url, JUDGE_MODEL, api_key_env="JUDGE_KEY"))
    monkeypatch.setenv("JUDGE_KEY", "sesame")
    keyed = JudgeClient(JudgeConfig(fresh_judge.url + "/chat/completions", JUDGE_MODEL, api_key_env="JUDGE_KEY"))
    keyed.check()
    assert keyed.complete(prompt) == "A. Yes"
    with pytest.warns(UserWarning, match="set --judge-model"):
        JudgeClient(JudgeConfig(fresh_judge.url, "other-model", api_key_env="JUDGE_KEY")).check()


def test_parse_choice_follows_dam_rules():
    choices = ["The wing is not mentioned.", "The wing is mentioned.", "The colour of the wing is red."]
    assert parse_choice("B", choices) == 1
    assert parse_choice("c. The colour of the wing is red.", choices) == 2
    assert parse_choice("The answer: The colour of the wing is red.", choices) == 2  # one choice inside the reply
    assert parse_choice("A. something else", choices) == 0  # letter prefix
    assert parse_choice("wing is mentioned", choices) == 1  # reply inside a choice (the longest)
    assert parse_choice("C\n", choices) == 2
    assert parse_choice("D. The tail.", choices) is None  # a letter beyond the choices
    assert parse_choice(GARBLED_REPLY, choices) is None and parse_choice("  ", choices) is None
    assert parse_choice("Yes", ["Yes", "No"]) == 0 and parse_choice("B. No", ["Yes", "No"]) == 1


def test_recognition_wording_and_data_errors(dlc, tmp_path):
    assert "the object in the description is an apple or an object" in recognition_question("apple")["question"]
    assert "is a unicycle or" in recognition_question("unicycle")["question"]
    assert "the objects in the description are glasses or objects" in recognition_question("glasses")["question"]
    assert "is a bus or" in recognition_question("bus")["question"]
    bad = tmp_path / "bad"
    shutil.copytree(dlc, bad, ignore=shutil.ignore_patterns("images"))
    qa = json.loads((bad / "qa.json").read_text())
    next(iter(qa.values()))[0]["choices"] = [["only one", 1]]
    (bad / "qa.json").write_text(json.dumps(qa))
    with pytest.raises(InvalidInputError, match="choices must be 2 to 5"):
        DlcBench(bad, judge=JudgeConfig("http://127.0.0.1:9/v1"))
    with pytest.raises(InvalidInputError, match="must be an http"):
        DlcBench(dlc, judge=JudgeConfig("localhost:8000"))


def test_object_scores_cap_after_a_failed_recognition_and_normalise_by_the_best_choice():
    def question(kind, scores):
        return {"question": "?", "type": kind, "choices": [[f"c{i}", s] for i, s in enumerate(scores)]}

    questions = [question("positive", [0, 0.5, -1, 2]), question("positive", [0, 1]), question("negative", [1, -1])]

    def record(recognition, scores):
        answers = [{"prompt_id": "7/recognition", "type": "recognition", "choice": 0, "score": recognition}]
        answers += [{"prompt_id": f"7/{i}", "type": q["type"], "choice": None if s is None else 0, "score": s}
                    for i, (q, s) in enumerate(zip(questions, scores))]
        return {"judge": answers}

    assert object_scores(record("correct", [2, None, 1]), questions) == {"positive": 2 / 3, "negative": 1.0,
                                                                         "recognition": "correct"}
    assert object_scores(record("incorrect", [0.5, 1, -1]), questions) == {"positive": 0.0, "negative": -1.0,
                                                                           "recognition": "incorrect"}
    # an unparsable recognition applies no cap; an object without negative questions has no negative score
    assert object_scores(record(None, [-1, 1]), questions) == {"positive": 0.0, "negative": None, "recognition": None}
