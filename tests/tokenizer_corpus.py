"""A seeded corpus of class names and prompts that stress a CLIP tokenizer (tests/test_tokenizer.py).

Unicode from many scripts, accents (composed and decomposed), emoji (with ZWJ sequences and skin tones),
html entities (named, numeric, double-escaped), mojibake ftfy repairs, whitespace runs (tabs, NBSP, ideographic
space, newlines), punctuation and digits, contractions, the special tokens' text, and very long names that
run past any context length.
"""

from __future__ import annotations

import random

WORDS = ["cat", "dog", "forklift", "pallet", "golden retriever", "espresso machine", "tree", "boat", "a", "photo",
         "of", "the", "car", "red", "blue", "sketch", "painting", "mosaic art", "impressionistic", "striped"]
PIECES = [
    "café", "cafe\u0301", "naïve", "Ærøskøbing", "São Paulo", "Zürich", "façade", "résumé", "Ñandú", "İstanbul", "straße",
    "東京", "北京烤鸭", "ラーメン", "김치", "русский медведь", "Ελληνικά", "עברית", "العربية", "हिन्दी", "ไทย", "Ⅻ", "ﬁsh",
    "😀", "🐈", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷", "☕", "🦄🦄🦄",
    "&amp;", "&lt;b&gt;", "&quot;hi&quot;", "&#39;", "&#x263A;", "&amp;amp;", "&nbsp;", "&eacute;", "&copy;", "&bogus;",
    "Ã©", "â€™", "Ã¼ber", "donâ€™t",  # mojibake ftfy fixes
    "\t", "  ", "\u00a0", "\u3000", "\n", "\r\n", "\u2003", "\u200b",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "don't", "it's", "O'Neil",
    "123", "3.14", "1,000", "v2.0", "#1", "@home", "e-mail", "x_y", "C++", "!!!", "?!", "...", "(a)", "[b]", "{c}",
    "<start_of_text>", "<end_of_text>", "<|endoftext|>", "</w>", "ÿ", "\u0000", "\x7f", "\u00ad",
]


def corpus(n: int = 10_000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = [""]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.05:  # very long: past any context length (truncation keeps eot last)
            out.append(" ".join(rng.choice(WORDS + PIECES) for _ in range(rng.randint(60, 200))))
        elif kind < 0.15:  # whitespace runs only / around
            out.append(rng.choice(["", " ", "\t"]) * rng.randint(0, 5) + rng.choice(WORDS)
                       + "".join(rng.choice(PIECES[57:65]) for _ in range(rng.randint(1, 6))) + rng.choice(WORDS))
        elif kind < 0.25:  # random code points from several blocks
            blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x4E80), (0x1F300, 0x1F6FF),
                      (0x300, 0x36F), (0x2000, 0x206F), (0xAC00, 0xAC40)]
            lo, hi = rng.choice(blocks)
            out.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 25))))
        else:  # names and prompts mixing words and pieces, with random case
            parts = [rng.choice(WORDS + PIECES) for _ in range(rng.randint(1, 8))]
            text = rng.choice(["", " ", "-", "_", ""]).join(parts)
            if rng.random() < 0.3:
                text = text.upper() if rng.random() < 0.5 else text.title()
            if rng.random() < 0.3:
                text = rng.choice(["a photo of a {}.", "a sketch of the {}", "{}", "itap of a {}."]).format(text)
            out.append(text)
    return out[:n]
