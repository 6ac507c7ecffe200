"""Oracle REC: can a small language model learn to match a phrase to one of N region tokens?

The built-in model's REC stays at the rate of guessing (bench/demo_model.md) although
linear probes read each region's category, colour and size from its embedding. This
benchmark removes the vision side: each region token is a *perfect* embedding (learned
vectors for its category, colour and size, plus its number), the prompt is the paper's REC
wording in miniature, and only the answer digit of "Region [k]" is learned. If the language
model cannot learn the matching here, no vision improvement will fix REC.

    python bench/rec_oracle.py                         # the built-in model's LM: 4 layers x 128
    python bench/rec_oracle.py --max-candidates 3 --filler 0 --steps 1500
    python bench/rec_oracle.py --tied                  # region = sum of its label words' embeddings
    python bench/rec_oracle.py --phrase-first          # "find 'PHRASE' among <region1>, ..."
    python bench/rec_oracle.py --verify                # answer "region 1 no , region 2 yes , . region [ 2 ]"
    python bench/rec_oracle.py --verify --describe     # "region 1 small red bar no , region 2 ... yes , ..."
    python bench/rec_oracle.py --feature-noise 1.0     # region embeddings with noise as large as themselves

A held-out prompt counts as right when every answer token of it is (with ``--verify``, each
yes/no and the final digit, which is what greedy decoding would need). Prints held-out
accuracy (512 fixed prompts) every ``--eval-every`` steps and a final JSON
line; the guessing rate is printed first.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import NamedTuple

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel

CATEGORIES, COLOURS, SIZES, MAX_CANDIDATES = 12, 8, 3, 8
WORDS = ("img from the provided masks denoted by , which one fits ' ? answer question using template region [ x ] . "
         "assistant: <region> find among yes no").split()


class Vocabulary:
    """Token ids: categories, colours, sizes, digits 1..8, then the template words."""

    def __init__(self):
        self.category, self.colour = 1, 1 + CATEGORIES
        self.size = self.colour + COLOURS
        self.digit = self.size + SIZES
        self.words = {w: self.digit + MAX_CANDIDATES + i for i, w in enumerate(WORDS)}
        self.size_of = self.digit + MAX_CANDIDATES + len(WORDS)

    def __call__(self, text: str) -> list[int]:
        return [self.words[w] for w in text.split()]


class Prompt(NamedTuple):
    """One training or held-out prompt."""

    ids: list[int]
    region_positions: list[int]  # where region tokens (perfect embeddings) go
    region_labels: list[tuple]  # (category, colour, size) of each region token
    region_numbers: list[int]  # 0-based number of each region token
    answers: list[int]  # the learned answer tokens: each question's digit (with --verify, its yes/no checks too)
    answer_positions: list[int]  # the position that predicts each answer
    candidates: int


def make_readout_prompt(rng: random.Random, vocab: Vocabulary, args) -> Prompt:
    """A prompt that names one region and asks for its number: what the relation task's answers
    ("Region [3] is left of Region [5]") teach the real model."""
    number = rng.randrange(args.max_candidates)
    labels = (rng.randrange(CATEGORIES), rng.randrange(COLOURS), rng.randrange(SIZES))
    ids = vocab("img") * args.filler + vocab("which one fits")
    position = len(ids)
    ids += vocab("<region> ? answer the question using the template region [ x ] . assistant: region [")
    return Prompt(ids, [position], [labels], [number], [vocab.digit + number], [len(ids) - 1], 1)


def singling_phrase(vocab: Vocabulary, objects: list[tuple], target: int,
                    rng: random.Random | None = None) -> list[int] | None:
    """The words that single out ``objects[target]``: its category alone, or colour + category.

    With ``rng`` (``--size-phrases``), size + category may do it too, and one of the forms that
    single the object out is drawn at random (the synthetic world's second most common form is
    size + category)."""
    category, colour, size = objects[target]
    same = [o for o in objects if o[0] == category]
    forms = []
    if len(same) == 1:
        forms.append([vocab.category + category])
    if sum(o[1] == colour for o in same) == 1:
        forms.append([vocab.colour + colour, vocab.category + category])
    if rng is not None and sum(o[2] == size for o in same) == 1:
        forms.append([vocab.size + size, vocab.category + category])
    if not forms:
        return None
    return rng.choice(forms) if rng is not None else forms[0]


def make_prompt(rng: random.Random, vocab: Vocabulary, args, queries: int = 1,
                candidates: tuple[int, int] | None = None) -> Prompt:
    """One REC prompt with ``candidates`` (min, max; default the arguments') regions; with
    ``queries`` > 1 more questions about the same candidates follow, each answered
    ("... region [ K ] which one fits ...")."""
    low, high = candidates or (args.min_candidates, args.max_candidates)
    while True:
        n = rng.randint(low, high)
        objects = [(rng.randrange(CATEGORIES), rng.randrange(COLOURS), rng.randrange(SIZES)) for _ in range(n)]
        singled = [(k, singling_phrase(vocab, objects, k, rng if args.size_phrases else None)) for k in range(n)]
        singled = [(k, phrase) for k, phrase in singled if phrase is not None]
        if singled:
            break
    asked = [rng.choice(singled) for _ in range(queries)]
    quoted = [vocab("'") + vocab("the") + phrase + vocab("'") for _, phrase in asked]
    positions = []
    ids = vocab("img") * args.filler
    if args.phrase_first:
        ids += vocab("find") + quoted[0] + vocab("among")
    else:
        ids += vocab("from the provided masks denoted by")
    for k in range(n):
        if args.number_as_text or args.text_regions:
            ids += vocab("region") + [vocab.digit + k]
        if args.text_regions:  # the region written as its label words: matching is token identity
            category_k, colour_k, size_k = objects[k]
            ids += [vocab.size + size_k, vocab.colour + colour_k, vocab.category + category_k] + vocab(",")
            continue
        positions.append(len(ids))
        ids += vocab("<region> ,")
    answers, answer_positions = [], []
    for q, (target, _) in enumerate(asked):
        if q:
            ids += [answers[-1]] + vocab("] .")
        if not args.phrase_first:
            ids += vocab("which one fits") + quoted[q] + vocab("?")
        if args.verify:  # check the candidates in order up to the first that fits, then name it
            ids += vocab("answer the question using the template region [ x ] . assistant:")
            for k in range(target + 1):
                ids += vocab("region") + [vocab.digit + k]
                if args.describe:  # first say what region k is, then compare that text with the phrase
                    category_k, colour_k, size_k = objects[k]
                    for word in (vocab.size + size_k, vocab.colour + colour_k, vocab.category + category_k):
                        answers.append(word)
                        answer_positions.append(len(ids) - 1)
                        ids.append(word)
                answers.append(vocab.words["yes" if k == target else "no"])
                answer_positions.append(len(ids) - 1)
                ids += [answers[-1]] + vocab(",")
            ids += vocab(". region [")
        else:
            ids += vocab("answer the question using the template region [ x ] . assistant: region [")
        answers.append(vocab.digit + target)
        answer_positions.append(len(ids) - 1)
    embedded = objects if positions else []
    return Prompt(ids, positions, embedded, list(range(len(embedded))), answers, answer_positions, n)


class OracleREC(nn.Module):
    """A Llama whose region tokens are perfect embeddings of their labels (and number)."""

    def __init__(self, vocab: Vocabulary, args):
        super().__init__()
        config = LlamaConfig(vocab_size=vocab.size_of, hidden_size=args.width, intermediate_size=3 * args.width,
                             num_hidden_layers=args.layers, num_attention_heads=args.heads,
                             num_key_value_heads=args.heads, max_position_embeddings=512)
        config._attn_implementation = "eager" if args.attention_supervision else "sdpa"
        self.lm, self.vocab, self.args = LlamaModel(config), vocab, args
        self.head = nn.Linear(args.width, vocab.size_of, bias=False)
        std = config.initializer_range  # the scale of word embeddings
        self.labels = nn.ParameterDict({k: nn.Parameter(torch.randn(n, args.width) * std) for k, n in
                                        (("category", CATEGORIES), ("colour", COLOURS), ("size", SIZES))})
        self.number = nn.Parameter(torch.randn(MAX_CANDIDATES, args.width) * std)
        if args.symmetric_qk:  # keys start equal to queries: each token attends to tokens like itself
            with torch.no_grad():
                for layer in self.lm.layers:
                    layer.self_attn.k_proj.weight.copy_(layer.self_attn.q_proj.weight)

    def region_embedding(self, category: int, colour: int, size: int, number: int) -> torch.Tensor:
        if self.args.tied:  # the sum of the embeddings of its label words
            words = self.lm.embed_tokens.weight
            e = words[self.vocab.category + category] + words[self.vocab.colour + colour] + words[self.vocab.size + size]
        else:
            e = self.labels["category"][category] + self.labels["colour"][colour] + self.labels["size"][size]
        if self.args.feature_noise:  # imperfect features: fresh noise of the given norm relative to e
            noise = torch.randn_like(e)
            e = e + noise * (self.args.feature_noise * e.norm() / noise.norm())
        return e if self.args.number_as_text else e + self.number[number]

    def forward(self, prompts, with_attention: bool = False):  # -> (answers, vocab) logits at the answer digits
        length = max(len(p.ids) for p in prompts)
        ids = torch.zeros(len(prompts), length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            ids[b, :len(p.ids)], mask[b, :len(p.ids)] = torch.tensor(p.ids), 1
        embeds = self.lm.embed_tokens(ids)
        rows, cols, vectors = [], [], []
        for b, p in enumerate(prompts):
            for pos, labels, number in zip(p.region_positions, p.region_labels, p.region_numbers):
                rows.append(b), cols.append(pos), vectors.append(self.region_embedding(*labels, number))
        if vectors:
            embeds = embeds.index_put((torch.tensor(rows), torch.tensor(cols)), torch.stack(vectors))
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, output_attentions=with_attention)
        rows = torch.tensor([b for b, p in enumerate(prompts) for _ in p.answer_positions])
        cols = torch.tensor([c for p in prompts for c in p.answer_positions])
        logits = self.head(out.last_hidden_state[rows, cols])
        if not with_attention:
            return logits
        # (answers, L) attention of the supervised head at each answer position
        return logits, out.attentions[self.args.supervised_layer][rows, 0, cols]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--min-candidates", type=int, default=3)
    parser.add_argument("--max-candidates", type=int, default=MAX_CANDIDATES)
    parser.add_argument("--filler", type=int, default=36, help="image tokens before the question")
    parser.add_argument("--tied", action="store_true", help="region = sum of its label words' embeddings")
    parser.add_argument("--number-as-text", action="store_true", help="'region K' in text before each region token")
    parser.add_argument("--phrase-first", action="store_true", help="the phrase before the candidates")
    parser.add_argument("--text-regions", action="store_true",
                        help="each candidate written as 'region K SIZE COLOUR CATEGORY' (no region embeddings)")
    parser.add_argument("--readout-fraction", type=float, default=0.0,
                        help="share of training prompts that name one region and ask its number")
    parser.add_argument("--attention-supervision", type=float, default=0.0,
                        help="weight of a loss that points one head at the answer's region token")
    parser.add_argument("--supervised-layer", type=int, default=1)
    parser.add_argument("--queries", type=int, default=1,
                        help="training questions per listing of the candidates (dense supervision; held-out: 1)")
    parser.add_argument("--two-candidate-steps", type=int, default=0,
                        help="a curriculum: train on two-candidate prompts for this many steps first")
    parser.add_argument("--verify", action="store_true",
                        help="answer by checking each candidate in order ('region 1 no , region 2 yes , . region [ 2 ]')")
    parser.add_argument("--describe", action="store_true",
                        help="with --verify, each check first describes the candidate "
                             "('region 1 small red bar no , region 2 large blue ring yes , . region [ 2 ]')")
    parser.add_argument("--size-phrases", action="store_true",
                        help="phrases may also single out by size + category; each draws one of the forms that do")
    parser.add_argument("--feature-noise", type=float, default=0.0,
                        help="add fresh noise to each region embedding, of this norm relative to the embedding's")
    parser.add_argument("--symmetric-qk", action="store_true",
                        help="initialise each layer's key projection equal to its query projection")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.attention_supervision and args.text_regions:
        parser.error("--attention-supervision needs region tokens (not --text-regions)")
    if args.attention_supervision and not 0 <= args.supervised_layer < args.layers:
        parser.error(f"--supervised-layer must name one of the {args.layers} layers (0-based)")
    if args.describe and not args.verify:
        parser.error("--describe is a kind of --verify answer: add --verify")
    if args.verify and args.attention_supervision:
        parser.error("--attention-supervision needs answers that are digits (not --verify)")
    if args.verify and args.queries > 1:
        parser.error("--verify asks one question per listing (not --queries > 1)")
    if args.queries > 1 and args.phrase_first:
        parser.error("--queries > 1 needs the paper's layout (not --phrase-first)")
    if not 2 <= args.min_candidates <= args.max_candidates <= MAX_CANDIDATES:
        parser.error(f"need 2 <= --min-candidates <= --max-candidates <= {MAX_CANDIDATES}")
    torch.manual_seed(args.seed)
    vocab = Vocabulary()
    model = OracleREC(vocab, args)
    held_out_rng, rng = random.Random(10_000 + args.seed), random.Random(args.seed)
    held_out = [make_prompt(held_out_rng, vocab, args) for _ in range(512)]
    guess = sum(1 / p.candidates for p in held_out) / len(held_out)
    answers = torch.tensor([a for p in held_out for a in p.answers])
    # each held-out prompt is right when all its answers are (greedy decoding then gives the target)
    prompt_of = torch.tensor([i for i, p in enumerate(held_out) for _ in p.answers])
    print(f"guessing rate {guess:.3f}", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    start, curve = time.time(), []
    for step in range(1, args.steps + 1):
        # a curriculum: two candidates for the first --two-candidate-steps steps
        candidates = (2, 2) if step <= args.two_candidate_steps else None
        prompts = [make_readout_prompt(rng, vocab, args) if rng.random() < args.readout_fraction
                   else make_prompt(rng, vocab, args, args.queries, candidates) for _ in range(args.batch)]
        targets = torch.tensor([a for p in prompts for a in p.answers])
        if args.attention_supervision:
            logits, attention = model(prompts, with_attention=True)
            # the answer's region token: where the answer digit's region sits
            where = torch.tensor([p.region_positions[p.region_numbers.index(a - vocab.digit)]
                                  for p in prompts for a in p.answers])
            picked = attention[torch.arange(len(where)), where].clamp_min(1e-9)
            loss = nn.functional.cross_entropy(logits, targets) - args.attention_supervision * picked.log().mean()
        else:
            loss = nn.functional.cross_entropy(model(prompts), targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                logits = torch.cat([model(held_out[i:i + 128]) for i in range(0, 512, 128)])
            wrong = torch.zeros(len(held_out)).index_add_(0, prompt_of, (logits.argmax(-1) != answers).float())
            accuracy = float((wrong == 0).float().mean())
            curve.append((step, round(accuracy, 3)))
            checks = ""
            if args.verify:  # how often each kind of answer token is right
                right = logits.argmax(-1) == answers
                yes_no = (answers == vocab.words["yes"]) | (answers == vocab.words["no"])
                digit = (answers >= vocab.digit) & (answers < vocab.digit + MAX_CANDIDATES) & ~yes_no
                kinds = {"yes/no": yes_no, "digit": digit, "words": ~yes_no & ~digit}
                checks = " (" + ", ".join(f"{k} {right[m].float().mean():.3f}" for k, m in kinds.items() if m.any()) + ")"
            print(f"step {step} loss {loss.item():.3f} held-out accuracy {accuracy:.3f}{checks} "
                  f"({time.time() - start:.0f} s)", flush=True)
    print(json.dumps({"settings": vars(args), "guessing_rate": round(guess, 3), "curve": curve,
                      "seconds": round(time.time() - start, 1)}))


if __name__ == "__main__":
    main()
