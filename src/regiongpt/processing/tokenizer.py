"""Train a small byte-level BPE tokenizer in-process (the built-in model and tests use it;
nothing is downloaded). It carries the placeholders RegionGPT needs as special tokens."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>", "<region>")


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, special_tokens: tuple[str, ...] = SPECIAL_TOKENS
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer over ``texts`` that adds ``<s>`` at the start of each text.

    ``special_tokens`` must start with ``<unk>, <s>, </s>, <pad>``; the rest become additional
    special tokens (by default ``<image>`` and ``<region>``).
    """
    if tuple(special_tokens[:4]) != SPECIAL_TOKENS[:4]:
        raise ValueError(f"special_tokens must start with {SPECIAL_TOKENS[:4]}")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=list(special_tokens[4:]),
        padding_side="left",
    )
